"""Reading what a run has committed to an embedded-log topic, for tests that watch a running process."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import polars as pl

from sluice.connectors.log import Log


def committed_values(root: Path, topic: str = "out", field: str = "v") -> list[int]:
    """What a reader of partition 0 of `topic` sees: only records the run has committed, sorted."""
    if not (root / topic / "topic.json").exists():
        return []
    part = Log(root).partition(topic, 0)
    try:
        values = [b.value(i) for b, s in part.read(0) for i in range(s, b.count)]
    finally:
        part.close()
    return sorted(pl.read_ndjson(b"\n".join(values))[field].to_list()) if values else []


def wait_for(root: Path, expected: list[int], run: subprocess.Popen[bytes], timeout_s: float = 90) -> list[int]:
    """Polls until the committed values equal `expected`, the run exits or `timeout_s` passes (generous: it
    only bounds a broken run); returns what was committed last."""
    deadline = time.monotonic() + timeout_s
    got = committed_values(root)
    while got != expected and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.1)
        got = committed_values(root)
    return got
