"""The native session kernel (native/src/sessions.rs) against a brute-force per-record reference and against
the Polars path it stands in for: out-of-order input, batch sizes 1, 7 and 65536, late records, keys of
every kind it takes, the hand-over to the Polars path, and checkpoints restored across the two paths."""

from __future__ import annotations

import random
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice.checkpoint.store import pack_state, unpack_state
from sluice.core.batch import NO_WATERMARK, TIME, WATERMARK, Batch
from sluice.core.plan import Window
from sluice.operators import session_kernel
from sluice.operators.window import SessionWindowOperator, window_operator
from sluice.time.watermark import running_watermarks

pytestmark = pytest.mark.skipif(not session_kernel.ENABLED, reason="the native module is not built")

KEYS = ["a", "b", "é", "a-key-longer-than-sixteen-bytes"]


def reference(recs, gap, delay):
    """Per record in arrival order, as DESIGN.md §3 says: (sessions (k, start, end, n) sorted by end, k,
    start; late records as (t, k)). A record is late when its own session would have closed (t + gap < W)
    or when it reaches the newest session emitted for its key."""
    maxt = None
    open_s: dict = {}
    emitted_last: dict = {}
    done, late = [], []
    for t, k in recs:
        w = maxt - delay if maxt is not None else float("-inf")
        for key, sessions in open_s.items():  # everything that ended by W is out before the record
            for s in [s for s in sessions if s[1] + gap + 1 <= w]:
                sessions.remove(s)
                done.append((key, s[0], s[1] + gap, s[2]))
                emitted_last[key] = max(emitted_last.get(key, s[1]), s[1])
        if t + gap + 1 <= w or (k in emitted_last and t <= emitted_last[k] + gap):
            late.append((t, k))
        else:
            sessions = open_s.setdefault(k, [])
            touching = [s for s in sessions if s[0] - gap <= t <= s[1] + gap]
            open_s[k] = [s for s in sessions if s not in touching] + [
                [min([t, *(s[0] for s in touching)]), max([t, *(s[1] for s in touching)]),
                 1 + sum(s[2] for s in touching)]]
        maxt = t if maxt is None else max(maxt, t)
    done += [(key, s[0], s[1] + gap, s[2]) for key, sessions in open_s.items() for s in sessions]
    return sorted(done, key=lambda r: (r[2], r[0], r[1])), late


class Run:
    """The session operator fed `recs` (t, k) in batches, with the kernel on or off."""

    def __init__(self, monkeypatch, gap, delay, native, key=None, aggs=None):
        monkeypatch.setattr(session_kernel, "ENABLED", native)
        step = Window("w", (), (pl.col("k") if key is None else key,), sl.Session(timedelta(milliseconds=gap)), aggs or {"n": sl.agg.count()})
        self.op = window_operator(step)
        assert isinstance(self.op, SessionWindowOperator)
        self.monkeypatch, self.delay, self.maxt = monkeypatch, delay, NO_WATERMARK
        self.out: list[pl.DataFrame] = []
        self.late: list[pl.DataFrame] = []

    def feed(self, recs, batch_size, key_dtype=pl.String, time_dtype=None):
        for i in range(0, len(recs), batch_size):
            chunk = recs[i:i + batch_size]
            t = np.array([r[0] for r in chunk], dtype=np.int64)
            wm, self.maxt = running_watermarks(t, self.maxt, self.delay)
            df = pl.DataFrame({"k": pl.Series([r[1] for r in chunk], dtype=key_dtype), TIME: t, WATERMARK: wm})
            self._take(self.op.on_batch(0, Batch(df, watermark=self.maxt - self.delay, time_dtype=time_dtype)))
        return self

    def end(self):
        self._take(self.op.on_end())
        return self

    def _take(self, emitted):
        for port, b in emitted:
            if b.height:
                (self.out if port == "out" else self.late).append(b.df)

    def restart(self, native):
        """Checkpoint (through the checkpoint format's bytes) and restore into a new operator."""
        blob = pack_state({"w": ("window", None, self.op.snapshot())}, {})
        _, _, load = unpack_state(blob)
        self.monkeypatch.setattr(session_kernel, "ENABLED", native)
        self.op = window_operator(self.op.step)
        self.op.restore(load("w"))
        return self

    def sessions(self):
        df = pl.concat(self.out) if self.out else None
        return [] if df is None else [(r["k"], r["window_start"], r["window_end"], r["n"]) for r in df.to_dicts()]

    def late_records(self):
        return [(r[TIME], r["k"]) for df in self.late for r in df.to_dicts()]

    def frames(self):
        return (pl.concat(self.out) if self.out else pl.DataFrame(),
                pl.concat(self.late) if self.late else pl.DataFrame())


