"""Renames and plan changes between runs of one checkpoint directory: each is refused at start with an
error naming what changed and the fix, or migrated explicitly (allow_rename, drop_state); the output then
equals the oracle over all the input (raw rows: the input's ids once each; windows: a polars group-by).

(Changed parameters of a stateful step — an as-of tolerance, an interval-join bound, a watermark delay —
are refused by tests/test_state_fingerprints.py.)"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from conftest import ROOT
from sluice.checkpoint.store import IncompatibleCheckpointError
from sluice.core.errors import SinkError

WINDOW_MS = 10_000


def write_input(tmp: Path, ids: range) -> pl.DataFrame:
    """Rows with ids `ids` (a multiple of 8 of them) in a new input file, out of order within blocks of 8
    (the input grows by files: a resumed run reads the files added since)."""
    assert len(ids) % 8 == 0
    order = [ids.start + ((i - ids.start) ^ 5) for i in ids]
    # each later file starts 30 s later: the windows a finished run emitted at the end stay final (a resumed
    # run goes on from the last real watermark), so the rows added open new windows
    gap = 30_000 * (ids.start // 304)
    df = pl.DataFrame({"id": order, "ts": [i * 700 + gap for i in order], "k": [f"k{i % 3}" for i in order]})
    df.write_ndjson(tmp / f"in-{ids.start:06d}.jsonl")
    return df


def build(tmp: Path, read: str = "in", sink: str = "raw", window: str = "w", raw_path: str = "raw",
          windows_path: str = "windows.jsonl") -> sl.Flow:
    flow = sl.Flow("changes")
    rows = flow.read(read, sl.JsonLinesSource(str(tmp / "in-*.jsonl")), schema={"id": int, "ts": int, "k": str})
    rows.write(sink, sl.JsonLinesSink(tmp / raw_path, rows_per_file=50))
    counted = rows.event_time("ts", timedelta(seconds=5)).key_by("k").window(
        window, sl.Tumbling(timedelta(seconds=10)), n=sl.agg.count())
    counted.write("windows", sl.JsonLinesSink(tmp / windows_path))
    return flow


def raw_ids(directory: Path) -> list[int]:
    parts = sorted(directory.rglob("part-*.jsonl"))
    return sorted(pl.concat([pl.read_ndjson(p) for p in parts])["id"].to_list()) if parts else []


def windows(path: Path) -> pl.DataFrame:
    return pl.read_ndjson(path).select("k", "window_start", pl.col("n").cast(pl.Int64)).sort("k", "window_start")


def oracle(df: pl.DataFrame) -> pl.DataFrame:
    return (df.with_columns(window_start=pl.col("ts") // WINDOW_MS * WINDOW_MS).group_by("k", "window_start")
            .agg(n=pl.len()).select("k", "window_start", pl.col("n").cast(pl.Int64)).sort("k", "window_start"))


JOB = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_plan_changes as t
flow = t.build(Path({tmp!r}), **dict(a.split("=") for a in sys.argv[1:]))
"""


def cli(tmp: Path, *args: str, names: dict[str, str] | None = None, batch: int = 7, failpoint: str = "",
        check: bool = False) -> subprocess.CompletedProcess[str]:
    """`sluice run` of `build(tmp, **names)` with checkpoints after every batch (a failpoint armed: killed there)."""
    job = tmp / "job.py"
    job.write_text(JOB.format(tests=str(ROOT / "tests"), tmp=str(tmp)))
    env = {"PYTHONPATH": str(ROOT / "src"), "SLUICE_FAILPOINTS": failpoint}
    cmd = [sys.executable, "-m", "sluice.cli.main", "run", "-q", str(job), "--checkpoint-dir", str(tmp / "ck"),
           "--checkpoint-interval", "0", "--batch-size", str(batch), *args, "--",
           *(f"{k}={v}" for k, v in (names or {}).items())]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert not check or r.returncode == 0, r.stderr
    return r


def first_run(tmp: Path, batch: int) -> pl.DataFrame:
    """Killed (kill -9, a failpoint) mid-run over 608 rows, windows open; returns the input."""
    everything = write_input(tmp, range(608))
    killed = cli(tmp, batch=batch, failpoint="after_sink_commit@" + ("1" if batch > 608 else "20"))
    assert killed.returncode == -9, killed.stderr
    assert raw_ids(tmp / "raw")  # some epochs published
    return everything


