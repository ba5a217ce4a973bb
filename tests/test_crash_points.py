"""Deterministic crashes at each step of a checkpoint (sluice.core.failpoints): the flow runs in a
subprocess that dies (SIGKILL, as a crash would) exactly at one place of one checkpoint, then runs again to
the end. Every input row must be in the output exactly once.

The places, in the order a checkpoint passes them: sinks prepared (staged, durable), manifest written,
sinks committed (published). A sink that published at flush instead of staging, or a checkpoint that
committed its sinks before the manifest, leaves the killed epoch's rows visible and the resumed run writes
them again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

ROWS = 2_000
BATCH = 100  # a checkpoint after every batch (interval 0): the 20 epochs of 100 rows each
KILLED_AT = 5

SCRIPT = """
import sys
import sluice as sl
from sluice.core import failpoints

inp, out, ckpt, kind, mode, batch, armed = sys.argv[1:8]
if armed:
    failpoints.arm([armed])
sink = {"parquet": sl.ParquetSink, "jsonl": sl.JsonLinesSink}[kind](out, mode=mode)
flow = sl.Flow("crash_points")
flow.read("in", sl.JsonLinesSource(inp), schema={"id": int, "v": str}).write("out", sink)
sl.run(flow, batch_size=int(batch), checkpoint_dir=ckpt, checkpoint_interval=0)
"""

# layout → (sink kind, output path below tmp_path, mode)
LAYOUTS = {"parquet-dir": ("parquet", "out", "replace"), "jsonl-dir-append": ("jsonl", "out", "append"),
           "jsonl-file": ("jsonl", "out.jsonl", "replace")}


def _run(tmp: Path, layout: str, armed: str) -> subprocess.CompletedProcess[str]:
    kind, name, mode = LAYOUTS[layout]
    script = tmp / "job.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp / "in.jsonl"), str(tmp / name), str(tmp / "ckpt"), kind,
                           mode, str(BATCH), armed],
                          capture_output=True, text=True, timeout=120)


def _ids(out: Path, kind: str) -> list[int]:
    """The ids a reader of the output sees now, sorted."""
    if out.is_file():
        return sorted(pl.read_ndjson(out)["id"].to_list())
    files = sorted(out.rglob(f"part-*.{kind}")) if out.exists() else []
    frames = [pl.read_parquet(f) if kind == "parquet" else pl.read_ndjson(f) for f in files]
    return sorted(pl.concat(frames)["id"].to_list()) if frames else []


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("place", ["after_prepare", "after_manifest", "after_sink_commit"])
def test_killed_at_a_checkpoint_step_resumes_exactly_once(tmp_path: Path, place: str, layout: str) -> None:
    kind, name, _mode = LAYOUTS[layout]
    out = tmp_path / name
    pl.DataFrame({"id": range(ROWS), "v": [f"row-{i}" for i in range(ROWS)]}).write_ndjson(tmp_path / "in.jsonl")

    killed = _run(tmp_path, layout, f"{place}@{KILLED_AT}")
    assert killed.returncode == -9, killed.stderr  # SIGKILL, as a crash
    # what readers see at the moment of the crash: only what checkpoints had published
    published = KILLED_AT if place == "after_sink_commit" else KILLED_AT - 1
    assert _ids(out, kind) == list(range(published * BATCH)), "readers saw more or less than the committed epochs"

    resumed = _run(tmp_path, layout, "")
    assert resumed.returncode == 0, resumed.stderr
    ids = _ids(out, kind)
    counts = pl.Series(ids, dtype=pl.Int64).value_counts()
    duplicated = counts.filter(pl.col("count") > 1).height
    missing = ROWS - counts.height
    assert (len(ids), duplicated, missing) == (ROWS, 0, 0), f"{len(ids)} rows for {ROWS}: {duplicated} ids twice, {missing} missing"
    assert ids == list(range(ROWS))
    assert not [p for p in tmp_path.rglob("*stage*")], "staged files left behind"


def test_failpoints_fire_at_the_named_hit_only() -> None:
    from sluice.core import failpoints

    with pytest.raises(ValueError, match="unknown failpoint 'after_prepar'"):
        failpoints.arm(["after_prepar"])
    with pytest.raises(ValueError, match="at least 1"):
        failpoints.arm(["after_prepare@0"])
    failpoints.arm(["after_manifest@3"])
    try:
        failpoints.failpoint("after_prepare")  # not armed: nothing happens
        failpoints.failpoint("after_manifest")
        failpoints.failpoint("after_manifest")  # the 3rd hit would end this process
    finally:
        failpoints.disarm()
    failpoints.failpoint("after_manifest")
