"""Risk-score enrichment: a keyed process function with state and a 30-day cleanup timer, over 100,000
generated transactions. The job itself (the scoring rule, `RiskScorer`, `build`) is
src/sluice/examples/risk_score.py, shipped in the package so that `sluice demo` has it wherever Sluice
is installed.

    sluice run examples/risk_score.py
"""

import sluice as sl
from sluice.examples.risk_score import HIGH_RISK, OUT_SCHEMA, TX_SCHEMA, RiskScorer, build, score

__all__ = ["HIGH_RISK", "OUT_SCHEMA", "TX_SCHEMA", "RiskScorer", "build", "flow", "score"]

flow = build(sl.GeneratorSource("transactions", n=100_000), sl.JsonLinesSink("out/risk-scores.jsonl"),
             sl.JsonLinesSink("out/risk-alerts.jsonl"))
