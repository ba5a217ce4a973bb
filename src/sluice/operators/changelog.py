"""The `changelog` step: gives each row its kind (`_op`: +I, -U, +U, -D) and checks it."""

from __future__ import annotations

import numpy as np
import polars as pl

from sluice.core.batch import Batch
from sluice.core.changelog import KINDS, OP
from sluice.core.errors import StepError
from sluice.core.plan import ToChangelog
from sluice.operators.base import Emitted, Operator


class ChangelogOperator(Operator):
    def __init__(self, step: ToChangelog) -> None:
        self.name = step.name
        self.op = step.op
        self.keys = step.keys

    def on_batch(self, index: int, batch: Batch) -> Emitted:
        if batch.height == 0:
            return [("out", batch)]
        try:
            df = batch.df.with_columns(self.op.cast(pl.String).alias(OP))
        except pl.exceptions.PolarsError as exc:
            raise StepError(self.name, f"a batch starting at {batch.position_of(0)}", f"the op expression failed: {exc}",
                            "give op= an expression of the stream's columns that yields +I, -U, +U or -D "
                            "(sl.changelog.from_debezium(pl.col('op')) for Debezium's c/r/u/d)") from exc
        bad = ~df[OP].is_in(KINDS).fill_null(False)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise StepError(self.name, batch.position_of(i), f"the row's kind is {df[OP][i]!r}, not one of {', '.join(KINDS)}",
                            "map the source's operation codes to +I / -U / +U / -D in op= (a Debezium truncate "
                            "'t' is not a row: filter it out first)")
        missing = [k for k in self.keys if k not in df.columns]
        if missing:
            raise StepError(self.name, batch.position_of(0), f"the key column(s) {missing} are not in the stream",
                            f"key= names columns of the stream; it has {[c for c in df.columns if not c.startswith('__sl_')]}")
        return [("out", batch.with_df(df))]
