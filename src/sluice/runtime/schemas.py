"""The columns of a stream, when the plan alone says them (so they do not depend on the data or batch size).

Known: a read with a declared schema (or a source that knows its rows), the dead-letter streams, and what
follows from them through filter / key_by / event_time / branch / union (unchanged), select / with_columns
(computed by Polars on an empty frame), and map / process with a declared schema. Anything else: None.
"""

from __future__ import annotations

import polars as pl

from sluice.core.deadletter import DEAD_LETTER_SCHEMA
from sluice.core.plan import (
    Branch,
    EventTime,
    Filter,
    KeyBy,
    Map,
    Plan,
    Process,
    Read,
    Ref,
    Select,
    Union,
    WithColumns,
)


def stream_schema(plan: Plan, ref: Ref) -> pl.Schema | None:
    step = plan.step(ref.step)
    if ref.port == "dead_letters":
        return DEAD_LETTER_SCHEMA
    if isinstance(step, Read):
        if step.schema is not None:
            return step.schema.polars
        hint = getattr(step.source, "output_schema", None)
        return hint() if callable(hint) else None
    if isinstance(step, Filter | KeyBy | EventTime | Branch | Union):
        return stream_schema(plan, step.inputs[0])
    if isinstance(step, Select | WithColumns):
        before = stream_schema(plan, step.inputs[0])
        if before is None:
            return None
        empty = pl.LazyFrame(schema=before)
        try:
            after = empty.with_columns(*step.exprs) if isinstance(step, WithColumns) else empty.select(*step.exprs)
            return after.collect_schema()
        except pl.exceptions.PolarsError:
            return None  # the step fails on its first record, with the step's own error
    if isinstance(step, Map | Process) and ref.port == "out" and step.schema is not None:
        return step.schema.polars
    return None
