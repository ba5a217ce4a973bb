"""Database sinks after a fall-back to an older checkpoint: a sink whose commit marker says it applied an
epoch newer than the chosen checkpoint cannot take that epoch back, so the run refuses to start — naming
the sink, the epochs and the fix — instead of writing those epochs a second time (issue 13, item 2).

Before the change the replayed epochs were skipped by their numbers: right only when the replay cuts its
epochs exactly where the lost run did (as here, a checkpoint per batch); with timed checkpoints the replayed
epoch N holds other rows than the applied epoch N, so rows were lost or written twice, without a word."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from sluice.checkpoint.store import CheckpointStore
from sluice.core.errors import SinkAheadError

ROWS = 96


def _flow(tmp: Path, sink: object) -> sl.Flow:
    pl.DataFrame({"id": range(ROWS), "v": [f"r{i}" for i in range(ROWS)]}).write_ndjson(tmp / "in.jsonl")
    flow = sl.Flow("ahead")
    flow.read("in", sl.JsonLinesSource(tmp / "in.jsonl"), schema={"id": int, "v": str}).write("db", sink)  # type: ignore[arg-type]
    return flow


def _lose_newest_checkpoints(ck: Path, n: int) -> int:
    """Delete the newest `n` checkpoint directories (the last epochs had rows); returns the id left newest."""
    ids = CheckpointStore(ck).ids()
    for cid in ids[-n:]:
        shutil.rmtree(ck / f"chk-{cid:06d}")
    return ids[-n - 1]


def _refused(flow: sl.Flow, ck: Path, left: int) -> str:
    with pytest.raises(SinkAheadError) as err:
        sl.run(flow, batch_size=12, checkpoint_dir=ck, checkpoint_interval=0.0, keep_checkpoints=5)
    message = str(err.value)
    assert message.startswith("write step 'db': "), message
    assert f"recorded epoch {left}" in message and "has already applied epoch" in message, message
    assert "new checkpoint directory" in message and "restore the newer checkpoint" in message, message
    return message


def test_delta_sink_ahead_of_the_checkpoint_refuses(tmp_path: Path) -> None:
    flow = _flow(tmp_path, sl.DeltaSink(tmp_path / "table"))
    sl.run(flow, batch_size=12, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, keep_checkpoints=5)
    assert sorted(pl.read_delta(str(tmp_path / "table"))["id"].to_list()) == list(range(ROWS))
    left = _lose_newest_checkpoints(tmp_path / "ck", 3)
    message = _refused(flow, tmp_path / "ck", left)
    assert "the Delta table" in message
    assert sorted(pl.read_delta(str(tmp_path / "table"))["id"].to_list()) == list(range(ROWS))  # nothing twice


def test_postgres_sink_ahead_of_the_checkpoint_refuses(tmp_path: Path, postgres_dsn: str) -> None:
    table = f"ahead_{uuid.uuid4().hex[:8]}"
    flow = _flow(tmp_path, sl.PostgresSink(table, postgres_dsn, create=True))
    sl.run(flow, batch_size=12, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, keep_checkpoints=5)
    left = _lose_newest_checkpoints(tmp_path / "ck", 3)
    message = _refused(flow, tmp_path / "ck", left)
    assert table in message
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        ids = [r[0] for r in conn.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]
    assert ids == list(range(ROWS))  # nothing twice


def test_redis_sink_ahead_of_the_checkpoint_refuses(tmp_path: Path, redis_url: str) -> None:
    tag = uuid.uuid4().hex[:8]
    flow = _flow(tmp_path, sl.RedisSink(redis_url, key=tag + ":{id}", value=["v"]))
    sl.run(flow, batch_size=12, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, keep_checkpoints=5)
    left = _lose_newest_checkpoints(tmp_path / "ck", 3)
    message = _refused(flow, tmp_path / "ck", left)
    assert "Redis (key sluice:epoch:" in message


def test_a_sink_exactly_at_the_chosen_checkpoint_resumes(tmp_path: Path) -> None:
    """The rule bites only when the marker is ahead: losing only the final checkpoints (their epochs, at the
    end of the input, wrote nothing) leaves the marker equal to the checkpoint used, and the run goes on."""
    flow = _flow(tmp_path, sl.DeltaSink(tmp_path / "table"))
    sl.run(flow, batch_size=12, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0, keep_checkpoints=5)
    from deltalake import DeltaTable

    versions = DeltaTable(str(tmp_path / "table")).history()
    applied = max(int(v["sluice.epoch"]) for v in versions if "sluice.epoch" in v)
    ids = CheckpointStore(tmp_path / "ck").ids()
    assert applied < ids[-1]  # the final epochs wrote nothing
    left = _lose_newest_checkpoints(tmp_path / "ck", len([i for i in ids if i > applied]))
    assert left == applied
    table = sl.DeltaSink(tmp_path / "table")
    sl.run(_flow(tmp_path, table), batch_size=12, checkpoint_dir=tmp_path / "ck", checkpoint_interval=0.0,
           keep_checkpoints=5)
    assert sorted(pl.read_delta(str(tmp_path / "table"))["id"].to_list()) == list(range(ROWS))