@pytest.mark.parametrize("batch", [1, 7, 65536])
def test_renamed_sink_is_refused_then_carried_over(tmp_path: Path, batch: int) -> None:
    """Before: the renamed sink started as new and its first commit replaced the committed part files."""
    everything = first_run(tmp_path, batch)
    before = raw_ids(tmp_path / "raw")
    renamed = build(tmp_path, sink="raw_rows")
    with pytest.raises(IncompatibleCheckpointError) as err:
        sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck")
    message = str(err.value)
    assert "write step 'raw' is in checkpoint" in message and "'raw_rows'" in message, message
    assert "allow_rename={'raw': 'raw_rows'}" in message and "--allow-rename raw=raw_rows" in message, message
    assert raw_ids(tmp_path / "raw") == before  # refused before anything was touched
    sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck", allow_rename={"raw": "raw_rows"})
    assert raw_ids(tmp_path / "raw") == sorted(everything["id"].to_list())
    assert windows(tmp_path / "windows.jsonl").equals(oracle(everything))
    # the next run knows the new name: nothing to allow any more, nothing written twice
    write_input(tmp_path, range(608, 656))
    sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck")
    assert raw_ids(tmp_path / "raw") == list(range(656))


@pytest.mark.parametrize("batch", [1, 7, 65536])
def test_renamed_window_is_refused_then_carried_over(tmp_path: Path, batch: int) -> None:
    """Before: only a warning, and the windows open at the checkpoint went missing."""
    everything = first_run(tmp_path, batch)
    renamed = build(tmp_path, window="counts")
    with pytest.raises(IncompatibleCheckpointError) as err:
        sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck")
    message = str(err.value)
    assert "step 'w' (window)" in message and "'counts'" in message and "would be lost" in message, message
    assert "allow_rename={'w': 'counts'}" in message and "drop_state=['w']" in message, message
    sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck", allow_rename={"w": "counts"})
    assert windows(tmp_path / "windows.jsonl").equals(oracle(everything))
    assert raw_ids(tmp_path / "raw") == list(range(608))


@pytest.mark.parametrize("batch", [1, 7, 65536])
def test_renamed_read_is_refused_then_carried_over(tmp_path: Path, batch: int) -> None:
    """Before: the renamed read started from the beginning and every row was written twice."""
    everything = first_run(tmp_path, batch)
    renamed = build(tmp_path, read="events")
    with pytest.raises(IncompatibleCheckpointError) as err:
        sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck")
    message = str(err.value)
    assert "step 'in' (read)" in message and "'events'" in message and "from the start" in message, message
    sl.run(renamed, batch_size=batch, checkpoint_dir=tmp_path / "ck", allow_rename={"in": "events"})
    assert raw_ids(tmp_path / "raw") == list(range(608))
    assert windows(tmp_path / "windows.jsonl").equals(oracle(everything))


def test_single_file_sink_whose_path_changed_is_refused(tmp_path: Path) -> None:
    """Before: the resumed run truncated the new file to the old one's length (zero bytes filled in)."""
    first_run(tmp_path, 7)
    moved = build(tmp_path, windows_path="counts.jsonl")
    with pytest.raises(IncompatibleCheckpointError) as err:
        sl.run(moved, batch_size=7, checkpoint_dir=tmp_path / "ck")
    message = str(err.value)
    assert "write step 'windows'" in message and "windows.jsonl" in message and "counts.jsonl" in message, message
    assert "mv " in message and "drop_state=['windows']" in message, message
    assert not (tmp_path / "counts.jsonl").exists()
    # moving the file is the migration: the output then holds every window once
    (tmp_path / "windows.jsonl").rename(tmp_path / "counts.jsonl")
    with pytest.raises(IncompatibleCheckpointError):  # the checkpoint still names the old path
        sl.run(moved, batch_size=7, checkpoint_dir=tmp_path / "ck")
    # starting the sink afresh at its new path writes only the rest, with no zero bytes
    (tmp_path / "counts.jsonl").unlink()
    sl.run(moved, batch_size=7, checkpoint_dir=tmp_path / "ck", drop_state=("windows",))
    data = (tmp_path / "counts.jsonl").read_bytes()
    assert b"\x00" not in data and data


def test_allow_rename_names_must_exist(tmp_path: Path) -> None:
    first_run(tmp_path, 65536)
    with pytest.raises(IncompatibleCheckpointError, match="the flow has no step 'nope'"):
        sl.run(build(tmp_path), checkpoint_dir=tmp_path / "ck", allow_rename={"w": "nope"})
    with pytest.raises(IncompatibleCheckpointError, match="still has a step 'w'"):
        sl.run(build(tmp_path), checkpoint_dir=tmp_path / "ck", allow_rename={"w": "raw"})
    with pytest.raises(IncompatibleCheckpointError, match="the checkpoint has no step 'ghost'"):
        sl.run(build(tmp_path, window="counts"), checkpoint_dir=tmp_path / "ck", allow_rename={"ghost": "counts"})


def test_cli_allow_rename(tmp_path: Path) -> None:
    everything = first_run(tmp_path, 7)
    refused = cli(tmp_path, names={"window": "counts"})
    assert refused.returncode != 0 and "--allow-rename w=counts" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    cli(tmp_path, "--allow-rename", "w=counts", names={"window": "counts"}, check=True)
    assert windows(tmp_path / "windows.jsonl").equals(oracle(everything))
    bad = cli(tmp_path, "--allow-rename", "w", names={"window": "counts"})
    assert bad.returncode != 0 and "OLD=NEW" in bad.stderr


