"""bench/latency.py: the due times and the output checks against a brute-force reference (the checks must
be able to fail), and a smoke run on each runtime (slow: processes, and a broker for Kafka)."""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import polars as pl
import pytest

import latency
from latency import DELAY_MS, THRESHOLD, WINDOW_MS, check_filter, check_w1, first_passing

BIG = np.iinfo(np.int64).max


def produced_frame(n: int = 3000, partitions: int = 2, seed: int = 1) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        sent = 1_000_000_000 + i * 1000  # one record a millisecond
        u = rng.randrange(40)
        rows.append({"seq": i, "user_id": f"u{u:05d}", "partition": u % partitions,
                     "timestamp": sent // 1000 - rng.randint(0, DELAY_MS), "value": round(rng.uniform(0, 1000), 3),
                     "sent_us": sent})
    rows[7]["value"] = THRESHOLD  # passes: the filter is value >= 800
    # each partition ends on a record whose watermark is exactly a window end: that window is closed
    top = (max(r["timestamp"] for r in rows) // WINDOW_MS + 1) * WINDOW_MS
    for p in range(partitions):
        i = len(rows)
        rows.append({"seq": i, "user_id": f"u{p:05d}", "partition": p, "timestamp": top + DELAY_MS, "value": 1.0,
                     "sent_us": 1_000_000_000 + i * 1000})
    return pl.DataFrame(rows)


def test_due_time_is_the_first_record_at_or_past_window_end_plus_delay() -> None:
    produced = pl.DataFrame({"seq": [0, 1, 2, 3, 4, 5], "partition": [0, 0, 0, 0, 1, 1],
                             "timestamp": [100, 1150, 1199, 1200, 1250, 1100], "sent_us": [10, 20, 30, 40, 50, 60]})
    ends = np.array([1000, 1050, 5000])
    assert first_passing(produced, ends, [0]).tolist() == [40, BIG, BIG]  # W = 1200 - 200 = 1000 >= end 1000
    assert first_passing(produced, ends, [1]).tolist() == [50, 50, BIG]  # W = 1250 - 200 = 1050: both close
    assert first_passing(produced, ends, [0, 1]).tolist() == [50, BIG, BIG]  # the latest over the partitions


def as_filter_output(rows: pl.DataFrame) -> pl.DataFrame:
    return rows.select("seq", "timestamp", "user_id", pl.struct("value").alias("metrics"), "sent_us",
                       visible_us=pl.col("sent_us") + 5000)


def test_filter_check_accepts_the_right_output_and_names_each_kind_of_wrong_one() -> None:
    produced = produced_frame()
    passing = produced.filter(pl.col("value") >= THRESHOLD)
    assert passing["seq"].to_list().count(7) == 1
    cutoff = int(passing.filter(pl.col("seq") > 2000)["sent_us"][0])  # a passing record's produce time
    good = as_filter_output(passing)
    problems, timed = check_filter(produced, good, cutoff)
    assert problems == [] and timed.height == passing.height > 400
    assert (timed["visible_us"] - timed["due_us"]).to_list() == [5000] * timed.height

    early = passing.filter(pl.col("sent_us") < cutoff)
    late = passing.filter(pl.col("sent_us") >= cutoff)
    assert check_filter(produced, as_filter_output(passing.filter(pl.col("seq") != early["seq"][3])), cutoff)[0] == [
        f"1 of {early.height} passing records produced before the tail not visible"]
    assert late["sent_us"][0] == cutoff  # the first not required: produced at the cutoff, in the tail
    assert check_filter(produced, as_filter_output(passing.filter(pl.col("seq") != late["seq"][0])), cutoff)[0] == []
    assert check_filter(produced, as_filter_output(passing.filter(pl.col("seq") != 7)), cutoff)[0] == [
        f"1 of {early.height} passing records produced before the tail not visible"]
    assert check_filter(produced, pl.concat([good, good.head(2)]), cutoff)[0] == ["2 records delivered twice"]
    rejected = produced.filter(pl.col("value") < THRESHOLD).head(1)
    assert "rejects" in check_filter(produced, pl.concat([good, as_filter_output(rejected)]), cutoff)[0][0]
    changed = good.with_columns(pl.when(pl.col("seq") == early["seq"][0]).then(pl.col("sent_us") + 1)
                                .otherwise(pl.col("sent_us")).alias("sent_us"))
    assert check_filter(produced, changed, cutoff)[0] == ["1 records with a different sent_us"]


def brute_w1(produced: pl.DataFrame, runtime: str) -> list[dict]:  # type: ignore[type-arg]
    """Windows the final watermark closed, with their aggregates and due times, record by record."""
    rows = produced.sort("seq").to_dicts()
    maxts: dict[int, int] = defaultdict(lambda: -(2**62))
    agg: dict[tuple[str, int], list] = {}  # type: ignore[type-arg]
    part_of = {}
    for r in rows:
        maxts[r["partition"]] = max(maxts[r["partition"]], r["timestamp"])
        k = (r["user_id"], r["timestamp"] // WINDOW_MS * WINDOW_MS)
        part_of[k] = r["partition"]
        a = agg.setdefault(k, [0, 0.0, float("inf"), float("-inf")])
        a[0] += 1
        a[1] += r["value"]
        a[2] = min(a[2], r["value"])
        a[3] = max(a[3], r["value"])
    out = []
    for (user, start), (count, total, lo, hi) in agg.items():
        p = part_of[(user, start)]
        end = start + WINDOW_MS
        parts = [p] if runtime == "kafka" else sorted(maxts)
        if any(end > maxts[q] - DELAY_MS for q in parts):
            continue
        due = max(next(r["sent_us"] for r in rows if r["partition"] == q and r["timestamp"] >= end + DELAY_MS)
                  for q in parts)
        out.append({"user_id": user, "window_start": start, "window_end": end, "count": count, "sum": total,
                    "min": lo, "max": hi, "visible_us": due + 7000})
    return out


@pytest.mark.parametrize("runtime", ["kafka", "log"])
def test_w1_check_against_a_record_by_record_reference(runtime: str) -> None:
    produced = produced_frame()
    windows = brute_w1(produced, runtime)
    got = pl.DataFrame(windows)
    cutoff = int(produced["sent_us"][-1]) + 1  # every closed window is due before it
    problems, timed = check_w1(produced, got, runtime, 2, cutoff)
    assert problems == [] and timed.height == len(windows) > 50
    top = int(produced["timestamp"].max()) - DELAY_MS
    assert got.filter(pl.col("window_end") == top).height > 5  # closed by a watermark exactly at their end
    assert (timed["visible_us"] - timed["due_us"]).to_list() == [7000] * timed.height

    first = got.sort("visible_us").head(1)
    assert check_w1(produced, got.filter(pl.col("visible_us") != first["visible_us"][0]), runtime, 2, cutoff)[0][0] \
        .endswith("windows due before the tail not visible")
    assert check_w1(produced, pl.concat([got, got.head(1)]), runtime, 2, cutoff)[0] == ["1 windows delivered twice"]
    bumped = got.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("count") + 1).otherwise("count").alias("count"))
    assert check_w1(produced, bumped, runtime, 2, cutoff)[0] == ["1 windows with a different count"]
    last_start = int(produced["timestamp"].max()) // WINDOW_MS * WINDOW_MS  # not closed by the final watermark
    unclosed = got.head(1).with_columns(window_start=pl.lit(last_start, pl.Int64),
                                      window_end=pl.lit(last_start + WINDOW_MS, pl.Int64))
    assert "did not close" in check_w1(produced, pl.concat([got, unclosed]), runtime, 2, cutoff)[0][0]


@pytest.mark.slow
def test_smoke_run_on_the_embedded_log() -> None:
    assert latency.main(["--runtimes", "log", "--rates", "2000", "--intervals", "0.2", "--seconds", "2",
                         "--warmup", "1", "--tail", "5"]) == 0


def test_smoke_run_under_the_kafka_runtime(kafka_bootstrap: str) -> None:
    assert latency.main(["--bootstrap", kafka_bootstrap, "--runtimes", "kafka", "--rates", "2000", "--intervals", "0.2",
                         "--seconds", "2", "--warmup", "1", "--tail", "5"]) == 0
