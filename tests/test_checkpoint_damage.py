"""A damaged newest checkpoint: recovery falls back to the newest whole one, says so, and restores every
sink to exactly that checkpoint — file sinks are cut back (part files deleted, a single file truncated), so
the rerun's output equals the oracle with nothing lost and nothing written twice.

Each kind of damage the issue lists, after a completed run and after a kill -9 (a failpoint) mid-run; the
oracle is the input itself (raw rows) and a brute-force count of the windows (polars group-by)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from sluice.checkpoint.store import CheckpointStore

ROWS = 400
WINDOW_MS = 10_000

SCRIPT = """
import sys
from datetime import timedelta
import sluice as sl
from sluice.core import failpoints

inp, tmp, ckpt, batch, armed = sys.argv[1:6]
if armed:
    failpoints.arm([armed])
flow = sl.Flow("damage")
rows = flow.read("in", sl.JsonLinesSource(inp), schema={"id": int, "ts": int, "k": str})
rows.write("file", sl.JsonLinesSink(tmp + "/raw.jsonl"))
rows.write("parts", sl.JsonLinesSink(tmp + "/parts", rows_per_file=13))
rows.write("csv", sl.CsvSink(tmp + "/raw.csv"))
counted = rows.event_time("ts", timedelta(seconds=5)).key_by("k").window("w", sl.Tumbling(timedelta(seconds=10)),
                                                                  n=sl.agg.count())
