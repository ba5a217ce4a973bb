"""Late and dead-lettered records never vanish silently: each step's count is in the run result and its
summary, a stream that nobody writes is marked as such, and the run warns about it when it starts."""

from __future__ import annotations

import logging
import random
from datetime import timedelta

import polars as pl
import pytest

import sluice as sl
from sluice import testing

DELAY = 2_000
SIZE = 5_000  # the tumbling window


def arrivals(seed: int, n: int, nulls: bool = False) -> pl.DataFrame:
    """Times 0–60 s in an order disturbed by up to 6 s (three times the watermark delay): some are late."""
    rng = random.Random(seed)
    times = sorted(range(0, 60_000, 60_000 // n), key=lambda t: t + rng.uniform(0, 6_000))
    ts: list[int | None] = list(times)
    if nulls:
        for i in range(3, n, 17):
            ts[i] = None
    return pl.DataFrame({"t": ts, "k": [rng.choice("ab") for _ in ts], "v": [float(rng.randint(0, 50)) for _ in ts]},
                        schema={"t": pl.Int64, "k": pl.String, "v": pl.Float64})


def late_flags(times: list[int | None]) -> list[bool]:
    """Late: behind the watermark (largest time so far − delay) when it arrived. Records without a time
    are dead letters and move nothing."""
    flags, high = [], None
    for t in times:
        if t is None:
            continue
        flags.append(high is not None and t < high - DELAY)
        high = t if high is None else max(high, t)
    return flags


def window_late(times: list[int | None]) -> int:
    """Late for its tumbling window: the window's end is at or below the watermark when it arrives."""
    n, high = 0, None
    for t in times:
        if t is None:
            continue
        n += high is not None and (t // SIZE + 1) * SIZE <= high - DELAY
        high = t if high is None else max(high, t)
    return n


def build(left: pl.DataFrame, right: pl.DataFrame, write_aside: bool) -> tuple[sl.Flow, dict[str, sl.CollectSink]]:
    flow = sl.Flow("aside")
    l_s = flow.read("l", testing.rows(left)).event_time("t", timedelta(milliseconds=DELAY), name="time_l",
                                                        on_error="dead_letter")
    r_s = flow.read("r", testing.rows(right)).event_time("t", timedelta(milliseconds=DELAY), name="time_r")
    joined = l_s.interval_join("j", r_s, by="k", lower=timedelta(seconds=-1), upper=timedelta(seconds=1))
    counts = l_s.key_by("k").window("w", sl.Tumbling(timedelta(milliseconds=SIZE)), n=sl.agg.count())
    scored = r_s.key_by("k").detect_anomalies("z", "v", window=timedelta(seconds=10))
    for s in (joined, counts, scored):
        testing.collect(s)
    aside = {}
    if write_aside:
        aside = {"j": testing.collect(joined.late), "w": testing.collect(counts.late),
                 "z": testing.collect(scored.late), "time_l": testing.collect(l_s.dead_letters)}
    return flow, aside


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_unwritten_late_and_dead_letters_are_counted_and_warned_about(batch_size: int,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    left, right = arrivals(1, 300, nulls=True), arrivals(2, 250)
    lt, rt = left["t"].to_list(), right["t"].to_list()
    want = {"j": sum(late_flags(lt)) + sum(late_flags(rt)), "w": window_late(lt), "z": sum(late_flags(rt))}
    nulls = left["t"].null_count()
    assert min(want.values()) > 5 and nulls > 5

    flow, aside = build(left, right, write_aside=True)  # the streams written: the independent counts are right
    with caplog.at_level(logging.WARNING, logger="sluice"):
        result = sl.run(flow, batch_size=batch_size)
    assert {k: s.frame().height for k, s in aside.items()} == {**want, "time_l": nulls}
    assert "not written anywhere" not in result.summary()
    assert not [r for r in caplog.records if "go nowhere" in r.getMessage()]

    caplog.clear()
    flow, _ = build(left, right, write_aside=False)
    with caplog.at_level(logging.WARNING, logger="sluice"):
        result = sl.run(flow, batch_size=batch_size)
    assert result.late == want
    assert result.dead_letters == {"time_l": nulls}
    assert result.rows("j", "late") == want["j"]
    lines = {line.split(":")[0].strip(): line for line in result.summary().splitlines()[1:]}
    for step, n in want.items():
        assert f"late {n:,} (not written anywhere)" in lines[step]
    assert f"dead_letters {nulls:,} (not written anywhere)" in lines["time_l"]

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("sluice")]
    said = {step: [r.getMessage() for r in warnings if f"step {step!r}" in r.getMessage()] for step in [*want, "time_l"]}
    for step in want:
        assert len(said[step]) == 1 and f"stream.late.write('{step}_late', sink)" in said[step][0]
    assert len(said["time_l"]) == 1 and "stream.dead_letters.write('time_l_dead_letters', sink)" in said["time_l"][0]
    assert not [r for r in warnings if "step 'time_r'" in r.getMessage()]  # on_error="fail": no dead letters
