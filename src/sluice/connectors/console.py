"""Print rows to the terminal, as JSON lines (default) or tables."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

import polars as pl

from sluice.connectors.api import SinkContext, UntransactedWriter
from sluice.core.batch import user_columns


@dataclass(frozen=True)
class ConsoleSink:
    style: str = "json"  # "json" | "table"
    max_rows: int | None = None  # stop printing after this many rows (they still count as written)

    def open(self, ctx: SinkContext) -> _ConsoleWriter:
        return _ConsoleWriter(self, ctx.step, sys.stdout)


class _ConsoleWriter(UntransactedWriter):  # printing cannot be taken back: at-least-once
    def __init__(self, spec: ConsoleSink, step: str, out: TextIO) -> None:
        self.spec = spec
        self.step = step
        self.out = out
        self.printed = 0

    def write(self, df: pl.DataFrame) -> None:
        df = user_columns(df)
        if df.height == 0:
            return
        if self.spec.max_rows is not None:
            df = df.head(max(self.spec.max_rows - self.printed, 0))
        if df.height == 0:
            return
        self.printed += df.height
        if self.spec.style == "table":
            with pl.Config(tbl_rows=df.height, tbl_cols=-1):
                print(df, file=self.out)
        else:
            self.out.write(df.write_ndjson())
        self.out.flush()

