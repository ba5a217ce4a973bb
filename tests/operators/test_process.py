"""Keyed process functions: event-time order, state per key on both backends, TTL, timers, side outputs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from conftest import generate
from sluice import testing
from sluice.examples import risk_score


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("transactions", 3000, tmp_path_factory.mktemp("tx") / "tx.jsonl", users=50, span_s=7200)


def reference(path: Path) -> pl.DataFrame:
    """The risk job done by hand: all transactions in event-time order (ties by arrival), then the
    end-of-input cleanup of every user."""
    txs = pl.read_ndjson(path).with_row_index("arrival").sort(["timestamp", "arrival"]).to_dicts()
    profiles: dict[str, dict] = {}
    recents: dict[str, dict[int, int]] = {}
    rows = []
    for tx in txs:
        u = tx["user_id"]
        risk, profiles[u], recents[u] = risk_score.score(profiles.get(u), recents.get(u, {}), tx, tx["timestamp"])
        rows.append({"tx_id": tx["tx_id"], "user_id": u, "amount": tx["amount"], "risk_score": risk,
                     "tx_last_hour": sum(recents[u].values()), "avg_amount": round(profiles[u]["mean"], 6)})
    return pl.DataFrame(rows)


@pytest.mark.parametrize("backend", ["memory", "rocksdb"])
def test_risk_scores_equal_the_reference_at_every_batch_size(transactions: Path, backend: str, tmp_path: Path) -> None:
    expected = reference(transactions)
    users = set(expected["user_id"])
    for batch_size in (7, 1000):
        out, alerts = sl.CollectSink(), sl.CollectSink()
        flow = risk_score.build(sl.JsonLinesSource(transactions), out, alerts)
        sl.run(flow, batch_size=batch_size, state=backend, state_dir=tmp_path / "state")
        got = out.frame()
        scored = got.filter(pl.col("tx_id").is_not_null())
        assert scored.select(expected.columns).equals(expected), batch_size
        cleanups = got.filter(pl.col("tx_id").is_null())
        assert set(cleanups["user_id"]) == users and cleanups.height == len(users)  # 30-day timers fire at end
        assert alerts.frame().equals(scored.filter(pl.col("risk_score") >= risk_score.HIGH_RISK))


class Counter(sl.KeyedProcessFunction):
    def open(self, ctx):
        self.n = ctx.value_state("n", ttl=timedelta(seconds=10))

    def process(self, record, ctx):
        n = (self.n.value() or 0) + 1
        self.n.update(n)
        ctx.timers.event_time(ctx.timestamp + 5_000)
        yield {"k": ctx.key, "t": ctx.timestamp, "n": n}

    def on_timer(self, timestamp, ctx):
        yield {"k": ctx.key, "t": timestamp, "n": -1}


def run_counter(rows, delay_ms=0, batch_size=1):
    flow = sl.Flow("c")
    timed = flow.read("in", testing.rows(rows)).event_time("t", timedelta(milliseconds=delay_ms)).key_by("k")
    proc = timed.process("count", Counter(), schema={"k": str, "t": int, "n": int})
    out, late = testing.collect(proc), testing.collect(proc.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame(), late.frame()


def test_records_in_event_time_order_with_timers_between():
    rows = {"t": [3_000, 1_000, 2_000, 20_000], "k": ["a", "a", "b", "a"]}
    out, late = run_counter(rows, delay_ms=5_000)
    assert out.rows() == [
        ("a", 1_000, 1), ("b", 2_000, 1), ("a", 3_000, 2),  # sorted by time although 3000 came first
        ("a", 6_000, -1), ("b", 7_000, -1), ("a", 8_000, -1),  # timers at t + 5 s, in time order
        ("a", 20_000, 1),  # 17 s after the last write: the TTL of 10 s expired the count
        ("a", 25_000, -1),
    ]
    assert late.height == 0


def test_records_behind_the_watermark_go_to_late():
    out, late = run_counter({"t": [10_000, 1_000, 12_000], "k": ["a", "a", "a"]}, delay_ms=0)
    assert late["t"].to_list() == [1_000]
    assert [r[1] for r in out.rows() if r[2] > 0] == [10_000, 12_000]


def test_output_does_not_depend_on_batch_size():
    rows = {"t": [5, 1, 9, 3, 7, 2, 30_000, 8, 4], "k": list("abababcab")}
    frames = [run_counter(rows, delay_ms=10, batch_size=b) for b in (1, 2, 4, 100)]
    for out, late in frames[1:]:
        assert out.equals(frames[0][0]) and late.equals(frames[0][1])


def test_side_output_must_be_declared():
    class Bad(sl.KeyedProcessFunction):
        def process(self, record, ctx):
            ctx.output("nope", record)
            return []

    flow = sl.Flow("b")
    testing.collect(flow.read("in", testing.rows({"t": [1], "k": ["a"]})).event_time("t", timedelta(0)).key_by("k").process("p", Bad()))
    with pytest.raises(sl.UserFunctionError, match="side output 'nope' is not declared"):
        sl.run(flow)


def test_process_needs_a_key():
    flow = sl.Flow("b")
    with pytest.raises(sl.PlanError, match="key_by"):
        flow.read("in", testing.rows({"t": [1]})).event_time("t", timedelta(0)).process("p", Counter())


class _Echo(sl.KeyedProcessFunction):
    """Echoes each record with the key and time it was handled under; a record with n == 13 yields a
    non-dict, which stops the run (or is a dead letter)."""

    def process(self, record, ctx):
        if record["n"] == 13:
            yield ["not", "a", "dict"]
        yield {**record, "k1": ctx.key[0], "k2": ctx.key[1], "at": ctx.timestamp}


def test_records_reach_process_as_their_user_columns_under_a_compound_key() -> None:
    """Out-of-order input, several batch sizes, against the records sorted by hand (time, then arrival)."""
    import random

    rnd = random.Random(7)
    n = 300
    rows = {"t": [rnd.randrange(0, 50) * 10 for _ in range(n)], "a": [rnd.choice("xy") for _ in range(n)],
            "b": [rnd.randrange(3) for _ in range(n)], "n": [i + 100 for i in range(n)]}
    expected = (pl.DataFrame(rows).with_row_index("arrival").sort(["t", "arrival"]).drop("arrival")
                .with_columns(k1=pl.col("a"), k2=pl.col("b"), at=pl.col("t")))
    for batch_size in (1, 7, 65536):
        flow = sl.Flow("e")
        src = flow.read("in", testing.rows(rows)).event_time("t", timedelta(seconds=1)).key_by("a", "b")
        out = testing.collect(src.process("p", _Echo()))
        sl.run(flow, batch_size=batch_size)
        got = out.frame()
        assert not [c for c in got.columns if c.startswith("__")], got.columns
        assert got.equals(expected.select(got.columns)) and got.columns == expected.columns, batch_size


def test_a_non_dict_output_names_the_record_under_a_compound_key() -> None:
    rows = {"t": [5, 1, 9], "a": ["x", "y", "x"], "b": [1, 2, 1], "n": [1, 13, 2]}
    for on_error in ("fail", "dead_letter"):
        flow = sl.Flow("e")
        src = flow.read("in", testing.rows(rows)).event_time("t", timedelta(seconds=1)).key_by("a", "b")
        proc = src.process("p", _Echo(), on_error=on_error)
        out = testing.collect(proc)
        if on_error == "fail":
            with pytest.raises(sl.UserFunctionError) as err:
                sl.run(flow)
            assert err.value.position == "offset 1 (key ['y', 2], event time 1)"
            assert "process produced a list (['not', 'a', 'dict']), not a dict" in str(err.value)
            continue
        dead = testing.collect(proc.dead_letters)
        sl.run(flow)
        assert dead.frame()["position"].to_list() == ["offset 1 (key ['y', 2], event time 1)"]
        assert out.frame()["n"].to_list() == [1, 2]  # the failed record's output is dropped whole


class Inactivity(sl.KeyedProcessFunction):
    """A key is inactive `gap` ms after its last record: each record moves the key's one timer (deletes the
    one at the previous record's time + gap, registers its own)."""

    GAP = 40

    def open(self, ctx):
        self.last = ctx.value_state("last")

    def process(self, record, ctx):
        last = self.last.value()
        if last is not None:
            ctx.timers.delete_event_time(last + self.GAP)
        ctx.timers.event_time(ctx.timestamp + self.GAP)
        self.last.update(ctx.timestamp)
        return None

    def on_timer(self, timestamp, ctx):
        yield {"k": ctx.key, "inactive_at": timestamp, "last": self.last.value()}


