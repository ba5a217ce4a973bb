"""Rebalance churn, CI-sized (bench/chaos/scale_out.py is the 64-partition, 16-worker soak): 16 partitions,
4–6 worker processes, for 20 s every 1–5 s a worker started, stopped with SIGTERM, killed -9 or frozen past
its session timeout (a zombie that then runs on) while the job runs; the committed output of both sinks (one keyed like the input, one through the repartition topic)
equals the DuckDB oracle, nothing lost, nothing twice, no worker failing, no hang."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from conftest import generate

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "chaos"))

import scale_out


@pytest.fixture(scope="module")
def events_churn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 150_000, tmp_path_factory.mktemp("ev") / "churn.jsonl", users=2000, span_s=1800)


@pytest.mark.slow
@pytest.mark.timeout(900)  # the harness's own hang bound (240 s after the hand-over) reports first, with stacks
@pytest.mark.parametrize("seed", [3])
def test_churn_output_equals_the_oracle(kafka_bootstrap: str, events_churn: Path, tmp_path: Path, seed: int) -> None:
    a = argparse.Namespace(partitions=16, workers=5, min_alive=4, max_alive=6, churn_s=20.0, every=(1.0, 5.0),
                           kinds=["add", "term", "kill", "pause"],
                           commit_interval=0.5, session_timeout_ms=6000, finish_timeout=240.0)
    run = scale_out.Run(a, kafka_bootstrap, events_churn, 150_000, seed, tmp_path)
    r = run.run()
    assert not r["hang"], "\n".join(r["hang_report"])
    print(r)
    changes = r["changes"]
    # the churn happened while the job ran (95 % of the input is produced during the churn, every 1-5 s)
    assert changes["add"] + changes["term"] + changes["kill"] + changes["pause"] >= 3, r
    assert r["worker_failures"] == [], r
    assert r["per_user"]["rows"] > 0 and r["per_type"]["rows"] > 0, r
    assert (r["lost"], r["duplicated"]) == (0, 0), r
