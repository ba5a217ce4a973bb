"""The keyed state backends against a plain dict: the memory backend's encoding (one bytes object per
entry: write time, then the pickled value) round-trips every value and key type, through snapshots and
restores (into either backend), and a keyed process function's state equals a dict-based oracle for
keys of every column type at batch sizes 1, 7 and 65536, on out-of-order input."""

from __future__ import annotations

import datetime as dt
import gc
import pickle
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing
from sluice.core.batch import END_OF_TIME, NO_WATERMARK
from sluice.operators.base import key_bytes
from sluice.state.backends import MemoryBackend, RocksDBBackend

# every type a key column can hold, as key_bytes sees it (process.py: one column's value, or a list of them)
KEY_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=12), st.booleans(), st.none(),
    st.floats(allow_nan=False), st.datetimes(min_value=dt.datetime(1970, 1, 1)), st.dates(),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3)), min_size=2, max_size=3),
)
VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
              st.binary(max_size=20), st.datetimes()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4),
                            st.tuples(inner, inner)),
    max_leaves=8,
)
TIMES = st.one_of(st.integers(-(2**62), 2**62), st.sampled_from([NO_WATERMARK, END_OF_TIME, 0, -1]))
OPS = st.lists(st.tuples(st.sampled_from(["put", "put", "delete", "get"]), st.sampled_from(["n", "list", "m"]),
                         st.integers(0, 9), VALUES, TIMES), max_size=60)


def apply(ops: list[tuple[str, str, int, Any, int]], keys: list[bytes], backend: Any,
          oracle: dict[tuple[str, bytes], tuple[Any, int]]) -> None:
    for op, ns, i, value, t in ops:
        key = keys[i % len(keys)]
        if op == "put":
            backend.put(ns, key, value, t)
            oracle[(ns, key)] = (value, t)
        elif op == "delete":
            backend.delete(ns, key)
            oracle.pop((ns, key), None)
        else:
            assert backend.get(ns, key) == oracle.get((ns, key))


def assert_holds(backend: Any, oracle: dict[tuple[str, bytes], tuple[Any, int]], keys: list[bytes]) -> None:
    for ns in ("n", "list", "m", "never"):
        for key in keys:
            assert backend.get(ns, key) == oracle.get((ns, key)), (ns, key)
    assert sorted((n, k, pickle.dumps(v), t) for n, k, v, t in backend.items()) == \
        sorted((n, k, pickle.dumps(v), t) for (n, k), (v, t) in oracle.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key_values=st.lists(KEY_VALUES, min_size=1, max_size=10), before=OPS, after=OPS)
def test_memory_backend_equals_a_dict_through_snapshot_and_restore(key_values: list[Any], before: list[Any],
                                                                   after: list[Any], tmp_path: Path) -> None:
    keys = [key_bytes(k) for k in key_values]
    backend, oracle = MemoryBackend(), {}
    apply(before, keys, backend, oracle)
    assert_holds(backend, oracle, keys)
    assert len(backend) == len(oracle)
    saved = backend.snapshot()
    at_snapshot = dict(oracle)
    # the dump is what a checkpoint has always held: (ns, key, value pickled, time), one row per entry
    assert sorted((n, k, pickle.loads(v), t) for n, k, v, t in saved.collect().iter_rows()) == \
        sorted((n, k, v, t) for (n, k), (v, t) in oracle.items())
    restored = MemoryBackend()
    restored.put("n", b"stale", 1, 0)  # a restore replaces what was there
    restored.restore(saved)
    assert_holds(restored, oracle, keys)
    apply(after, keys, restored, oracle)  # and goes on from there
    assert_holds(restored, oracle, keys)
    apply(after, keys, backend, at_snapshot)  # the state it was taken from goes on the same way
    assert_holds(backend, at_snapshot, keys)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key_values=st.lists(KEY_VALUES, min_size=1, max_size=6), ops=OPS)
def test_a_memory_snapshot_restores_into_rocksdb(key_values: list[Any], ops: list[Any], tmp_path: Path) -> None:
    keys = [key_bytes(k) for k in key_values]
    backend, oracle = MemoryBackend(), {}
    apply(ops, keys, backend, oracle)
    rocks = RocksDBBackend()
    try:
        rocks.restore(backend.snapshot())
        assert_holds(rocks, oracle, keys)
    finally:
        rocks.close()


def test_an_old_snapshot_restores() -> None:
    """A dump written before this encoding (values pickled, times apart) reads back the same."""
    rows = [("n", key_bytes(7), 3, 10), ("n", key_bytes("a"), [1, 2], -5), ("m", key_bytes(7), {"x": 1.5}, NO_WATERMARK)]
    old = pl.DataFrame({"ns": [r[0] for r in rows], "key": [r[1] for r in rows],
                        "value": [pickle.dumps(r[2], protocol=pickle.HIGHEST_PROTOCOL) for r in rows],
                        "time": [r[3] for r in rows]},
                       schema={"ns": pl.String, "key": pl.Binary, "value": pl.Binary, "time": pl.Int64})
    b = MemoryBackend()
    b.restore(old)
    assert [b.get(n, k) for n, k, _, _ in rows] == [(v, t) for _, _, v, t in rows]
    b.restore(old.clear())
    assert len(b) == 0 and b.get("n", key_bytes(7)) is None


