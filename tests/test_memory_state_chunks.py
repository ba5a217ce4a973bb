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
import pyarrow as pa
import pyarrow.ipc
import pytest

import sluice as sl
from sluice import testing
from sluice.checkpoint.store import CheckpointStore
from sluice.operators.base import key_bytes
from sluice.state import backends
from sluice.state.backends import MemoryBackend, RocksDBBackend

FIXTURE = Path(__file__).parent / "fixtures" / "memory-state-v1"
TTL_MS = 1_000  # keys come back after ~10 ms to ~2 s: some values live, some expired


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
    return pl.DataFrame({"id": list(ids), "k": [(i * 7919) % keys if i % 3 else (i // 3) % keys for i in ids], "tag": [f"t{i % 5}" for i in ids],
                         "v": [i % 13 for i in ids], "t": [i * 3 - (i % 4) * 5 for i in ids]})


def oracle(frame: pl.DataFrame, state: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Tally by hand: records in event-time order (ties in arrival order), a dict per key (`state`, if given,
    is left holding them)."""
    state = {} if state is None else state
    out = []
    for r in sorted(frame.to_dicts(), key=lambda r: (r["t"], r["id"])):
        s = state.setdefault(r["k"], {"n": 0, "total": 0.0, "last": [], "tags": {}, "first": None, "recent": None})
        s["n"] += 1
        s["total"] += r["v"] / 4
        s["t"] = r["t"]
        s["last"] = [*s["last"], r["tag"]][-3:]
        s["tags"][r["tag"]] = s["tags"].get(r["tag"], 0) + 1
        if s["first"] is None:
            s["first"] = dt.datetime(2026, 1, 1) + dt.timedelta(milliseconds=r["t"])
        before = s["recent"]
        live = before is not None and r["t"] - before[2] <= TTL_MS
        out.append({"id": r["id"], "n": s["n"], "total": s["total"], "last": ",".join(s["last"]),
                    "tags": len(s["tags"]), "first": s["first"], "recent": before[0] if live else -1})
        s["recent"] = (r["id"], r["tag"], r["t"])
    return sorted(out, key=lambda r: r["id"])


def oracle_state(frame: pl.DataFrame) -> dict[tuple[str, bytes], tuple[Any, int]]:
    """Tally's state after `frame`, as backend entries: (state name, key) → (value, write time)."""
    state: dict[int, dict[str, Any]] = {}
    oracle(frame, state)
    out: dict[tuple[str, bytes], tuple[Any, int]] = {}
    for k, s in state.items():
        key = key_bytes(k)
        for name in ("n", "total", "last", "tags"):
            out[(name, key)] = (s[name], s["t"])
        out[("first", key)] = (s["first"], int((s["first"] - dt.datetime(2026, 1, 1)) / dt.timedelta(milliseconds=1)))
        out[("recent", key)] = (s["recent"][:2], s["recent"][2])
    return out


def tally_flow(inputs: Path, out: Path | None = None) -> tuple[sl.Flow, Any, Any]:
    """The flow over the Parquet files in `inputs`, its output (collected, or JSON Lines at `out`) and its
    late stream (the input's disorder is within the delay: none is late)."""
    flow = sl.Flow("tally")
    source = sl.ParquetSource(str(inputs / "*.parquet"))
    tally = (flow.read("in", source, schema={"id": int, "k": int, "tag": str, "v": int, "t": int})
             .event_time("t", dt.timedelta(milliseconds=20)).key_by("k").process("tally", Tally(), schema=OUT_SCHEMA))
    if out is not None:
        tally.write("out", sl.JsonLinesSink(out))
        return flow, None, testing.collect(tally.late)
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


if __name__ == "__main__" and sys.argv[1:2] == ["make-fixture"]:
    make_fixture()
elif __name__ == "__main__":  # a crash test's job: inputs, output, checkpoints, chunk size, failpoint to arm
    from sluice.core import failpoints

    inputs, out, ckpt, chunk, armed = sys.argv[1:6]
    backends._CHUNK = int(chunk)
    if armed:
        failpoints.arm([armed])
    flow, _, late = tally_flow(Path(inputs), Path(out))
    sl.run(flow, checkpoint_dir=ckpt, checkpoint_interval=0, batch_size=500)
    assert late.frame().height == 0


def test_a_checkpoint_written_before_chunks_restores_every_entry() -> None:
    cp = CheckpointStore(FIXTURE).latest()
    assert cp is not None and "chunked" not in cp.manifest["steps"]["tally"]["frames"]["backend"]  # the old format
    saved = cp.state("tally")
    assert saved is not None
    want = oracle_state(rows(0, FIRST, KEYS))
    b = MemoryBackend()
    b.restore(saved["backend"])
    assert {(n, k): (v, t) for n, k, v, t in b.items()} == want and len(b) == len(want) == 6 * KEYS
    rocks = RocksDBBackend()
    try:
        rocks.restore(saved["backend"])
        assert {(n, k): (v, t) for n, k, v, t in rocks.items()} == want
    finally:
        rocks.close()


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


def filled(entries: dict[str, int]) -> tuple[MemoryBackend, dict[tuple[str, bytes], tuple[Any, int]]]:
    """A backend with entries[name] entries under each state name, values of several types and write times
    across the range (TTL times included), and the same as a plain dict."""
    b, expected = MemoryBackend(), {}
    kinds = [lambda i: i, lambda i: -i / 3, lambda i: f"s{i}" * (i % 4), lambda i: [i, str(i)], lambda i: {"i": i},
             lambda i: None, lambda i: dt.datetime(2026, 1, 1) + dt.timedelta(seconds=i), lambda i: (i, b"x" * (i % 3))]
    for name, n in entries.items():
        for i in range(n):
            key = key_bytes(i if i % 3 else f"k{i}")
            value, t = kinds[i % len(kinds)](i), (i * 7919 % 1000) - 500 if i % 5 else -(2**62) + i
            b.put(name, key, value, t)
            expected[(name, key)] = (value, t)
    return b, expected


def holds(b: MemoryBackend, expected: dict[tuple[str, bytes], tuple[Any, int]]) -> bool:
    got = {(n, k): (v, t) for n, k, v, t in b.items()}
    return len(b) == len(got) == len(expected) and got == expected


@pytest.mark.parametrize(("chunk", "entries"), [
    (7, {"a": 0, "b": 1, "c": 6, "d": 7, "e": 8, "f": 14, "g": 15}),  # every boundary of a chunk, small
    (None, {"n": 3 * 65_536 + 11, "list": 65_536, "m": 1_000}),  # the real _CHUNK: several full chunks and a partial one
])
def test_chunked_state_round_trips_through_a_checkpoint(chunk: int | None, entries: dict[str, int], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:
        monkeypatch.setattr(backends, "_CHUNK", chunk)
    size = backends._CHUNK
    b, expected = filled(entries)
    store = CheckpointStore(tmp_path)
    store.write(1, "f", {"p": ("process", {}, {"backend": b.snapshot(), "watermark": 5})}, {})
    cp = CheckpointStore(tmp_path).latest()
    assert cp is not None and cp.manifest["steps"]["p"]["frames"]["backend"]["rows"] == sum(entries.values())
    saved = cp.state("p")
    assert saved is not None and saved["watermark"] == 5
    # one record batch per chunk, each from one state name, none larger than a chunk
    parts = list(saved["backend"])
    assert [(p["ns"][0], p.height) for p in parts] == [
        (n, min(size, k - start)) for n, k in entries.items() for start in range(0, k, size)]
    restored = MemoryBackend()
    restored.put("stale", b"x", 1, 0)  # a restore replaces what was there
    restored.restore(saved["backend"])
    assert holds(restored, expected)
    assert restored.data == {n: d for n, d in b.data.items()}  # the very bytes
    rocks = RocksDBBackend()  # a memory checkpoint resumed with state="rocksdb"
    try:
        rocks.restore(saved["backend"])
        assert sorted((n, k, v, t) for n, k, v, t in rocks.items()) == sorted((n, k, v, t) for (n, k), (v, t) in expected.items())
    finally:
        rocks.close()


def test_chunked_state_round_trips_through_a_kafka_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Kafka runtime keeps a task's state in one message: the chunks go into it, and come back."""
    from sluice.checkpoint.store import pack_state, unpack_state

    monkeypatch.setattr(backends, "_CHUNK", 5)
    b, expected = filled({"a": 12, "b": 5, "c": 0})
    _, _, load = unpack_state(pack_state({"p": ("process", {}, {"backend": b.snapshot(), "w": 1})}, {}))
    restored = MemoryBackend()
    restored.restore(load("p")["backend"])
    assert holds(restored, expected)


def test_a_damaged_chunk_is_caught_before_it_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_CHUNK", 4)
    store = CheckpointStore(tmp_path)
    for cid in (1, 2):
        b, _ = filled({"a": 10 * cid})
        store.write(cid, "f", {"p": ("process", {}, {"backend": b.snapshot()})}, {})
    frame = tmp_path / "chk-000002" / "p.backend.arrow"
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 1
    frame.write_bytes(bytes(data))
    cp = CheckpointStore(tmp_path).latest()
    assert cp is not None and cp.id == 1 and cp.manifest["steps"]["p"]["frames"]["backend"]["rows"] == 10


def _job(tmp: Path, armed: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, __file__, str(tmp / "in"), str(tmp / "out.jsonl"), str(tmp / "ckpt"), "50",
                           armed], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent)


@pytest.mark.parametrize(("hit", "in_checkpoint"), [(1, 1), (54, 1), (100, 2), (216, 3)])
def test_killed_while_writing_chunks_resumes_from_the_previous_checkpoint(hit: int, in_checkpoint: int,
                                                                          tmp_path: Path) -> None:
    """kill -9 in the middle of a chunked state file (a checkpoint after every batch of 500, chunks of 50
    entries: 54 chunks in the first checkpoint, 78 in the second, 84 in the third, so hits 1 and 54 are the
    first checkpoint's first and last chunk, 100 is in the second, 216 the last of the third): the
    partial checkpoint has no manifest and is ignored, the one before it is used, and the output is
    exactly once."""
    (tmp_path / "in").mkdir()
    total = 3_000
    rows(0, total, 700).write_parquet(tmp_path / "in" / "a.parquet")
    killed = _job(tmp_path, f"during_chunked_state@{hit}")
    assert killed.returncode == -9, killed.stderr
    ckpt = tmp_path / "ckpt"
    whole = sorted(int(p.parent.name[4:]) for p in ckpt.glob("chk-*/manifest.json"))
    partial = [p for p in ckpt.glob("chk-*") if not (p / "manifest.json").exists()]
    assert len(partial) == 1 and int(partial[0].name[4:]) == in_checkpoint == (whole[-1] if whole else 0) + 1
    with pytest.raises(pa.ArrowInvalid):  # killed inside the state file: it is not a whole Arrow file
        pa.ipc.open_file(str(partial[0] / "tally.backend.arrow"))
    resumed = _job(tmp_path, "")
    assert resumed.returncode == 0, resumed.stderr
    got = pl.read_ndjson(tmp_path / "out.jsonl", schema={"id": pl.Int64, "n": pl.Int64, "total": pl.Float64,
                                                          "last": pl.String, "tags": pl.Int64, "first": pl.String,
                                                          "recent": pl.Int64})
    want = pl.DataFrame(oracle(rows(0, total, 700))).with_columns(pl.col("first").dt.to_string("%Y-%m-%dT%H:%M:%S%.f"))
    assert got.sort("id").drop("first").equals(want.drop("first"))
    assert got.height == total and got["id"].n_unique() == total
