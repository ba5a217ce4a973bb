"""Start-up: `import sluice` and a plain JSON Lines → JSON Lines window job load Polars and nothing heavier.

pyarrow and numpy cost about as much to import as Polars itself (docs/benchmarks.md, "Start-up"); they load
only where they are really used (Parquet, Avro, the embedded log, Kafka, session windows, chunked checkpoint
state). Sluice's own modules for other connectors, formats and runtimes are not loaded either: each one
imported costs start-up time (creating its dataclasses is most of it) in every process that runs a job.
Each case runs in a fresh interpreter and reports which of them it loaded; the job's output is checked
against a brute-force count so the run is known to have done its work.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

HEAVY = ("numpy", "pyarrow")
# Sluice's modules that a JSON Lines window job without checkpoints never uses
NOT_FOR_A_FILE_JOB = (
    "sluice.checkpoint.store", "sluice.formats.csv", "sluice.formats.avro_columnar", "sluice.formats.registry",
    "sluice.connectors.kafka", "sluice.connectors.log", "sluice.connectors.postgres", "sluice.connectors.redis",
    "sluice.connectors.cassandra", "sluice.connectors.delta", "sluice.connectors.lookup", "sluice.runtime.kafka",
    "sluice.cep", "sluice.state", "sluice.operators.process", "sluice.operators.match", "sluice.cli",
)

JOB = r"""
import json, sys
from datetime import timedelta
import polars as pl
import sluice as sl

src, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
flow = sl.Flow("startup")
ev = flow.read("events", sl.JsonLinesSource(src),
               schema={"ts": pl.Int64, "k": pl.String, "m": {"v": pl.Float64}}).event_time("ts", timedelta(seconds=5))
ev = ev.filter(pl.col("m").struct.field("v") >= 0)
tumbling = ev.key_by("k").window("per_key_minute", sl.Tumbling(timedelta(seconds=60)),
                                 n=sl.agg.count(), total=sl.agg.sum("m.v"), hi=sl.agg.max("m.v"))
tumbling.write("minutes", sl.JsonLinesSink(out))
tumbling.late.write("minutes_late", sl.JsonLinesSink(out + ".late.jsonl"))
sliding = ev.key_by("k").window("per_key_sliding", sl.Sliding(timedelta(seconds=120), timedelta(seconds=60)),
                                n=sl.agg.count(), p90=sl.agg.percentile("m.v", 0.9))
sliding.write("sliding", sl.JsonLinesSink(out + ".sliding.jsonl"))
sliding.late.write("sliding_late", sl.JsonLinesSink(out + ".sliding.late.jsonl"))
sl.run(flow, batch_size=batch)
print(json.dumps({m: m in sys.modules for m in sys.argv[4:]}))
"""


def _loaded(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, bool]:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    loaded: dict[str, bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_import_sluice_loads_neither_numpy_nor_pyarrow() -> None:
    code = f"import json, sys, sluice; print(json.dumps({{m: m in sys.modules for m in {(*HEAVY, *NOT_FOR_A_FILE_JOB)!r}}}))"
    loaded = _loaded(code)
    assert [m for m, yes in loaded.items() if yes] == []
    assert set(loaded) == {*HEAVY, *NOT_FOR_A_FILE_JOB}


def _events(path: Path, n: int, seed: int) -> list[tuple[int, str, float]]:
    """Out-of-order events over a few minutes: (ts, key, value); a few late ones, a few negative values."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = 1_700_000_000_000 + i * 400 + rng.randint(-4_000, 0)  # up to 4 s out of order: never late
        if i % 97 == 96:
            ts -= 30_000  # behind the 5 s delay: late for its minute
        rows.append((ts, f"u{rng.randint(0, 6)}", round(rng.uniform(-5, 100), 3)))
    path.write_text("".join(json.dumps({"ts": t, "k": k, "m": {"v": v}, "extra": [1, {"x": "y"}]}) + "\n"
                            for t, k, v in rows))
    return rows


def _reference(rows: list[tuple[int, str, float]]) -> Counter[tuple[str, int]]:
    """Count per (key, minute) of the records not late (watermark before each = running max − 5 s)."""
    counts: Counter[tuple[str, int]] = Counter()
    top = None
    for ts, k, v in rows:
        wm = None if top is None else top - 5_000
        top = ts if top is None else max(top, ts)
        if v < 0:
            continue
        start = ts - ts % 60_000
        if wm is not None and start + 60_000 <= wm:
            continue  # late: its window had ended
        counts[(k, start)] += 1
    return counts


@pytest.mark.parametrize("native_json", ["1", "0"])
@pytest.mark.parametrize("batch", [1, 7, 65536])
def test_a_window_job_loads_only_what_it_uses(tmp_path: Path, batch: int, native_json: str) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = _events(src, 600 if batch == 1 else 3000, seed=batch)
    env = {**os.environ, "SLUICE_NATIVE_JSON": native_json}
    loaded = _loaded(JOB, str(src), str(out), str(batch), *HEAVY, *NOT_FOR_A_FILE_JOB, env=env)
    assert [m for m, yes in loaded.items() if yes] == []
    assert set(loaded) == {*HEAVY, *NOT_FOR_A_FILE_JOB}
    got = Counter({(r["k"], r["window_start"]): r["n"] for r in map(json.loads, out.read_text().splitlines())})
    assert got == _reference(rows)
    late = [json.loads(r) for r in Path(f"{out}.late.jsonl").read_text().splitlines()]
    assert len(late) == sum(1 for t, _, v in rows if v >= 0) - sum(got.values())  # every record is counted once
    assert Path(f"{out}.sliding.jsonl").read_text()
