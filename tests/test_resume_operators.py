"""Every stateful operator survives a crash: the run dies mid-way (a sink raises after some batches,
with checkpoints after every batch), is started again with the same checkpoint directory, and its
output is byte for byte what an uninterrupted run writes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import sluice as sl
from conftest import generate
from sluice.connectors.files import JsonLinesSink
from workloads import fraud_alerts, search_to_click


class Crash(Exception):
    pass


class CrashingSink(JsonLinesSink):
    """A JSON Lines sink whose process 'dies' at its n-th write (only while armed)."""

    def open(self, ctx):  # type: ignore[no-untyped-def]
        writer = super().open(ctx)
        sink = self
        original = writer.write

        def write(df: pl.DataFrame) -> None:
            armed = Path(str(sink.path) + ".armed")
            if armed.exists():
                n = int(armed.read_text()) - 1
                armed.write_text(str(n))
                if n <= 0:
                    armed.unlink()
                    raise Crash
            original(df)

        writer.write = write  # type: ignore[method-assign]
        return writer


def pattern_flow(src: Any, sink: Any) -> sl.Flow:
    flow = sl.Flow("cep")
    p = (sl.Pattern.begin("small").where(pl.col("amount") < 10).followed_by("large").where(pl.col("amount") > 1000)
         .within(timedelta(minutes=10)))
    tx = flow.read("tx", src, schema={"tx_id": str, "user_id": str, "amount": float, "timestamp": int})
    m = tx.event_time("timestamp", timedelta(seconds=5)).key_by("user_id").match("m", p)
    m.select("user_id", "match_start", "match_end", small_id=pl.col("small").struct.field("tx_id"),
             large_id=pl.col("large").struct.field("tx_id")).write("out", sink)
    return flow


def much_larger(event: dict[str, Any], matched: dict[str, list[dict[str, Any]]]) -> bool:
    return bool(event["amount"] > 50 * matched["small"][0]["amount"])


def pattern_nfa_flow(src: Any, sink: Any) -> sl.Flow:
    """A loop, a condition on earlier events and a skip strategy: partial matches, held matches and the
    shared node chains all go through checkpoints."""
    flow = sl.Flow("cep_nfa")
    p = (sl.Pattern.begin("small").where(pl.col("amount") < 10)
         .followed_by("mid").where((pl.col("amount") > 100) & (pl.col("amount") < 1000)).one_or_more()
         .followed_by("large").where(pl.col("amount") > 1000).where(much_larger).within(timedelta(minutes=10)))
    tx = flow.read("tx", src, schema={"tx_id": str, "user_id": str, "amount": float, "timestamp": int})
    m = tx.event_time("timestamp", timedelta(seconds=5)).key_by("user_id").match("m", p, skip="skip_to_last:mid")
    m.select("user_id", "match_start", "match_end", small_id=pl.col("small").struct.field("tx_id"),
             mids=pl.col("mid").list.len(), large_id=pl.col("large").struct.field("tx_id")).write("out", sink)
    return flow


def anomaly_flow(src: Any, sink: Any) -> sl.Flow:
    flow = sl.Flow("z")
    tx = flow.read("tx", src, schema={"tx_id": str, "user_id": str, "amount": float, "timestamp": int})
    z = tx.event_time("timestamp", timedelta(seconds=5)).key_by("user_id").detect_anomalies(
        "z", "amount", window=timedelta(minutes=10), threshold=2.0)
    z.select("tx_id", "zscore", "is_anomaly").write("out", sink)
    return flow


def window_join_flow(src: Any, sink: Any) -> sl.Flow:
    flow = sl.Flow("wj")
    tx = flow.read("tx", src, schema={"tx_id": str, "user_id": str, "amount": float, "timestamp": int}).event_time(
        "timestamp", timedelta(seconds=5))
    small = tx.filter(pl.col("amount") < 10).select("user_id", small_id="tx_id")
    large = tx.filter(pl.col("amount") > 1000).select("user_id", large_id="tx_id")
    small.window_join("j", large, by="user_id", window=sl.Tumbling(timedelta(minutes=5))).select(
        "user_id", "small_id", "large_id", "window_start").write("out", sink)
    return flow


def temporal_flow(src: Any, sink: Any) -> sl.Flow:
    flow = sl.Flow("tj")
    tx = flow.read("tx", src, schema={"tx_id": str, "user_id": str, "amount": float, "timestamp": int,
                                      "location": str}).event_time("timestamp", timedelta(seconds=5))
    home = tx.filter(pl.col("amount") > 500).select("user_id", home="location")  # a changelog of sorts
    tx.temporal_join("home", home, by="user_id").select("tx_id", "home").write("out", sink)
    return flow


def window_updates_flow(src: Any, sink: Any) -> sl.Flow:
    """The Spark job: 5-minute windows every minute, count, mean and p99 per event type, as updates."""
    flow = sl.Flow("wu")
    ev = flow.read("ev", src, schema={"timestamp": int, "event_type": str, "metrics": {"response_time": float}})
    w = ev.event_time("timestamp", timedelta(seconds=5)).key_by("event_type").window(
        "w", sl.Sliding(timedelta(minutes=5), timedelta(minutes=1)), emit=sl.Emit.each_batch(),
        allowed_lateness=timedelta(seconds=30), n=sl.agg.count(), avg=sl.agg.mean("metrics.response_time"),
        p99=sl.agg.percentile("metrics.response_time", 0.99))
    w.write("out", sink)
    return flow


FLOWS = {"asof_w4": fraud_alerts, "pattern": pattern_flow, "pattern_nfa": pattern_nfa_flow, "anomaly": anomaly_flow,
         "window_join": window_join_flow, "temporal_join": temporal_flow}


@pytest.fixture(scope="module")
def transactions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("transactions", 20_000, tmp_path_factory.mktemp("resume") / "tx.jsonl", users=60, span_s=3600)


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("events", 20_000, tmp_path_factory.mktemp("resume") / "ev.jsonl", users=60, span_s=1800)


@pytest.mark.parametrize("name", [*FLOWS, "interval_w5", "window_updates"])
def test_operator_resumes_exactly(name: str, transactions: Path, events: Path, tmp_path: Path) -> None:
    build = {"interval_w5": search_to_click, "window_updates": window_updates_flow}.get(name) or FLOWS[name]
    src = events if name in ("interval_w5", "window_updates") else transactions
    reference = tmp_path / "reference.jsonl"
    sl.run(build(sl.JsonLinesSource(src), JsonLinesSink(reference)), batch_size=700)
    out = tmp_path / "out.jsonl"
    Path(str(out) + ".armed").write_text("6")
    ckpt = tmp_path / "ck"
    with pytest.raises(sl.SinkError) as err:  # a sink that raises stops the run with an error naming it
        sl.run(build(sl.JsonLinesSource(src), CrashingSink(out)), batch_size=700, checkpoint_dir=ckpt,
               checkpoint_interval=0.0)
    assert isinstance(err.value.__cause__, Crash)
    assert len(reference.read_bytes()) > 0
    assert not out.exists() or len(out.read_bytes()) < len(reference.read_bytes())  # it died part-way
    sl.run(build(sl.JsonLinesSource(src), CrashingSink(out)), batch_size=700, checkpoint_dir=ckpt, checkpoint_interval=0.0)
    if name == "window_updates":  # means: partials merge in another order after a restore (last bits only)
        assert_frame_equal(pl.read_ndjson(out), pl.read_ndjson(reference), check_exact=False, rel_tol=1e-12)
        return
    assert out.read_bytes() == reference.read_bytes()