# --- sink and file-system failures (issue 13, item 6) --------------------------------------------------
class Exploding:
    """A user's sink whose writer raises at `where` (write, prepare or commit)."""

    def __init__(self, where: str, path: Path | None = None) -> None:
        self.where, self.path = where, path

    def open(self, ctx: object) -> Exploding:
        return self

    def write(self, df: pl.DataFrame) -> None:
        if self.where == "write":
            raise ValueError("the remote service said no")

    def prepare(self, epoch: int) -> dict:
        if self.where == "prepare":
            raise RuntimeError("disk quota in the service")
        return {"epoch": epoch}

    def commit(self, txn: dict) -> None:
        if self.where == "commit":
            raise ConnectionError("connection reset")
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(f"{txn['epoch']}\n")

    def abort(self, txn: dict) -> None:
        pass

    def recover(self, txn: dict | None) -> None:
        if txn:
            self.commit(txn)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("where", ["write", "prepare", "commit"])
def test_a_user_sink_that_raises_is_an_error_naming_the_step(tmp_path: Path, where: str) -> None:
    write_input(tmp_path, range(48))
    flow = sl.Flow("f")
    flow.read("in", sl.JsonLinesSource(str(tmp_path / "in-*.jsonl")), schema={"id": int, "ts": int, "k": str}).write(
        "to_service", Exploding(where))  # type: ignore[arg-type]
    with pytest.raises(SinkError) as err:
        sl.run(flow, checkpoint_dir=tmp_path / "ck", sink_commit_backoff=0.01)
    message = str(err.value)
    assert message.startswith("write step 'to_service' (Exploding): "), message
    said = {"write": "ValueError: the remote service said no", "prepare": "RuntimeError: disk quota",
            "commit": "ConnectionError: connection reset"}[where]
    assert said in message, message


def test_read_only_output_directory_is_an_error_naming_the_step_and_path(tmp_path: Path) -> None:
    """`sluice run` into a read-only directory: one line naming the step, the path and the fix, no traceback.
    As root (who may write anywhere) the directory is a read-only mount in a private mount namespace."""
    write_input(tmp_path, range(48))
    out = tmp_path / "locked"
    out.mkdir()
    job = tmp_path / "job.py"
    job.write_text("import sluice as sl\nflow = sl.Flow('f')\n"
                   f"flow.read('in', sl.JsonLinesSource({str(tmp_path / 'in-*.jsonl')!r}), schema={{'id': int}})"
                   f".write('parts', sl.JsonLinesSink({str(out / 'sub')!r}))\n")
    cmd = [sys.executable, "-m", "sluice.cli.main", "run", "-q", str(job), "--checkpoint-dir", str(tmp_path / "ck")]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    if os.geteuid() == 0:
        script = f"mount -t tmpfs -o ro tmpfs {shlex.quote(str(out))} && exec {shlex.join(cmd)}"
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], env=env, capture_output=True, text=True)
        said = "Read-only file system"
    else:
        out.chmod(0o500)
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        finally:
            out.chmod(0o700)
        said = "Permission denied"
    assert r.returncode != 0
    assert "write step 'parts'" in r.stderr and str(out / "sub") in r.stderr and said in r.stderr, r.stderr
    assert "make" in r.stderr and "writable" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_failed_commit_leaves_sinks_apart_until_the_rerun_brings_them_level(tmp_path: Path) -> None:
    """One sink publishes an epoch, the next one's commit fails (on every attempt): the epoch is recorded, so
    the rerun commits it to the second sink too and both hold every row once. (A commit that fails for a
    while only: tests/test_sink_commit_retry.py.)"""
    write_input(tmp_path, range(200))
    ledger = tmp_path / "ledger.txt"

    def flow(where: str) -> sl.Flow:
        f = sl.Flow("f")
        rows = f.read("in", sl.JsonLinesSource(str(tmp_path / "in-*.jsonl")), schema={"id": int, "ts": int, "k": str})
        rows.write("raw", sl.JsonLinesSink(tmp_path / "raw"))
        rows.write("service", Exploding(where, ledger))  # type: ignore[arg-type]
        return f

    with pytest.raises(SinkError) as err:
        sl.run(flow("commit"), batch_size=48, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0,
               sink_commit_backoff=0.01)
    message = str(err.value)
    assert "write step 'service'" in message and "'raw' published this epoch already" in message, message
    assert "brings the sinks level" in message
    assert raw_ids(tmp_path / "raw") == list(range(48))  # the first sink has epoch 1
    assert not ledger.exists()  # the second has nothing
    sl.run(flow(""), batch_size=48, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    assert raw_ids(tmp_path / "raw") == list(range(200))
    epochs = [int(x) for x in ledger.read_text().split()]
    assert epochs[0] == 1 and epochs == sorted(set(epochs))  # epoch 1 published there too, each epoch once
