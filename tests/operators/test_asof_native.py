"""The as-of join's native pass (native/src/asof.rs) against its Polars path and a brute-force reference:
out-of-order input, late records, ties on time and on the order column, the tolerance's inclusive end,
strict and not, inner and left, string and integer keys, batch sizes 1, 7 and 65536."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sluice as sl
from conftest import generate
from sluice import testing
from sluice.connectors.files import JsonLinesSink
from sluice.operators import asof
from test_resume_operators import CrashingSink
from workloads import fraud_alerts

pytestmark = pytest.mark.skipif(not asof.NATIVE, reason="the native module is not built (or SLUICE_NATIVE_ASOF=0)")

TOLERANCE = 10


def _run(events: list[tuple[int, Any, str, str]], *, strict: bool, how: str, order: bool, delay: int,
         batch_size: int, key_type: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Join the L rows of `events` (t, key, side, id; in arrival order) to the R rows; (joined, late) rows."""
    df = pl.DataFrame(events, schema={"t": pl.Int64, "k": key_type, "side": pl.String, "id": pl.String}, orient="row")
    flow = sl.Flow("asof_native")
    sides = flow.read("in", testing.rows(df)).event_time("t", timedelta(milliseconds=delay)).branch(
        "sides", L=pl.col("side") == "L")
    right = sides.other.select("t", "k", pl.col("id").alias("rid"))
    joined = sides.L.select("t", "k", "id").asof_join("j", right, by="k", tolerance=timedelta(milliseconds=TOLERANCE),
                                                      strict=strict, how=how, right_order="rid" if order else None)
    out, late = testing.collect(joined), testing.collect(joined.late)
    sl.run(flow, batch_size=batch_size)
    return out.frame().to_dicts(), late.frame().to_dicts()


def _reference(events: list[tuple[int, Any, str, str]], *, strict: bool, how: str, order: bool,
               delay: int) -> tuple[dict[str, str | None], set[str]]:
    """Brute force: each on-time L row's match among the on-time R rows of its key, and the late ids."""
    on_time: list[tuple[int, int, Any, str, str]] = []  # (t, arrival, key, side, id)
    late: set[str] = set()
    top = None
    for arrival, (t, k, side, ident) in enumerate(events):
        if top is not None and t < top - delay:
            late.add(ident)
        else:
            on_time.append((t, arrival, k, side, ident))
        top = t if top is None else max(top, t)
    matches: dict[str, str | None] = {}
    for t, _, k, side, ident in on_time:
        if side != "L":
            continue
        cands = [(rt, rid if order else "", ra, rid) for rt, ra, rk, rs, rid in on_time
                 if rs == "R" and rk == k and (rt < t if strict else rt <= t)]
        best = max(cands, default=None)
        match = best[3] if best is not None and t - best[0] <= TOLERANCE else None
        if match is not None or how == "left":
            matches[ident] = match
    return matches, late


def _events(draw: Any, key_type: Any) -> list[tuple[int, Any, str, str]]:
    n = draw(st.integers(1, 40))
    keys = ["a", "b"] if key_type == pl.String else [1, -3]
    out = []
    for i in range(n):
        t = draw(st.integers(0, 24))  # a narrow range: ties on time and rows at exactly the tolerance
        side = draw(st.sampled_from("LR"))
        # ids sort differently from arrival, so the order column and arrival order disagree
        out.append((t, draw(st.sampled_from(keys)), side, f"{side}{draw(st.integers(0, 99)):02d}-{i:02d}"))
    return out


@st.composite
def cases(draw: Any) -> dict[str, Any]:
    key_type = draw(st.sampled_from([pl.String, pl.Int32]))
    return {"events": _events(draw, key_type), "key_type": key_type, "strict": draw(st.booleans()),
            "how": draw(st.sampled_from(["inner", "left"])), "order": draw(st.booleans()),
            "delay": draw(st.sampled_from([0, 3, 100]))}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases(), batch_size=st.sampled_from([1, 2, 7, 65536]))
@example(case={"events": [(1, "a", "R", "R50-00"), (1, "a", "R", "R10-01"), (5, "a", "L", "L00-02")],  # order breaks a tie
               "key_type": pl.String, "strict": True, "how": "inner", "order": True, "delay": 0}, batch_size=65536)
@example(case={"events": [(1, "a", "L", "L1"), (5, "a", "L", "L2"), (5, "b", "R", "Rb"), (5, "a", "R", "R5")],  # L2 waits for R5
               "key_type": pl.String, "strict": False, "how": "left", "order": False, "delay": 0}, batch_size=3)
def test_native_equals_polars_and_brute_force(case: dict[str, Any], batch_size: int) -> None:
    kw = {k: case[k] for k in ("strict", "how", "order", "delay")}
    got, late = _run(case["events"], batch_size=batch_size, key_type=case["key_type"], **kw)
    asof.NATIVE = False
    try:
        polars_got, polars_late = _run(case["events"], batch_size=batch_size, key_type=case["key_type"], **kw)
    finally:
        asof.NATIVE = True
    assert got == polars_got  # the same rows in the same order, with the same columns and watermarks
    assert late == polars_late
    want, want_late = _reference(case["events"], **kw)
    assert {r["id"]: r.get("rid") for r in got} == want  # no right row yet: how="left" adds no right column
    assert len(got) == len(want)
    assert {r.get("id") or r.get("rid") for r in late} == want_late


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("transactions", 20_000, tmp_path_factory.mktemp("asof_native") / "tx.jsonl", users=60, span_s=3600)


@pytest.mark.parametrize("before", [True, False], ids=["native_then_polars", "polars_then_native"])
def test_w4_resumes_across_paths(before: bool, transactions: Path, tmp_path: Path) -> None:
    """A checkpoint of one path restores into the other (the state is the same frames): crash part-way
    with one, resume with the other, and the output is an uninterrupted run's."""
    reference = tmp_path / "reference.jsonl"
    sl.run(fraud_alerts(sl.JsonLinesSource(transactions), JsonLinesSink(reference)), batch_size=700)
    assert pl.read_ndjson(reference).height > 50
    out, ckpt = tmp_path / "out.jsonl", tmp_path / "ck"
    Path(str(out) + ".armed").write_text("6")
    asof.NATIVE = before
    try:
        with pytest.raises(sl.SinkError):
            sl.run(fraud_alerts(sl.JsonLinesSource(transactions), CrashingSink(out)), batch_size=700,
                   checkpoint_dir=ckpt, checkpoint_interval=0.0)
        assert not out.exists() or len(out.read_bytes()) < len(reference.read_bytes())  # it died part-way
        asof.NATIVE = not before
        sl.run(fraud_alerts(sl.JsonLinesSource(transactions), CrashingSink(out)), batch_size=700,
               checkpoint_dir=ckpt, checkpoint_interval=0.0)
    finally:
        asof.NATIVE = True
    assert pl.read_ndjson(out).equals(pl.read_ndjson(reference))
