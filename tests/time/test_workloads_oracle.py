"""The benchmark workloads, streamed at several batch sizes, equal a DuckDB group-by of the same file."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

import oracle
import sluice as sl
from workloads import file_flow

KEYS = {"w1": ["user_id", "window_start"], "w2": ["event_type", "window_start"], "w3": ["user_id", "session_start"]}
APPROX = {"w2": {"p99_response_time": 0.01}}


def _run(workload: str, src: Path, out: Path, batch_size: int) -> pl.DataFrame:
    sl.run(file_flow(workload, src, out), batch_size=batch_size)
    return pl.read_ndjson(out)


@pytest.mark.parametrize("workload", ["w1", "w2", "w3"])
@pytest.mark.parametrize(("size", "batch_size"), [("small", 1), ("small", 7), ("medium", 1000), ("medium", 65536)])
def test_workload_equals_oracle(workload: str, size: str, batch_size: int, request: pytest.FixtureRequest,
                                tmp_path: Path) -> None:
    src = request.getfixturevalue(f"events_{size}")
    got = _run(workload, src, tmp_path / "out.jsonl", batch_size)
    expected = getattr(oracle, workload)(oracle.flat_events(str(src)))
    assert expected.height > 10
    oracle.assert_frames_match(got, expected, KEYS[workload], approx=APPROX.get(workload))


@pytest.mark.parametrize("workload", ["w1", "w2", "w3"])
def test_output_is_identical_across_batch_sizes(workload: str, events_small: Path, tmp_path: Path) -> None:
    runs = [_run(workload, events_small, tmp_path / f"{b}.jsonl", b) for b in (1, 7, 1000, 65536)]
    for other in runs[1:]:
        oracle.assert_same_output(other, runs[0])


def test_p99_within_documented_relative_error(events_medium: Path, tmp_path: Path) -> None:
    got = _run("w2", events_medium, tmp_path / "out.jsonl", 4096)
    exp = oracle.w2(oracle.flat_events(str(events_medium)))
    joined = got.join(exp, on=["event_type", "window_start"], suffix="_exact")
    rel = ((joined["p99_response_time"] - joined["p99_response_time_exact"]).abs() / joined["p99_response_time_exact"])
    assert rel.max() <= 0.01 + 1e-12  # w2 sizes its sketch to the 1% bound it must meet (relative_accuracy=0.01)
