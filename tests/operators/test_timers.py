"""The process function's timer queue against a plain reference (a dict of live timers, the next one found
by sorting): the same timers pop in the same (time, registration) order through any mix of additions,
duplicates, deletions, pops and restores from a checkpoint's list, with the heap of the newest spilled into
sorted runs every few timers (so runs are made, merged and drained); and the queue is not walked by the GC."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.operators import timers
from sluice.operators.timers import TimerQueue

OPS = st.lists(st.tuples(st.sampled_from(["add", "add", "add", "delete", "pop", "restore"]),
                         st.sampled_from([-(2**62), -5, 0, 1, 2, 3, 7, 2**62, 2**63 - 1]),
                         st.sampled_from([b"", b"a", b"b", b"\x00\x01", b"key-c"])), max_size=120)


@pytest.mark.parametrize("fresh", [1, 2, 3, 5, 4096])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_timers_pop_in_time_then_registration_order(fresh: int, ops: list[tuple[str, int, bytes]],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timers, "_FRESH", fresh)
    q, ref, seq = TimerQueue(), {}, 0  # ref: (time, key) → seq
    for op, at, key in ops:
        if op == "add":
            added = q.add(at, seq + 1, key, b'"' + key.hex().encode() + b'"')
            assert added == ((at, key) not in ref)
            if added:
                seq += 1
                ref[(at, key)] = seq
        elif op == "delete":
            q.delete(at, key)
            ref.pop((at, key), None)
        elif op == "pop":
            if ref:
                (t, k), _ = min(ref.items(), key=lambda e: (e[0][0], e[1]))
                assert q.pop() == (t, k, b'"' + k.hex().encode() + b'"')
                del ref[(t, k)]
        else:  # a checkpoint: the live timers as a list, into a new queue
            q = TimerQueue.of(list(q))
        assert len(q) == len(ref)
        assert q.next_time() == (min(t for t, _ in ref) if ref else None)
        assert sorted((t, s, k) for t, s, k, _ in q) == sorted((t, s, k) for (t, k), s in ref.items())
    drained: list[Any] = []
    while q.next_time() is not None:
        drained.append(q.pop()[:2])
    assert drained == [(t, k) for (t, k), _ in sorted(ref.items(), key=lambda e: (e[0][0], e[1]))]


def test_a_time_outside_64_bits_is_refused() -> None:
    q = TimerQueue()
    with pytest.raises(ValueError, match="out of range"):
        q.add(2**63, 1, b"k", b'"k"')
    q.delete(2**63, b"k")  # nothing there: nothing happens
    assert len(q) == 0


def test_many_timers_are_not_walked_by_the_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timers, "_FRESH", 64)
    q = TimerQueue()
    for i in range(10_000):
        q.add(i % 97, i + 1, i.to_bytes(4, "big"), b"1")
    assert not gc.is_tracked(q._timer) and not gc.is_tracked(q._seq_of)
    assert len(q._fresh) < 64 and len(q._runs) < 12  # the rest in a few numpy runs
