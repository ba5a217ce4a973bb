"""The benchmark workloads as Sluice flows, shared by bench/run.py and the oracle tests."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl

import sluice as sl

DELAY = timedelta(seconds=5)
EVENT_FIELDS = {
    "w1": {"timestamp": pl.Int64, "user_id": pl.String, "metrics": {"value": pl.Float64}},
    "w2": {"timestamp": pl.Int64, "event_type": pl.String, "metrics": {"response_time": pl.Float64}},
    "w3": {"timestamp": pl.Int64, "user_id": pl.String},
}
WORKLOADS = (*EVENT_FIELDS, "w4", "w5", "cep", "risk")
TX_FIELDS = {"tx_id": pl.String, "user_id": pl.String, "amount": pl.Float64, "timestamp": pl.Int64}


def write(stream: sl.Stream, name: str, sink: object) -> None:
    """Write `stream` to `sink`, or to each of a tuple of sinks (the 2nd as `name_2`, …: one commit, several
    participants, as bench/chaos/kill_soak.py runs them)."""
    for i, s in enumerate(sink if isinstance(sink, tuple) else (sink,)):
        stream.write(name if i == 0 else f"{name}_{i + 1}", s)


def fraud_alerts(source: object, sink: object) -> sl.Flow:
    """w4: a transaction over 1000 after one under 10 of the same user at most 10 minutes earlier,
    paired with the latest such (ties: the larger tx_id). Filter first, in columns: ~13% take part."""
    flow = sl.Flow("w4")
    tx = flow.read("transactions", source, schema=TX_FIELDS).event_time("timestamp", DELAY)
    small = tx.filter(pl.col("amount") < 10).select("user_id", small_tx_id="tx_id", small_ts="timestamp")
    large = tx.filter(pl.col("amount") > 1000).select("user_id", large_tx_id="tx_id", large_ts="timestamp")
    alerts = large.asof_join("small_then_large", small, by="user_id", tolerance=timedelta(minutes=10),
                             right_order="small_tx_id")
    write(alerts.select("user_id", "small_tx_id", "large_tx_id", "small_ts", "large_ts"), "alerts", sink)
    return flow


def small_then_large(source: object, sink: object) -> sl.Flow:
    """cep: a transaction under 10 followed (relaxed contiguity) by one over 1000 of the same user within
    10 minutes, as an NFA: every small transaction starts a partial match, completed by the first large one."""
    flow = sl.Flow("cep")
    tx = flow.read("transactions", source, schema=TX_FIELDS).event_time("timestamp", DELAY)
    pattern = (sl.Pattern.begin("small").where(pl.col("amount") < 10)
               .followed_by("large").where(pl.col("amount") > 1000).within(timedelta(minutes=10)))
    matches = tx.key_by("user_id").match("small_then_large", pattern)
    write(matches.select("user_id", "match_start", "match_end", small_tx_id=pl.col("small").struct.field("tx_id"),
                         large_tx_id=pl.col("large").struct.field("tx_id")), "matches", sink)
    return flow


def build(workload: str, source: object, sink: object) -> sl.Flow:
    """The flow of one workload from `source` (JSON events) to `sink`."""
    flow = sl.Flow(workload)
    events = flow.read("events", source, schema=EVENT_FIELDS[workload]).event_time("timestamp", DELAY)
    if workload == "w1":
        out = events.key_by("user_id").window(
            "per_user_minute", sl.Tumbling(timedelta(seconds=60)),
            count=sl.agg.count(), sum=sl.agg.sum("metrics.value"),
            min=sl.agg.min("metrics.value"), max=sl.agg.max("metrics.value"),
        )
    elif workload == "w2":
        out = events.key_by("event_type").window(
            "per_type_sliding", sl.Sliding(timedelta(seconds=300), timedelta(seconds=60)),
            count=sl.agg.count(), avg_response_time=sl.agg.mean("metrics.response_time"),
            p99_response_time=sl.agg.percentile("metrics.response_time", 0.99, relative_accuracy=0.01),
        )
    elif workload == "w3":
        out = events.key_by("user_id").window(
            "sessions", sl.Session(timedelta(seconds=60)), count=sl.agg.count()
        ).select("user_id", "count", session_start="window_start", session_end="window_end")
    else:
        raise ValueError(f"unknown workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    write(out, "results", sink)
    return flow


def search_to_click(source: object, sink: object) -> sl.Flow:
    """w5 (interval join): every search paired with each click of the same user 0–10 s after it."""
    flow = sl.Flow("w5")
    ev = flow.read("events", source, schema={"event_id": pl.String, "event_type": pl.String, "timestamp": pl.Int64,
                                             "user_id": pl.String}).event_time("timestamp", DELAY)
    searches = ev.filter(pl.col("event_type") == "search").select("user_id", "timestamp", search_id="event_id")
    clicks = ev.filter(pl.col("event_type") == "click").select("user_id", click_id="event_id", click_ts="timestamp")
    pairs = searches.interval_join("search_to_click", clicks, by="user_id", lower=timedelta(0), upper=timedelta(seconds=10))
    write(pairs.select("user_id", "search_id", "click_id", "timestamp", "click_ts"), "pairs", sink)
    return flow


def file_flow(workload: str, input_path: str | Path, output_path: str | Path) -> sl.Flow:
    if workload == "risk":  # the process-function job of sluice/examples/risk_score.py, over transactions
        from sluice.examples import risk_score

        out = Path(output_path)
        alerts = out.with_name(out.stem + "-alerts" + out.suffix)
        return risk_score.build(sl.JsonLinesSource(input_path), sl.JsonLinesSink(out), sl.JsonLinesSink(alerts))
    if workload == "cep":
        return small_then_large(sl.JsonLinesSource(input_path), sl.JsonLinesSink(output_path))
    if workload == "w5":
        return search_to_click(sl.JsonLinesSource(input_path), sl.JsonLinesSink(output_path))
    if workload == "w4":
        return fraud_alerts(sl.JsonLinesSource(input_path), sl.JsonLinesSink(output_path))
    return build(workload, sl.JsonLinesSource(input_path), sl.JsonLinesSink(output_path))
