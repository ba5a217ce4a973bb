"""Checkpoints: a damaged newest one falls back to the one before; plan changes are checked by step name."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from conftest import ROOT
from sluice import testing
from sluice.checkpoint.store import CheckpointStore, IncompatibleCheckpointError
from sluice.core.plan import Ref

ROWS = pl.DataFrame({"ts": [i * 1000 for i in range(300)], "k": [f"k{i % 4}" for i in range(300)], "v": [float(i) for i in range(300)]})


def build(tmp: Path, agg: str = "count", **emission: object) -> tuple[sl.Flow, Path]:
    out = tmp / "out.jsonl"
    flow = sl.Flow("f")
    timed = flow.read("in", testing.rows(ROWS)).event_time("ts", timedelta(0)).key_by("k")
    aggregate = sl.agg.count() if agg == "count" else sl.agg.sum("v")
    timed.window("w", sl.Tumbling(timedelta(seconds=30)), n=aggregate, **emission).write("out", sl.JsonLinesSink(out))  # type: ignore[arg-type]
    return flow, out


def test_checkpoints_are_kept_and_inspectable(tmp_path: Path) -> None:
    flow, _ = build(tmp_path)
    sl.run(flow, batch_size=10, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, keep_checkpoints=2)
    store = CheckpointStore(tmp_path / "ck")
    assert len(store.ids()) == 2
    env = {"PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-m", "sluice.cli.main", "checkpoints", "inspect", "--dir", str(tmp_path / "ck")],
                       capture_output=True, text=True, env=env, check=True)
    assert "in [read]: position=" in r.stdout and "w [window]" in r.stdout


def test_damaged_newest_checkpoint_falls_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flow, _out = build(tmp_path)
    sl.run(flow, batch_size=10, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    store = CheckpointStore(tmp_path / "ck")
    newest = store.ids()[-1]
    frame = next((tmp_path / "ck" / f"chk-{newest:06d}").glob("*.arrow"))
    frame.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        assert store.latest().id == newest - 1  # type: ignore[union-attr]
    assert "fails its checksum" in caplog.text and f"recovering from checkpoint {newest - 1}, the newest whole one" in caplog.text


def test_changed_window_is_refused_unless_its_state_is_dropped(tmp_path: Path) -> None:
    flow, _ = build(tmp_path)
    sl.run(flow, batch_size=10, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    changed, _out = build(tmp_path, agg="sum")
    with pytest.raises(IncompatibleCheckpointError, match="step 'w' changed"):
        sl.run(changed, checkpoint_dir=tmp_path / "ck")
    sl.run(changed, checkpoint_dir=tmp_path / "ck", drop_state=("w",))


@pytest.mark.parametrize(("before", "after", "change"), [
    ({}, {"emit": sl.Emit.each_batch()}, "emit.mode: was absent, now each_batch"),
    ({}, {"allowed_lateness": timedelta(seconds=5)}, "allowed_lateness: was absent, now 5000 ms"),
    ({"emit": sl.Emit.every(timedelta(seconds=1))}, {"emit": sl.Emit.every(timedelta(seconds=2))},
     "emit.interval: was 1000 ms, now 2000 ms"),
])
def test_changed_emission_is_refused(tmp_path: Path, before: dict, after: dict, change: str) -> None:
    """What a window emitted already (+I or +U next) and how long it keeps panes are its state too."""
    flow, _ = build(tmp_path, **before)
    sl.run(flow, batch_size=10, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    changed, _out = build(tmp_path, **after)
    with pytest.raises(IncompatibleCheckpointError, match="step 'w' changed") as err:
        sl.run(changed, checkpoint_dir=tmp_path / "ck")
    assert change in str(err.value)
    sl.run(build(tmp_path, **before)[0], checkpoint_dir=tmp_path / "ck")  # unchanged: resumes


def test_added_steps_start_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flow, _ = build(tmp_path)
    sl.run(flow, batch_size=10, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    grown, _ = build(tmp_path)
    src = sl.Stream(grown, Ref("key_by_1"), (pl.col("k"),))  # beside the old window, a new one
    sink = sl.CollectSink()
    src.window("w2", sl.Tumbling(timedelta(seconds=60)), n=sl.agg.count()).write("out2", sink)
    sl.run(grown, checkpoint_dir=tmp_path / "ck")
    assert sink.frame().height == 0  # w2 started empty, and the input was already consumed


def test_removed_steps_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    flow, _ = build(tmp_path)
    sl.run(flow, batch_size=10, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0)
    smaller = sl.Flow("f")
    smaller.read("in", testing.rows(ROWS)).write("out", sl.CollectSink())
    with caplog.at_level(logging.WARNING):
        sl.run(smaller, checkpoint_dir=tmp_path / "ck")
    assert "no longer in the flow" in caplog.text and "w" in caplog.text


def test_state_blob_round_trip_with_many_steps_and_frames() -> None:
    """The Kafka runtime keeps state as one blob; frames of several steps come back to their own keys
    (a frame read with another's offsets was a real bug: the header is written with sorted keys)."""
    import polars as pl

    from sluice.checkpoint.store import pack_state, unpack_state

    steps = {
        "z_last": ("window", "fz", {"panes": pl.DataFrame({"a": [1, 2, 3]}), "n": 3}),
        "a_first": ("window", "fa", {"panes": pl.DataFrame({"b": ["x"]}), "late": pl.DataFrame({"c": [1.5, 2.5]})}),
        "m_mid": ("event_time", "fm", {"current": 7}),
    }
    meta, entries, load = unpack_state(pack_state(steps, {"sid": 4}))
    assert meta == {"sid": 4} and set(entries) == set(steps)
    for name, (_, fp, state) in steps.items():
        assert entries[name]["fingerprint"] == fp
        got = load(name)
        for key, value in state.items():
            assert got[key].equals(value) if isinstance(value, pl.DataFrame) else got[key] == value
