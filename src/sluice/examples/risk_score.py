"""Risk-score enrichment: a keyed process function with state and a 30-day cleanup timer.

Per user it keeps a running profile (count, mean and variance of the amount, last location, last seen)
and per-minute transaction counts of the last hour, and scores each transaction from the amount's deviation,
the frequency, a change of location and an unusual hour. Profiles of users silent for 30 days are dropped.

    sluice run examples/risk_score.py     # the pipeline file that runs it over generated transactions
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import sluice as sl

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
THIRTY_DAYS_MS = 30 * 24 * HOUR_MS
HIGH_RISK = 90.0  # about 5% of the generated transactions


def score(profile: dict[str, Any] | None, recent: dict[int, int], tx: dict[str, Any], now: int) -> tuple[float, dict[str, Any], dict[int, int]]:
    """The scoring rule, pure: (score, new profile, new per-minute counts). Shared with the tests' reference.

    Frequency is counted per minute over the 60 minutes up to and including the current one: O(60) per
    transaction, however busy the user."""
    p = profile or {"count": 0, "mean": 0.0, "m2": 0.0, "last_location": None, "last_seen": now}
    n, amount = p["count"], tx["amount"]
    std = math.sqrt(p["m2"] / (n - 1)) if n > 1 else 0.0
    deviation = abs(amount - p["mean"]) / (std + 1.0) if n else 0.0
    minute = now // MINUTE_MS
    recent = {m: c for m, c in recent.items() if m > minute - 60}
    recent[minute] = recent.get(minute, 0) + 1
    last_hour = sum(recent.values())
    moved = p["last_location"] is not None and p["last_location"] != tx["location"]
    unusual_hour = (now // HOUR_MS) % 24 < 5
    risk = min(deviation, 5.0) * 10 + min(last_hour, 10) * 3 + (25 if moved else 0) + (15 if unusual_hour else 0)
    n += 1
    delta = amount - p["mean"]
    mean = p["mean"] + delta / n
    new = {"count": n, "mean": mean, "m2": p["m2"] + delta * (amount - mean), "last_location": tx["location"], "last_seen": now}
    return round(risk, 6), new, recent


class RiskScorer(sl.KeyedProcessFunction):
    def open(self, ctx: sl.StateContext) -> None:
        self.profile = ctx.value_state("profile")
        self.recent = ctx.value_state("minute_counts")
        self.cleanup_at = ctx.value_state("cleanup_at")

    def process(self, tx: dict[str, Any], ctx: sl.ProcessContext) -> Iterator[dict[str, Any]]:
        risk, profile, recent = score(self.profile.value(), self.recent.value() or {}, tx, ctx.timestamp)
        self.profile.update(profile)
        self.recent.update(recent)
        if self.cleanup_at.value() is None:  # one pending timer per user; it re-arms itself
            self.cleanup_at.update(ctx.timestamp + THIRTY_DAYS_MS)
            ctx.timers.event_time(ctx.timestamp + THIRTY_DAYS_MS)
        out = {"tx_id": tx["tx_id"], "user_id": ctx.key, "amount": tx["amount"], "risk_score": risk,
               "tx_last_hour": sum(recent.values()), "avg_amount": round(profile["mean"], 6)}
        if risk >= HIGH_RISK:
            ctx.output("high_risk", out)
        yield out

    def on_timer(self, timestamp: int, ctx: sl.ProcessContext) -> Iterator[dict[str, Any]]:
        profile = self.profile.value()
        if profile is not None and profile["last_seen"] + THIRTY_DAYS_MS > timestamp:
            due = profile["last_seen"] + THIRTY_DAYS_MS  # seen since: wait 30 days from then
            self.cleanup_at.update(due)
            ctx.timers.event_time(due)
            return
        self.profile.clear()
        self.recent.clear()
        self.cleanup_at.clear()
        yield {"tx_id": None, "user_id": ctx.key, "amount": None, "risk_score": None, "tx_last_hour": 0, "avg_amount": None}


TX_SCHEMA = {"tx_id": str, "user_id": str, "amount": float, "timestamp": int, "location": str}
OUT_SCHEMA = {"tx_id": sl.Optional(str), "user_id": str, "amount": sl.Optional(float), "risk_score": sl.Optional(float),
              "tx_last_hour": int, "avg_amount": sl.Optional(float)}


def build(source: Any, sink: Any, high_risk_sink: Any) -> sl.Flow:
    flow = sl.Flow("risk_scores")
    scored = (flow.read("transactions", source, schema=TX_SCHEMA)
              .event_time("timestamp", timedelta(seconds=5))
              .key_by("user_id")
              .process("risk", RiskScorer(), schema=OUT_SCHEMA, side_outputs=["high_risk"]))
    scored.write("scores", sink)
    scored.side("high_risk").write("alerts", high_risk_sink)
    return flow