def test_moved_timers_fire_once_per_inactive_spell_at_every_batch_size() -> None:
    """Oracle: per key, records in event-time order (ties in arrival); a spell ends at t + gap of a record
    whose key's next record comes later than that (records at a timer's time come before it)."""
    import random

    rng = random.Random(11)
    rows, t = [], 0
    for i in range(3_000):
        t += rng.choice([0, 1, 3, 9, 30])
        rows.append({"i": i, "k": f"k{rng.randrange(40)}", "t": max(0, t - rng.randrange(20))})  # disorder < delay
    by_key: dict[str, list[int]] = {}
    for r in sorted(rows, key=lambda r: (r["t"], r["i"])):
        by_key.setdefault(r["k"], []).append(r["t"])
    gap = Inactivity.GAP
    want = sorted((k, ts[j] + gap, ts[j]) for k, ts in by_key.items() for j in range(len(ts))
                  if j + 1 == len(ts) or ts[j + 1] > ts[j] + gap)
    for batch_size in (1, 7, 65536):
        flow = sl.Flow("idle")
        proc = (flow.read("in", testing.rows(rows)).event_time("t", timedelta(milliseconds=25)).key_by("k")
                .process("idle", Inactivity(), schema={"k": str, "inactive_at": int, "last": int}))
        out, late = testing.collect(proc), testing.collect(proc.late)
        sl.run(flow, batch_size=batch_size)
        got = sorted((r["k"], r["inactive_at"], r["last"]) for r in out.frame().to_dicts())
        assert late.frame().height == 0 and got == want, batch_size
