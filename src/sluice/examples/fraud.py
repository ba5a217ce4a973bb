"""The fraud-detection job: transactions → three results, each to its own sink.

  (a) alert when a user's transaction under 10 is followed by one over 1000 within 10 minutes
      (paired with the latest such small transaction);
  (b) risk-score enrichment: the keyed process function of risk_score.py, with a 30-day cleanup timer;
  (c) 5-minute tumbling per-user statistics: count and total amount.

    sluice run examples/fraud.py     # the pipeline file that runs it over generated transactions
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import sluice as sl
from sluice.examples.risk_score import OUT_SCHEMA, RiskScorer

SCHEMA = {"tx_id": str, "user_id": str, "amount": float, "timestamp": int, "location": str}


def build(source: Any, out: Path) -> sl.Flow:
    flow = sl.Flow("fraud_detection")
    tx = flow.read("transactions", source, schema=SCHEMA, on_error="dead_letter")
    tx.dead_letters.write("bad_transactions", sl.JsonLinesSink(out / "dead_letters.jsonl"))
    timed = tx.event_time("timestamp", timedelta(seconds=5))

    small = timed.filter(sl.col("amount") < 10).select("user_id", small_tx_id="tx_id", small_amount="amount",
                                                       small_ts="timestamp")
    large = timed.filter(sl.col("amount") > 1000).select("user_id", "location", large_tx_id="tx_id",
                                                         large_amount="amount", large_ts="timestamp")
    alerts = large.asof_join("small_then_large", small, by="user_id", tolerance=timedelta(minutes=10),
                             right_order="small_tx_id")
    alerts.write("alerts", sl.JsonLinesSink(out / "alerts.jsonl"))
    alerts.late.write("late_alerts", sl.JsonLinesSink(out / "late_alerts.jsonl"))  # nothing disappears silently

    scored = timed.key_by("user_id").process("risk", RiskScorer(), schema=OUT_SCHEMA, side_outputs=["high_risk"])
    scored.write("risk_scores", sl.ParquetSink(out / "risk_scores"))
    scored.side("high_risk").write("high_risk", sl.JsonLinesSink(out / "high_risk.jsonl"))
    scored.late.write("late_scores", sl.JsonLinesSink(out / "late_scores.jsonl"))

    stats = timed.key_by("user_id").window("user_5min", sl.Tumbling(timedelta(minutes=5)),
                                           transactions=sl.agg.count(), total_amount=sl.agg.sum("amount"))
    stats.write("user_stats", sl.ParquetSink(out / "user_5min", partition_by="hour", time_column="window_start"))
    stats.late.write("late_stats", sl.JsonLinesSink(out / "late_stats.jsonl"))
    return flow
