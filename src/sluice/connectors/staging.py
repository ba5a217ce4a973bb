"""Staging an epoch's rows until the epoch commit publishes them (docs/design/commit.md).

A staged epoch is one Arrow IPC file, written under a hidden name, fsynced and renamed, so a file that
exists is whole. Its name carries the writer's lineage and the epoch, which is all recovery needs to tell
the recorded epoch's file from later ones.

A *lineage* names one life of a writer's epoch numbering: a fresh start (no recorded transaction to
recover) begins a new lineage, a restart that recovers a recorded transaction continues its lineage.
Sinks that keep a marker in the target (Redis: the epoch key; Delta: the application transaction) key
it by `txn_prefix` and lineage, so a new job that numbers its epochs from 1 again is not mistaken for a
replay of an old one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import polars as pl


def new_lineage() -> str:
    return uuid.uuid4().hex[:12]


def lineage_of(txn: dict[str, Any] | None) -> str:
    """The lineage a recovering writer continues: the recorded transaction's, or a new one."""
    return str(txn["lineage"]) if txn and txn.get("lineage") else new_lineage()


class StagedFiles:
    """Epochs staged as Arrow files in `directory`, named `<prefix>-<lineage>-<epoch>-<writer>.arrow`: the
    writer's own random id keeps a zombie and the task's new owner, which may stage the same epoch of the
    same lineage at the same time, from overwriting each other's rows."""

    def __init__(self, directory: str | Path, prefix: str) -> None:
        self.dir = Path(directory)
        self.prefix = prefix
        self.writer = uuid.uuid4().hex[:8]

    def path(self, lineage: str, epoch: int) -> Path:
        return self.dir / f"{self.prefix}-{lineage}-{epoch:010d}-{self.writer}.arrow"

    def put(self, lineage: str, epoch: int, df: pl.DataFrame) -> str:
        """Write the epoch durably; returns its path (what the transaction records)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.path(lineage, epoch)
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        df.write_ipc(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a crash
        finally:
            os.close(fd)
        return str(final)

    @staticmethod
    def get(ref: str) -> pl.DataFrame | None:
        """The staged rows, or None when the file is gone (its epoch was committed and cleaned up)."""
        try:
            return pl.read_ipc(ref)
        except FileNotFoundError:
            return None

    @staticmethod
    def drop(ref: str | None) -> None:
        if ref:
            Path(ref).unlink(missing_ok=True)

    def drop_all(self) -> None:
        """Every epoch this writer staged (recovery: nothing staged after the recorded epoch was recorded)."""
        if self.dir.is_dir():
            for stray in self.dir.glob(f"{self.prefix}-*.arrow"):
                stray.unlink(missing_ok=True)
            for stray in self.dir.glob(f".{self.prefix}-*.tmp"):
                stray.unlink(missing_ok=True)
