"""The randomized kill -9 soak of bench/chaos/kill_soak.py, short: 24 runs across the whole job × sink
matrix (w1-w5, CEP, the risk-score process function; files, the embedded log, PostgreSQL, Redis, Delta
append and merge, Cassandra, Kafka), each killed -9 0-5 times at random moments and sometimes at a commit
failpoint, restarted until it finishes, its committed output compared with the job's oracle (DuckDB,
the brute-force CEP matcher, or an uninterrupted run for the process function). Fixed seed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # four servers and 24 killed-and-restarted runs: a few minutes


def test_randomized_kills_across_jobs_and_sinks_lose_and_duplicate_nothing(
        tmp_path: Path, postgres_dsn: str, redis_url: str, kafka_bootstrap: str, cassandra_contact: str) -> None:
    runs = tmp_path / "runs.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "chaos" / "kill_soak.py"), "--runs", "24", "--seed", "13",
                        "--events", "8000", "--json", str(runs), "--postgres-dsn", postgres_dsn, "--redis-url",
                        redis_url, "--kafka-bootstrap", kafka_bootstrap, "--cassandra-contact", cassandra_contact],
                       capture_output=True, text=True, timeout=1800)
    records = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    assert len(records) == 24, r.stdout[-3000:] + r.stderr[-3000:]
    assert "SKIPPED" not in r.stdout
    # the matrix is covered: every job and every sink took part
    assert {x["job"] for x in records} == {"w1", "w2", "w3", "w4", "w5", "cep", "risk"}
    assert {x["sink"] for x in records} == {"jsonl_dir", "csv_dir", "parquet_dir", "jsonl_file", "log", "postgres",
                                            "redis", "delta", "delta_merge", "cassandra", "kafka"}
    assert sum(x["kills"] + x["failpoint_kills"] for x in records) >= 24, "too few kills landed mid-run"
    for x in records:
        where = f"run {x['run']} {x['job']}:{x['sink']} ({x.get('error', '')[-1500:]})"
        assert x["rc"] == 0, where
        assert x["rows"] > 0, where
        assert (x["lost"], x["duplicated"], x["wrong"]) == (0, 0, 0), where
        assert (x["mirror_lost"], x["mirror_duplicated"], x["mirror_wrong"]) == (0, 0, 0), where
        assert x["leftover_staged"] == 0, where
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("CHAOS-ROW ") == 11