def disordered(seed, n=600, keys=KEYS, gap=1000):
    """Times rising with steps around the gap, arrival shuffled by up to 3 gaps: late records, merges, bridges."""
    rnd = random.Random(seed)
    recs, t = [], 0
    for _ in range(n):
        t += rnd.choice([0, 1, gap // 2, gap, gap + 1, 3 * gap])
        recs.append((t, rnd.choice(keys)))
    return sorted(recs, key=lambda r: r[0] + rnd.randrange(3 * gap))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("delay", [0, 500, 2000])
def test_kernel_equals_the_reference_for_any_batch_size(monkeypatch, seed, delay):
    recs = disordered(seed)
    expected, expected_late = reference(recs, 1000, delay)
    assert expected_late or delay == 2000  # the input does have late records
    for batch_size in (1, 7, 65536):
        run = Run(monkeypatch, 1000, delay, native=True).feed(recs, batch_size)
        assert run.op.native is not None  # the kernel did the work
        run.end()
        assert run.sessions() == expected, batch_size
        assert run.late_records() == expected_late, batch_size


records = st.lists(st.tuples(st.integers(0, 40).map(lambda s: s * 500), st.sampled_from(KEYS)), min_size=1, max_size=60)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(recs=records, delay=st.sampled_from([0, 500, 1000, 3000]), gap=st.sampled_from([500, 1000, 2500]),
       batch_size=st.sampled_from([1, 7, 65536]), time_dtype=st.sampled_from([None, pl.Datetime("ms", "UTC")]))
def test_kernel_equals_the_polars_path_and_the_reference(monkeypatch, recs, delay, gap, batch_size, time_dtype):
    expected, expected_late = reference(recs, gap, delay)
    native = Run(monkeypatch, gap, delay, native=True).feed(recs, batch_size, time_dtype=time_dtype).end()
    polars = Run(monkeypatch, gap, delay, native=False).feed(recs, batch_size, time_dtype=time_dtype).end()
    if time_dtype is None:
        assert native.sessions() == expected
    assert native.late_records() == expected_late
    (out_n, late_n), (out_p, late_p) = native.frames(), polars.frames()
    assert out_n.schema == out_p.schema
    assert out_n.equals(out_p)  # every column, the emitted event time and watermark included, in order
    assert late_n.equals(late_p)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(recs=records, delay=st.sampled_from([0, 1000, 3000]), cut=st.integers(0, 60),
       paths=st.sampled_from([(True, False), (False, True), (True, True), (False, False)]))
def test_a_checkpoint_of_either_path_restores_into_the_other(monkeypatch, recs, delay, cut, paths):
    gap, (before, after) = 1000, paths
    whole = Run(monkeypatch, gap, delay, native=True).feed(recs, 7).end()
    run = Run(monkeypatch, gap, delay, native=before).feed(recs[:cut], 7).restart(after).feed(recs[cut:], 7).end()
    assert (run.op.native is not None) == after
    assert run.sessions() == whole.sessions()
    assert run.late_records() == whole.late_records()


def test_a_checkpoint_taken_after_the_input_ended_keeps_what_was_emitted_final(monkeypatch):
    # the input ended (everything emitted), then resumed with more: a record that reaches an emitted
    # session is late on either path, whichever wrote the checkpoint
    recs, more = [(0, "a"), (5000, "b")], [(5500, "a"), (6000, "b"), (9000, "a")]
    for before, after in [(True, False), (False, True), (True, True), (False, False)]:
        run = Run(monkeypatch, 1000, 0, native=before).feed(recs, 7).end().restart(after)
        run.op.reopen(NO_WATERMARK)
        run.feed(more, 7).end()
        assert run.late_records() == [(6000, "b")], (before, after)
        assert run.sessions() == [("a", 0, 1000, 1), ("b", 5000, 6000, 1), ("a", 5500, 6500, 1),
                                  ("a", 9000, 10000, 1)], (before, after)


def test_a_checkpoint_keeps_the_emitted_sessions_a_record_can_still_reach(monkeypatch):
    # a's session [500] is emitted at W = 2500 (its end 1501 ≤ W); at W = 2500 a record at 1500 is exactly
    # the gap behind (on time by itself), yet it reaches that session (1500 ≤ 500 + gap): late, also after
    # a restore, which must keep the emitted sessions as far back as W − 2·gap
    for before, after in [(True, False), (False, True), (True, True)]:
        run = Run(monkeypatch, 1000, 0, native=before).feed([(500, "a"), (2500, "b")], 7).feed([(2500, "c")], 7)
        run.restart(after).feed([(1500, "a")], 7).end()
        assert run.late_records() == [(1500, "a")], (before, after)


@pytest.mark.parametrize("dtype", [pl.Int32, pl.Int64, pl.UInt32])
def test_integer_keys(monkeypatch, dtype):
    recs = disordered(3, keys=[0, 7, 2**31 - 1, 42])
    expected, expected_late = reference(recs, 1000, 500)
    for batch_size in (1, 7, 65536):
        run = Run(monkeypatch, 1000, 500, native=True).feed(recs, batch_size, key_dtype=dtype)
        assert run.op.native is not None
        run.end()
        assert run.sessions() == expected
        assert run.late_records() == expected_late
        assert pl.concat(run.out).schema["k"] == dtype


def test_a_batch_with_a_null_key_hands_the_state_over_for_good(monkeypatch):
    recs = disordered(4, keys=["a", "b"])
    first = 200
    recs[first:] = [(t, None if i % 5 == 0 else k) for i, (t, k) in enumerate(recs[first:])]
    polars = Run(monkeypatch, 1000, 500, native=False).feed(recs, 7).end()
    run = Run(monkeypatch, 1000, 500, native=True).feed(recs[:first - first % 7], 7)
    assert run.op.native is not None
    run.feed(recs[first - first % 7:], 7)
    assert run.op.native is None and not run.op.native_ok
    run.end()
    assert run.frames()[0].equals(polars.frames()[0])
    assert run.frames()[1].equals(polars.frames()[1])


def test_the_kernel_is_used_only_where_it_fits(monkeypatch):
    def op(**aggs):
        return Run(monkeypatch, 1000, 0, True, aggs=aggs or None).op

    assert op().native_ok
    assert op(n=sl.agg.count(), m=sl.agg.count()).native_ok
    assert not op(n=sl.agg.count(), s=sl.agg.sum("v")).native_ok
    assert not op(n=sl.agg.count("v")).native_ok
    monkeypatch.setattr(session_kernel, "ENABLED", False)
    assert not SessionWindowOperator(Window("w", (), (pl.col("k"),), sl.Session(timedelta(seconds=1)),
                                            {"n": sl.agg.count()})).native_ok


def test_a_step_without_keys_and_a_flow_use_the_kernel(monkeypatch):
    recs = disordered(5, keys=["x"])
    expected, expected_late = reference(recs, 1000, 500)
    # a step without key_by groups everything under one literal key
    run = Run(monkeypatch, 1000, 500, native=True, key=pl.lit(0).alias("k")).feed(recs, 7)
    assert run.op.native is not None
    run.end()
    assert [(s[1], s[2], s[3]) for s in run.sessions()] == [(s[1], s[2], s[3]) for s in expected]
    assert [t for t, _ in run.late_records()] == [t for t, _ in expected_late]


def test_keys_with_nothing_left_to_hold_are_forgotten(monkeypatch):
    # many keys, each seen for a while: the kernel keeps only those it still holds something for
    monkeypatch.setattr(session_kernel, "COMPACT_AT", 16)
    rnd = random.Random(6)
    recs = [(i * 300 + rnd.randrange(600), f"user-{i // 5 + rnd.randrange(3)}") for i in range(2000)]
    expected, expected_late = reference(recs, 1000, 300)
    for batch_size in (1, 7, 65536):
        run = Run(monkeypatch, 1000, 300, native=True).feed(recs, batch_size)
        assert run.op.native is not None
        if batch_size < 65536:
            assert run.op.native.keys_held() <= 64  # of about 400 keys seen
        run.end()
        assert run.sessions() == expected
        assert run.late_records() == expected_late


def test_a_key_is_not_forgotten_while_a_record_can_reach_its_emitted_session(monkeypatch):
    # as in the checkpoint case: at W = 2500 a record at 1500 still reaches a's emitted session [500]
    monkeypatch.setattr(session_kernel, "COMPACT_AT", 2)
    run = Run(monkeypatch, 1000, 0, native=True).feed([(500, "a"), (2500, "b")], 7)
    run.feed([(2500, "c"), (2500, "d"), (2500, "e")], 7)  # enough keys that the next batch compacts
    run.feed([(1500, "a")], 7).end()
    assert run.late_records() == [(1500, "a")]
