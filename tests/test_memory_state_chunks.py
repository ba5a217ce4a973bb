"""The memory backend's state in a checkpoint, written and read in chunks of `_CHUNK` entries (never the
whole dump in memory): a round trip of many chunks equals the state it was taken from; a checkpoint written
before chunks (one frame, read whole) still resumes; a crash in the middle of a chunked write leaves the
previous checkpoint in use."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import sluice as sl
from sluice import testing
from sluice.checkpoint.store import CheckpointStore
from sluice.operators.base import key_bytes
from sluice.state import backends
from sluice.state.backends import MemoryBackend, RocksDBBackend

FIXTURE = Path(__file__).parent / "fixtures" / "memory-state-v1"
TTL_MS = 40


class Tally(sl.KeyedProcessFunction):
    """Per key: a count, a float sum, the last three tags, a count per tag, the first time seen, and the
    last value within TTL_MS of event time (state of several names, value types and write times)."""

    def open(self, ctx: Any) -> None:
        self.n, self.total = ctx.value_state("n"), ctx.value_state("total")
        self.last, self.tags = ctx.list_state("last"), ctx.map_state("tags")
        self.first = ctx.value_state("first")
        self.recent = ctx.value_state("recent", ttl=dt.timedelta(milliseconds=TTL_MS))

    def process(self, record: dict[str, Any], ctx: Any) -> Any:
        n = (self.n.value() or 0) + 1
        self.n.update(n)
        self.total.update((self.total.value() or 0.0) + record["v"] / 4)
        self.last.update([*self.last.get(), record["tag"]][-3:])
        self.tags.put(record["tag"], (self.tags.get(record["tag"]) or 0) + 1)
        if self.first.value() is None:
            self.first.update(dt.datetime(2026, 1, 1) + dt.timedelta(milliseconds=ctx.timestamp))
        before = self.recent.value()
        self.recent.update((record["id"], record["tag"]))
        yield {"id": record["id"], "n": n, "total": self.total.value(), "last": ",".join(self.last.get()),
               "tags": len(self.tags.items()), "first": self.first.value(), "recent": -1 if before is None else before[0]}


OUT_SCHEMA = {"id": int, "n": int, "total": float, "last": str, "tags": int, "first": pl.Datetime("us"), "recent": int}


def rows(start: int, stop: int, keys: int) -> pl.DataFrame:
    """Records start..stop-1: key, tag and value from the id; event time increasing, with disorder."""
    ids = range(start, stop)
    return pl.DataFrame({"id": list(ids), "k": [(i * 7919) % keys for i in ids], "tag": [f"t{i % 5}" for i in ids],
                         "v": [i % 13 for i in ids], "t": [i * 3 - (i % 4) * 5 for i in ids]})


def oracle(frame: pl.DataFrame) -> list[dict[str, Any]]:
    """Tally by hand: records in event-time order (ties in arrival order), a dict per key."""
    state: dict[int, dict[str, Any]] = {}
    out = []
    for r in sorted(frame.to_dicts(), key=lambda r: (r["t"], r["id"])):
        s = state.setdefault(r["k"], {"n": 0, "total": 0.0, "last": [], "tags": {}, "first": None, "recent": None})
        s["n"] += 1
        s["total"] += r["v"] / 4
        s["last"] = [*s["last"], r["tag"]][-3:]
        s["tags"][r["tag"]] = s["tags"].get(r["tag"], 0) + 1
        if s["first"] is None:
            s["first"] = dt.datetime(2026, 1, 1) + dt.timedelta(milliseconds=r["t"])
        before = s["recent"]
        live = before is not None and r["t"] - before[1] <= TTL_MS
        s["recent"] = (r["id"], r["t"])
        out.append({"id": r["id"], "n": s["n"], "total": s["total"], "last": ",".join(s["last"]),
                    "tags": len(s["tags"]), "first": s["first"], "recent": before[0] if live else -1})
    return sorted(out, key=lambda r: r["id"])


def tally_flow(inputs: Path) -> tuple[sl.Flow, Any, Any]:
    """The flow over the Parquet files in `inputs`, its output and its late stream (the input's disorder is
    within the delay: none is late)."""
    flow = sl.Flow("tally")
    source = sl.ParquetSource(str(inputs / "*.parquet"))
    tally = (flow.read("in", source, schema={"id": int, "k": int, "tag": str, "v": int, "t": int}).event_time("t", dt.timedelta(milliseconds=20)).key_by("k")
             .process("tally", Tally(), schema=OUT_SCHEMA))
    return flow, testing.collect(tally), testing.collect(tally.late)


FIRST, KEYS = 1_500, 300  # the fixture: ids 0..FIRST-1 over KEYS keys, checkpointed at the end


def make_fixture() -> None:
    """Write tests/fixtures/memory-state-v1 (run with the code before chunked state: `python
    tests/test_memory_state_chunks.py make-fixture`): the state is one frame, one Arrow record batch."""
    import tempfile

    shutil.rmtree(FIXTURE, ignore_errors=True)
    inputs = Path(tempfile.mkdtemp())
    rows(0, FIRST, KEYS).write_parquet(inputs / "a.parquet")
    flow, out, late = tally_flow(inputs)
    sl.run(flow, checkpoint_dir=FIXTURE, checkpoint_interval=None, batch_size=256)
    shutil.rmtree(inputs)
    assert out.frame().sort("id").to_dicts() == oracle(rows(0, FIRST, KEYS)) and late.frame().height == 0


if __name__ == "__main__" and sys.argv[1:] == ["make-fixture"]:
    make_fixture()


@pytest.mark.parametrize("state", ["memory", "rocksdb"])
def test_a_checkpoint_written_before_chunks_resumes(state: str, tmp_path: Path) -> None:
    """The fixture was written by the code before chunked state (one frame, read whole): a run upgraded
    to this one resumes it, on either backend, and goes on from the saved counts, sums, lists and TTLs."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, ckpt)
    total = FIRST + 1_200
    inputs = tmp_path / "in"
    inputs.mkdir()
    rows(0, FIRST, KEYS).write_parquet(inputs / "a.parquet")  # what the fixture's run read
    rows(FIRST, total, KEYS).write_parquet(inputs / "b.parquet")  # new input since
    for batch_size in (1, 7, 65536):
        flow, out, late = tally_flow(inputs)
        work = tmp_path / f"ckpt-{batch_size}"
        shutil.copytree(ckpt, work)
        r = sl.run(flow, checkpoint_dir=work, checkpoint_interval=None, batch_size=batch_size, state=state,
                   state_dir=tmp_path / f"state-{batch_size}")
        assert r.rows_read == total - FIRST  # resumed: only the new records are read
        assert out.frame().sort("id").to_dicts() == oracle(rows(0, total, KEYS))[FIRST:], batch_size
        assert late.frame().height == 0