def test_a_read_is_a_copy_and_the_state_is_not_walked_by_the_gc() -> None:
    b = MemoryBackend()
    b.put("list", b"1", [1, 2], 0)
    got, _ = b.get("list", b"1")
    got.append(3)  # as with RocksDB: only an update changes the state
    assert b.get("list", b"1") == ([1, 2], 0)
    for i in range(1000):
        b.put("n", key_bytes(i), {"i": [i]}, i)
    assert not any(gc.is_tracked(d) for d in b.data.values())  # full collections do not visit the entries


class Running(sl.KeyedProcessFunction):
    """Per key: a count and a sum (value state), the last three values (list state), a count per parity
    (map state)."""

    def open(self, ctx: Any) -> None:
        self.n, self.total = ctx.value_state("n"), ctx.value_state("total")
        self.last, self.parity = ctx.list_state("last"), ctx.map_state("parity")

    def process(self, record: dict[str, Any], ctx: Any) -> Any:
        n = (self.n.value() or 0) + 1
        self.n.update(n)
        self.total.update((self.total.value() or 0) + record["v"])
        self.last.update([*self.last.get(), record["v"]][-3:])
        p = record["v"] % 2
        self.parity.put(p, (self.parity.get(p) or 0) + 1)
        yield {"id": record["id"], "n": n, "total": self.total.value(), "last": self.last.get(),
               "same_parity": self.parity.get(p)}


def oracle(rows: list[dict[str, Any]], key_cols: list[str]) -> list[dict[str, Any]]:
    """The same function by hand: records in event-time order (ties in arrival order), a dict per key."""
    state: dict[Any, dict[str, Any]] = {}
    out = []
    for r in sorted(rows, key=lambda r: (r["t"], r["id"])):
        s = state.setdefault(tuple(r[k] for k in key_cols), {"n": 0, "total": 0, "last": [], "parity": {}})
        s["n"] += 1
        s["total"] += r["v"]
        s["last"] = [*s["last"], r["v"]][-3:]
        p = r["v"] % 2
        s["parity"][p] = s["parity"].get(p, 0) + 1
        out.append({"id": r["id"], "n": s["n"], "total": s["total"], "last": s["last"], "same_parity": s["parity"][p]})
    return sorted(out, key=lambda r: r["id"])


KEY_COLUMNS = {
    "int": (st.integers(-(2**63), 2**63 - 1), pl.Int64), "str": (st.text(max_size=6), pl.String),
    "float": (st.floats(allow_nan=False, allow_infinity=False), pl.Float64), "bool": (st.booleans(), pl.Boolean),
    "datetime": (st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(2100, 1, 1)), pl.Datetime("us")),
    "date": (st.dates(dt.date(1970, 1, 1), dt.date(2100, 1, 1)), pl.Date),
}


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_process_state_equals_a_dict_for_every_key_type(backend: str, data: st.DataObject, tmp_path: Path) -> None:
    kinds = data.draw(st.lists(st.sampled_from(sorted(KEY_COLUMNS)), min_size=1, max_size=2, unique=True))
    pools = {k: data.draw(st.lists(KEY_COLUMNS[k][0], min_size=1, max_size=4)) for k in kinds}
    n = data.draw(st.integers(1, 60))
    rows = [{"id": i, "t": data.draw(st.integers(0, 50)), "v": data.draw(st.integers(-20, 20)),
             **{f"k_{k}": data.draw(st.sampled_from(pools[k])) for k in kinds}} for i in range(n)]
    key_cols = [f"k_{k}" for k in kinds]
    schema = {"id": pl.Int64, "t": pl.Int64, "v": pl.Int64, **{f"k_{k}": KEY_COLUMNS[k][1] for k in kinds}}
    frame = pl.DataFrame(rows, schema=schema)
    expected = oracle(frame.to_dicts(), key_cols)  # the column's own values (datetimes to µs)
    for batch_size in (1, 7, 65536):
        flow = sl.Flow("running")
        proc = (flow.read("in", testing.rows(frame)).event_time("t", dt.timedelta(milliseconds=50)).key_by(*key_cols)
                .process("p", Running(), schema={"id": int, "n": int, "total": int, "last": pl.List(pl.Int64), "same_parity": int}))
        out = testing.collect(proc)
        sl.run(flow, batch_size=batch_size, state=backend, state_dir=tmp_path / f"state-{batch_size}")
        assert out.frame().sort("id").to_dicts() == expected, batch_size


@pytest.mark.parametrize("chunk", [1, 7])
def test_snapshots_and_restores_across_chunk_boundaries(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice.state import backends

    monkeypatch.setattr(backends, "_CHUNK", chunk)
    for n in (0, 1, 6, 7, 8, 14, 15):
        b, oracle = MemoryBackend(), {}
        for i in range(n):
            ns = "ab"[i % 2]
            b.put(ns, key_bytes(i), [i], -i)
            oracle[(ns, key_bytes(i))] = ([i], -i)
        saved = b.snapshot()
        assert saved.collect().height == n
        restored = MemoryBackend()
        restored.restore(saved)
        assert_holds(restored, oracle, [key_bytes(i) for i in range(n)])
