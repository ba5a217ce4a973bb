"""The plan is closed data: every step kind has a registered operator factory, its resolved key columns,
and a JSON form (`Plan.to_dict`, printed by `sluice explain --json`) that holds no secret."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
import sluice.core.plan as plan_module
from conftest import ROOT
from sluice.core.errors import PlanError
from sluice.core.plan import Plan, Read, Ref, Step, Write
from sluice.runtime.executor import Executor
from sluice.runtime.registry import factory_for, register

SECRETS = ("hunter2", "jaaspw", "regpw", "redispw", "optpw", "oauthsecret", "sinkpw", "dlqpw", "topicpw")

PIPELINE = '''
from datetime import timedelta

import polars as pl

import sluice as sl


class Counter(sl.KeyedProcessFunction):
    def open(self, ctx):
        self.count = ctx.value_state("count")

    def process(self, record, ctx):
        n = (self.count.value() or 0) + 1
        self.count.update(n)
        return [{"k": record["k"], "n": n}]


def big(event, matched):
    return event["v"] > 100


SECURE = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "PLAIN", "sasl.username": "alice",
          "sasl.password": "hunter2", "sasl.jaas.config": 'org.apache.kafka.common.security.plain.PlainLoginModule '
          'required username="alice" password="jaaspw";', "sasl.oauthbearer.client.secret": "oauthsecret"}
AVRO = sl.Avro({"type": "record", "name": "E", "fields": [{"name": "k", "type": "string"}]},
               registry=sl.RegistryClient("http://bob:regpw@localhost:8081"))

flow = sl.Flow("every_kind")
kafka = flow.read("kafka", sl.KafkaSource("events", "broker:9092", config=SECURE, format=AVRO, key="k"),
                  schema={"ts": int, "k": str, "v": float}, on_error="dead_letter")
other = flow.read("memory", sl.MemorySource(pl.DataFrame({"ts": [1], "k": ["a"], "v": [1.0]})))
for i, src in enumerate([sl.JsonLinesSource("in/*.jsonl"), sl.CsvSource("in.csv", separator=";"),
                         sl.ParquetSource(["a.parquet"]), sl.GeneratorSource(n=10),
                         sl.LogSource("t", root="log"), sl.Topic("topic", key="k", config={"sasl.password": "topicpw"})]):
    flow.read(f"src{i}", src, schema={"ts": int, "k": str, "v": float}).write(f"null{i}", sl.CollectSink())
kafka.dead_letters.write("dlq", sl.DeadLetterTopic("dlq", "broker:9092", config={"sasl.password": "dlqpw"}))
left = (kafka.filter(pl.col("v") > 0).select("ts", "k", "v").with_columns(w=pl.col("v") * 2)
        .map(lambda r: r, schema={"ts": int, "k": str, "v": float, "w": float})
        .flat_map(lambda r: [r], schema={"ts": int, "k": str, "v": float, "w": float})
        .event_time("ts", sl.BoundedOutOfOrderness(timedelta(seconds=5), idle_timeout=timedelta(seconds=30))))
right = other.event_time("ts", timedelta(seconds=1)).with_columns(w=pl.col("v"))
keyed = left.key_by("k")
keyed.window("tumbling", sl.Tumbling(timedelta(minutes=1)), n=sl.agg.count(),
             p=sl.agg.percentile("v", 0.99)).write("console", sl.ConsoleSink())
keyed.window("sliding", sl.Sliding(timedelta(minutes=2), timedelta(minutes=1)), s=sl.agg.sum("v")).write(
    "jsonl", sl.JsonLinesSink("out/jsonl"))
left.window("session", sl.Session(timedelta(seconds=30)), m=sl.agg.max("v")).write("csv", sl.CsvSink("out/csv"))
keyed.process("process", Counter(), schema={"k": str, "n": int}, side_outputs=["alerts"]).write(
    "parquet", sl.ParquetSink("out/pq", partition_by="date"))
left.asof_join("asof", right, by="k", tolerance=timedelta(seconds=10)).write(
    "kafka_out", sl.KafkaSink("out", "broker:9092", key="k", config={"sasl.password": "sinkpw"}, format=AVRO))
left.temporal_join("temporal", right, by="k", deleted=pl.col("v") < 0).write("log", sl.LogSink("t2", root="log"))
left.interval_join("interval", right, by="k", lower=timedelta(seconds=-5), upper=timedelta(seconds=5)).write(
    "topic_out", sl.Topic("t3", config={"sasl.password": "topicpw"}))
left.window_join("window_join", right, by="k", window=sl.Tumbling(timedelta(seconds=30))).write("c1", sl.CollectSink())
left.lookup_join("lookup", sl.RedisLookup("redis://:redispw@localhost:6379/0", fields=("name",),
                                          options={"password": "optpw"}), by="k").write("c2", sl.CollectSink())
keyed.detect_anomalies("anomalies", "v", window=timedelta(minutes=5)).write("c3", sl.CollectSink())
pattern = sl.Pattern.begin("small").where(pl.col("v") < 10).followed_by("large").where(big).within(timedelta(minutes=1))
keyed.match("match", pattern, skip="skip_to_next").write("c4", sl.CollectSink())
split = left.union(right.select("ts", "k", "v", "w")).branch("split", big=pl.col("v") > 100)
split.big.write("c5", sl.CollectSink())
split.other.write("c6", sl.CollectSink())
right.changelog("k", op=sl.changelog.from_debezium(pl.lit("u"))).write("c7", sl.CollectSink())
'''


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE)
    return path


def load(path: Path) -> sl.Flow:
    from sluice.cli.main import load_flow

    return load_flow(str(path), None)


def step_classes() -> list[type[Step]]:
    return [c for c in vars(plan_module).values()
            if isinstance(c, type) and issubclass(c, Step) and not c.__name__.startswith("_") and c is not Step]


def test_to_dict_is_json_with_every_kind_and_no_secret(pipeline: Path) -> None:
    plan = load(pipeline).plan()
    data = plan.to_dict()
    text = json.dumps(data)
    assert json.loads(text) == data
    assert data["format"] == "sluice.plan/1" and data["flow"] == "every_kind"
    assert {s["kind"] for s in data["steps"]} == {c.kind for c in step_classes()}
    for secret in SECRETS:
        assert secret not in text, secret
    steps = {s["name"]: s for s in data["steps"]}
    interval = steps["interval"]
    assert interval["inputs"] == [{"step": "event_time_1", "port": "out"}, {"step": "with_columns_2", "port": "out"}]
    assert interval["ports"] == ["out", "late"] and interval["stateful"] is True
    assert interval["key_columns"] == ["k"]
    assert interval["fingerprint"] == {"kind": "interval_join", "by": ["k"], "lower_ms": -5000, "upper_ms": 5000,
                                       "how": "inner"}
    assert interval["params"] == {"by": ["k"], "lower_ms": -5000, "upper_ms": 5000, "how": "inner", "suffix": "_right"}
    assert steps["filter_1"]["params"] == {"predicate": 'col("v") > 0'} and steps["filter_1"]["fingerprint"] is None
    assert steps["tumbling"]["key_columns"] == ["k"] and steps["session"]["key_columns"] == []  # over all records
    assert steps["tumbling"]["params"]["aggregates"]["p"] == {"type": "Percentile", "of": 'col("v")', "q": 0.99,
                                                              "relative_accuracy": 0.005}
    assert steps["match"]["params"]["pattern"]["text"].startswith("Pattern.begin('small')")
    source = steps["kafka"]["params"]["source"]
    assert source["type"] == "KafkaSource" and source["topic"] == "events" and source["key"] == "k"
    assert source["config"]["sasl.password"] == "***" and source["config"]["sasl.username"] == "alice"
    assert source["format"]["registry"]["type"] == "RegistryClient"
    assert steps["lookup"]["params"]["lookup"]["url"] == "redis://:***@localhost:6379/0"
    assert steps["process"]["params"]["fn"] == {"type": "__sluice__.Counter"}
    assert steps["memory"]["params"]["source"]["data"] == {"type": "DataFrame", "rows": 1,
                                                           "columns": {"ts": "Int64", "k": "String", "v": "Float64"}}


def test_explain_json_prints_the_plan(pipeline: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sluice.cli.main", "explain", "--json", str(pipeline)],
                       capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src")}, check=True)
    assert json.loads(r.stdout) == load(pipeline).plan().to_dict()
    for secret in SECRETS:
        assert secret not in r.stdout


def test_every_step_kind_has_an_operator_factory() -> None:
    for cls in step_classes():
        if cls in (Read, Write):
            continue  # opened by the runtime itself
        assert callable(factory_for(cls.__new__(cls))), cls


def test_unknown_step_kind_is_a_plan_error() -> None:
    @dataclasses.dataclass(frozen=True, eq=False)
    class Sample(Step):
        kind = "sample"

    flow = sl.Flow("f")
    flow.read("in", sl.MemorySource(pl.DataFrame({"x": [1]}))).write("out", sl.CollectSink())
    plan = flow.plan()
    odd = Plan("f", (plan.steps[0], Sample("sample", (Ref("in"),)), Write("out", (Ref("sample"),), sl.CollectSink())))
    with pytest.raises(PlanError, match=r"step 'sample': no operator is registered for step kind 'sample' \(Sample\)"):
        Executor(odd)


def test_a_new_step_kind_is_a_class_and_a_factory() -> None:
    from sluice.operators.stateless import PassThrough

    @dataclasses.dataclass(frozen=True, eq=False)
    class Tap(Step):
        kind = "tap"

    register(Tap)(lambda step, ctx: PassThrough(step.name))
    flow = sl.Flow("f")
    flow.read("in", sl.MemorySource(pl.DataFrame({"x": [1, 2]}))).write("out", sl.CollectSink())
    steps = flow.plan().steps
    sink = sl.CollectSink()
    plan = Plan("f", (steps[0], Tap("tap", (Ref("in"),)), Write("out", (Ref("tap"),), sink)))
    sl.run(plan)
    assert sink.frame()["x"].to_list() == [1, 2]


def test_key_columns_are_resolved_in_the_plan() -> None:
    flow = sl.Flow("f")
    s = flow.read("in", sl.MemorySource(pl.DataFrame({"ts": [1], "user": ["u"], "v": [1.0]}))).event_time("ts", timedelta(0))
    keyed = s.key_by(pl.col("user").str.to_uppercase().alias("u"), "v")
    keyed.window("w", sl.Tumbling(timedelta(seconds=1)), n=sl.agg.count()).write("o1", sl.CollectSink())
    s.window("all", sl.Tumbling(timedelta(seconds=1)), n=sl.agg.count()).write("o2", sl.CollectSink())
    s.interval_join("j", s, by=["user", "v"], lower=timedelta(0), upper=timedelta(0)).write("o3", sl.CollectSink())
    plan = flow.plan()
    assert plan.step("key_by_1").key_columns() == ("u", "v")
    assert plan.step("w").key_columns() == ("u", "v")
    assert plan.step("all").key_columns() == ()
    assert plan.step("j").key_columns() == ("user", "v")
    assert plan.step("event_time_1").key_columns() is None