counted.write("windows", sl.ParquetSink(tmp + "/windows", rows_per_file=5))
sl.run(flow, batch_size=int(batch), checkpoint_dir=ckpt, checkpoint_interval=0)
"""


def _run(tmp: Path, batch: int, armed: str = "") -> subprocess.CompletedProcess[str]:
    script = tmp / "job.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp / "in.jsonl"), str(tmp), str(tmp / "ck"), str(batch),
                           armed], capture_output=True, text=True, timeout=300)


def _input(tmp: Path) -> pl.DataFrame:
    # out of order (ids shuffled in blocks of 8: at most 4.9 s apart, under the 5 s watermark delay)
    order = [i ^ 5 for i in range(ROWS)]
    df = pl.DataFrame({"id": order, "ts": [i * 700 for i in order], "k": [f"k{i % 3}" for i in order]})
    df.write_ndjson(tmp / "in.jsonl")
    return df


def _oracle_windows(df: pl.DataFrame) -> pl.DataFrame:
    return (df.with_columns(window_start=pl.col("ts") // WINDOW_MS * WINDOW_MS)
            .group_by("k", "window_start").agg(n=pl.len())
            .select("k", "window_start", pl.col("n").cast(pl.Int64)).sort("k", "window_start"))


def _check_exact(tmp: Path, df: pl.DataFrame) -> None:
    """Every sink holds each input row (each window) exactly once."""
    want = sorted(df["id"].to_list())
    got = {
        "file": pl.read_ndjson(tmp / "raw.jsonl")["id"].to_list(),
        "csv": pl.read_csv(tmp / "raw.csv")["id"].to_list(),
        "parts": pl.concat([pl.read_ndjson(p) for p in sorted((tmp / "parts").glob("part-*.jsonl"))])["id"].to_list(),
    }
    for sink, ids in got.items():
        counts = pl.Series(ids, dtype=pl.Int64).value_counts()
        duplicated = counts.filter(pl.col("count") > 1).height
        lost = len(set(want) - set(ids))
        assert (duplicated, lost, len(ids)) == (0, 0, ROWS), f"{sink}: {duplicated} ids twice, {lost} lost, {len(ids)} rows"
        assert sorted(ids) == want
    windows = pl.concat([pl.read_parquet(p) for p in sorted((tmp / "windows").glob("part-*.parquet"))])
    got_w = windows.select("k", "window_start", pl.col("n").cast(pl.Int64)).sort("k", "window_start")
    assert got_w.equals(_oracle_windows(df)), f"windows differ from the oracle:\n{got_w}\n{_oracle_windows(df)}"


def _first_int_path(obj: object) -> list[object] | None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, int) and not isinstance(v, bool):
                return [k]
            sub = _first_int_path(v)
            if sub is not None:
                return [k, *sub]
    return None


def damage(ck: Path, how: str, newest: int | None = None) -> tuple[int, str]:
    """Damage the newest checkpoint (or checkpoint `newest`); returns its id and what the warning must say."""
    newest = CheckpointStore(ck).ids()[-1] if newest is None else newest
    path = ck / f"chk-{newest:06d}"
    manifest = path / "manifest.json"
    frame = next(iter(sorted(path.glob("*.arrow"))))
    if how == "manifest_truncated":
        data = manifest.read_bytes()
        manifest.write_bytes(data[: len(data) // 2])
        said = "unreadable manifest"
    elif how == "manifest_overwritten":
        manifest.write_bytes(b"\x00garbage" * 10)
        said = "unreadable manifest"
    elif how == "manifest_deleted":
        manifest.unlink()
        said = "has no manifest"
    elif how == "frame_flipped":
        data = bytearray(frame.read_bytes())
        data[len(data) // 2] ^= 0xFF
        frame.write_bytes(bytes(data))
        said = "fails its checksum"
    elif how == "frame_truncated":
        frame.write_bytes(frame.read_bytes()[:20])
        said = "fails its checksum"
    elif how == "frame_deleted":
        frame.unlink()
        said = "is missing"
    elif how == "dir_deleted":
        shutil.rmtree(path)
        said = "is missing (its directory was deleted)"
    elif how == "position_edited":  # valid JSON, the read step's position moved back to the start
        data = json.loads(manifest.read_text())
        position = data["steps"]["in"]["scalars"]["position"]
        data["steps"]["in"]["scalars"]["position"] = {k: 0 for k in position}
        manifest.write_text(json.dumps(data))
        said = "manifest fails its checksum"
    else:
        raise AssertionError(how)
    return newest, said


KINDS = ["manifest_truncated", "manifest_overwritten", "manifest_deleted", "frame_flipped", "frame_truncated",
         "frame_deleted", "dir_deleted", "position_edited"]


@pytest.mark.parametrize("how", KINDS)
def test_damaged_newest_checkpoint_after_a_kill_restores_every_sink(tmp_path: Path, how: str) -> None:
    df = _input(tmp_path)
    killed = _run(tmp_path, 7, "after_sink_commit@20")  # kill -9 once epoch 20 is published everywhere
    assert killed.returncode == -9, killed.stderr
    newest, said = damage(tmp_path / "ck", how)
    resumed = _run(tmp_path, 7)
    assert resumed.returncode == 0, resumed.stderr
    _check_exact(tmp_path, df)
    assert said in resumed.stderr and f"checkpoint {newest}" in resumed.stderr, resumed.stderr
    assert f"recovering from checkpoint {newest - 1}" in resumed.stderr, resumed.stderr
    assert (tmp_path / "ck" / f"damaged-chk-{newest:06d}").exists() or how == "dir_deleted"


@pytest.mark.parametrize("batch", [1, 7, 65536])
@pytest.mark.parametrize("how", ["frame_flipped", "manifest_deleted", "position_edited"])
def test_damaged_newest_checkpoint_after_a_completed_run(tmp_path: Path, how: str, batch: int) -> None:
    df = _input(tmp_path)
    assert _run(tmp_path, batch).returncode == 0
    _check_exact(tmp_path, df)
    # the last two: the final checkpoint's epoch may have published nothing (the end of the input)
    ids = CheckpointStore(tmp_path / "ck").ids()
    newest, said = damage(tmp_path / "ck", how, ids[-1])
    damage(tmp_path / "ck", how, ids[-2])
    resumed = _run(tmp_path, batch)
    assert resumed.returncode == 0, resumed.stderr
    _check_exact(tmp_path, df)
    assert said in resumed.stderr and f"checkpoint {newest}" in resumed.stderr, resumed.stderr
    assert f"recovering from checkpoint {ids[-3]}" in resumed.stderr, resumed.stderr
    again = _run(tmp_path, batch)  # the damage was reported once; the next run is quiet and changes nothing
    assert again.returncode == 0 and "damaged" not in again.stderr and "recovering from" not in again.stderr, again.stderr
    _check_exact(tmp_path, df)


def test_every_manifest_field_is_checksummed(tmp_path: Path) -> None:
    _input(tmp_path)
    assert _run(tmp_path, 50).returncode == 0
    store = CheckpointStore(tmp_path / "ck")
    newest = store.ids()[-1]
    manifest = tmp_path / "ck" / f"chk-{newest:06d}" / "manifest.json"
    original = json.loads(manifest.read_text())
    for top in ("flow", "steps", "sinks", "plan"):
        data = json.loads(json.dumps(original))
        if top == "flow":
            data["flow"] = "other"
        elif top == "steps":
            path = _first_int_path(data["steps"]["w"]["scalars"]) or []
            target = data["steps"]["w"]["scalars"]
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] += 1
        elif top == "sinks":
            data["sinks"]["file"]["length"] += 1
        else:
            data["plan"]["w"]["fingerprint"]["window"] = "edited"
        manifest.write_text(json.dumps(data))
        assert store.latest().id == newest - 1, top  # type: ignore[union-attr]
    manifest.write_text(json.dumps(original))
    assert store.latest().id == newest  # type: ignore[union-attr]
