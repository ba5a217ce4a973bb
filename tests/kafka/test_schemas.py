"""Avro and JSON Schema in the Confluent wire format, with a real registry (Apicurio, its ccompat API)
and the embedded local registry: the same compatibility rules, checked when a producer starts."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oracle
import sluice as sl
from kafka_util import create_topic, read_committed
from sluice.formats.registry import avro_can_read, compatibility_problems

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from stream_events_avro import STREAM_EVENT, producer

V1 = {"type": "record", "name": "Order", "namespace": "shop", "fields": [{"name": "id", "type": "string"}]}
V2 = {**V1, "fields": [*V1["fields"], {"name": "qty", "type": "int", "default": 1}]}  # adds a field with a default
V3 = {**V1, "fields": [*V1["fields"], {"name": "qty", "type": "int"}]}  # the default is gone


def registries(url: str, tmp: Path) -> list[object]:
    return [sl.RegistryClient(url), sl.LocalRegistry(tmp / "registry.json")]


@pytest.mark.parametrize("kind", ["apicurio", "local"])
def test_compatibility_levels_same_rules_remote_and_local(kind: str, registry_url: str, tmp_path: Path) -> None:
    reg = sl.RegistryClient(registry_url) if kind == "apicurio" else sl.LocalRegistry(tmp_path / "r.json")
    subject = f"orders-{kind}-backward"
    reg.set_compatibility(subject, "BACKWARD")
    first = reg.register(subject, V1)
    assert reg.register(subject, V1) == first  # same schema, same id
    reg.register(subject, V2)
    reg.register(subject, V3)  # reads V2 data (V2 always writes qty): BACKWARD against the latest only
    with pytest.raises(sl.IncompatibleSchemaError):
        reg.register(subject, {**V1, "fields": [{"name": "id", "type": "long"}]})  # string → long

    subject = f"orders-{kind}-transitive"
    reg.set_compatibility(subject, "BACKWARD_TRANSITIVE")
    reg.register(subject, V1)
    reg.register(subject, V2)
    with pytest.raises(sl.IncompatibleSchemaError):
        reg.register(subject, V3)  # cannot read V1 data: qty missing and no default

    subject = f"orders-{kind}-forward"
    reg.set_compatibility(subject, "FORWARD")
    reg.register(subject, V2)
    reg.register(subject, V1)  # V2 readers fill qty from its default
    subject = f"orders-{kind}-full"
    reg.set_compatibility(subject, "FULL")
    reg.register(subject, V1)
    with pytest.raises(sl.IncompatibleSchemaError):
        reg.register(subject, V3)  # V3 cannot read V1 data


def test_rules_by_example() -> None:
    assert avro_can_read(V2, V1) == []
    assert avro_can_read(V3, V1)  # no default
    assert avro_can_read({**V1, "fields": [{"name": "id", "type": ["null", "string"]}]}, V1) == []  # into a union
    assert avro_can_read(V1, {**V1, "fields": [{"name": "id", "type": ["null", "string"]}]})  # null unreadable
    promoted = {**V1, "fields": [{"name": "n", "type": "long"}]}
    assert avro_can_read(promoted, {**V1, "fields": [{"name": "n", "type": "int"}]}) == []
    assert avro_can_read({**V1, "fields": [{"name": "n", "type": "int"}]}, promoted)
    e1 = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    assert avro_can_read({**e1, "symbols": ["A", "B", "C"]}, e1) == []
    assert avro_can_read(e1, {**e1, "symbols": ["A", "B", "C"]})
    assert compatibility_problems("NONE", '{"type":"int"}', ['{"type":"string"}']) == []


FIELD_TYPES = ["int", "long", "float", "double", "string", "bytes", ["null", "string"], ["null", "long"]]
SAMPLE = {"int": 7, "long": 2**40, "float": 1.5, "double": 2.25, "string": "x", "bytes": b"b"}
DEFAULTS = {**SAMPLE, "bytes": "b"}  # Avro writes a bytes default as a JSON string


@st.composite
def evolutions(draw: st.DrawFn) -> tuple[dict, dict]:
    names = draw(st.lists(st.sampled_from("abcdef"), min_size=1, max_size=5, unique=True))
    writer = {"type": "record", "name": "R", "fields": [{"name": n, "type": draw(st.sampled_from(FIELD_TYPES))}
                                                        for n in names]}
    reader = copy.deepcopy(writer)
    for f in reader["fields"]:
        if draw(st.booleans()):
            f["type"] = draw(st.sampled_from(FIELD_TYPES))
        if draw(st.booleans()):
            f["default"] = None if isinstance(f["type"], list) else DEFAULTS[f["type"]]
    keep = draw(st.lists(st.booleans(), min_size=len(reader["fields"]), max_size=len(reader["fields"])))
    reader["fields"] = [f for f, k in zip(reader["fields"], keep, strict=True) if k]
    extra = draw(st.sampled_from(["g", "h"]))
    if draw(st.booleans()):
        reader["fields"].append({"name": extra, "type": "int", **({"default": 0} if draw(st.booleans()) else {})})
    return reader, writer


def _value(t: object) -> object:
    return SAMPLE[t] if isinstance(t, str) else "v" if t == ["null", "string"] else 5


@settings(max_examples=300, deadline=None)
@given(evolutions())
def test_compatible_means_fastavro_reads_it(pair: tuple[dict, dict]) -> None:
    """Soundness and completeness against fastavro's schema resolution on real data."""
    import io

    import fastavro

    reader, writer = pair
    record = {f["name"]: _value(f["type"]) for f in writer["fields"]}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
    problems = avro_can_read(reader, writer)
    parsed = fastavro.parse_schema(reader)
    try:
        buf.seek(0)
        fastavro.schemaless_reader(buf, fastavro.parse_schema(writer), parsed)
        readable = True
    except Exception:
        readable = False
    if not problems:
        assert readable, (reader, writer)
    # a writer union [null, T] read as T is readable for this non-null value but not in general
    elif not any(isinstance(f["type"], list) for f in writer["fields"]):
        assert not readable, (reader, writer, problems)


def test_stream_event_avro_through_kafka_and_apicurio(kafka_bootstrap: str, registry_url: str,
                                                      events_medium: Path, tmp_path: Path) -> None:
    topic = "stream-events-avro"
    create_topic(kafka_bootstrap, topic, 3)
    registry = sl.RegistryClient(registry_url)
    sent = sl.run(producer(str(events_medium), kafka_bootstrap, topic, registry))
    assert sent.rows_read == 60_000
    msgs = read_committed(kafka_bootstrap, topic)
    value, headers = msgs[0]
    schema_id = int.from_bytes(value[1:5], "big")
    assert value[0] == 0 and registry.schema(schema_id)[0] == "AVRO"  # the Confluent wire format
    assert headers["producer"] == b"sluice-example" and "event_type" in headers
    # w1 over the Avro topic: the reader schema projects the map into the struct w1 reads
    reader = sl.Avro(STREAM_EVENT, registry=registry)
    out = tmp_path / "w1.jsonl"
    fields = {"timestamp": pl.Int64, "user_id": pl.String, "metrics": {"value": pl.Float64}}
    flow = sl.Flow("w1-avro")
    ev = flow.read("events", sl.KafkaSource(topic, kafka_bootstrap, format=reader), schema=fields)
    ev.event_time("timestamp", __import__("datetime").timedelta(seconds=5)).key_by("user_id").window(
        "per_user_minute", sl.Tumbling(__import__("datetime").timedelta(seconds=60)),
        count=sl.agg.count(), sum=sl.agg.sum("metrics.value"), min=sl.agg.min("metrics.value"),
        max=sl.agg.max("metrics.value")).write("results", sl.JsonLinesSink(out))
    sl.run(flow)
    oracle.assert_frames_match(pl.read_ndjson(out), oracle.w1(oracle.flat_events(str(events_medium))),
                               ["user_id", "window_start"])


def test_evolved_reader_and_incompatible_producer(kafka_bootstrap: str, registry_url: str, tmp_path: Path) -> None:
    topic = "orders-avro"
    create_topic(kafka_bootstrap, topic, 1)
    registry = sl.RegistryClient(registry_url)

    def send(schema: dict, rows: list[dict]) -> None:
        flow = sl.Flow("orders")
        flow.read("rows", sl.MemorySource(pl.DataFrame(rows))).write(
            "out", sl.KafkaSink(topic, kafka_bootstrap, format=sl.Avro(schema, registry=registry, compatibility="BACKWARD")))
        sl.run(flow)

    send(V1, [{"id": "a"}, {"id": "b"}])
    send(V2, [{"id": "c", "qty": 5}])
    with pytest.raises(sl.IncompatibleSchemaError, match="orders-avro-value"):
        send({**V1, "fields": [{"name": "id", "type": "long"}]}, [{"id": 1}])  # refused before sending
    assert len(read_committed(kafka_bootstrap, topic)) == 3
    got = sl.CollectSink()
    flow = sl.Flow("read")
    flow.read("orders", sl.KafkaSource(topic, kafka_bootstrap, format=sl.Avro(V2, registry=registry))).write("c", got)
    sl.run(flow)
    assert sorted(got.frame().select("id", "qty").rows()) == [("a", 1), ("b", 1), ("c", 5)]  # V1 data read as V2


def test_json_schema_validates_and_dead_letters(kafka_bootstrap: str, registry_url: str) -> None:
    topic = "orders-json-schema"
    create_topic(kafka_bootstrap, topic, 1)
    schema = {"title": "Order", "type": "object", "properties": {"id": {"type": "string"}, "qty": {"type": "integer"}},
              "required": ["id", "qty"]}
    fmt = sl.JsonSchema(schema, registry=sl.RegistryClient(registry_url), validate=True)
    flow = sl.Flow("orders")
    flow.read("rows", sl.MemorySource(pl.DataFrame({"id": ["a", "b"], "qty": [1, 2]}))).write(
        "out", sl.KafkaSink(topic, kafka_bootstrap, format=fmt))
    sl.run(flow)
    bad = sl.Flow("bad")
    bad.read("rows", sl.MemorySource(pl.DataFrame({"id": ["c"], "qty": ["many"]}))).write(
        "out", sl.KafkaSink(topic, kafka_bootstrap, format=fmt))
    with pytest.raises(sl.EncodeError, match=r"step 'out' failed at record 0 .* does not match (its|the) JSON Schema"):
        sl.run(bad)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka_bootstrap})
    p.produce(topic, value=read_committed(kafka_bootstrap, topic)[0][0][:5] + b'{"id": "x", "qty": "many"}')
    p.flush(10)
    good, dead = sl.CollectSink(), sl.CollectSink()
    flow = sl.Flow("read")
    s = flow.read("orders", sl.KafkaSource(topic, kafka_bootstrap, format=fmt), on_error="dead_letter")
    s.write("good", good)
    s.dead_letters.write("dead", dead)
    sl.run(flow)
    assert sorted(good.frame()["id"].to_list()) == ["a", "b"]
    d = dead.frame()
    assert d.height == 1 and "JSON Schema" in d["reason"][0] and d["position"][0] == f"kafka:{topic}/0 offset 2"


def test_local_registry_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_REGISTRY", str(tmp_path / "reg.json"))
    fmt = sl.Avro(V1)
    codec = fmt.bind("orders", reading=False)
    values = codec.encode_values(pl.DataFrame({"id": ["a"]}))
    assert values[0][:1] == b"\x00" and (tmp_path / "reg.json").exists()
    df, bad, _ = sl.Avro(V2).bind("orders", reading=True).decode_values(values, sl.Avro(V2).sluice_schema())
    assert not bad and df.rows() == [("a", 1)]
    with pytest.raises(sl.IncompatibleSchemaError):
        sl.Avro(V3).bind("orders", reading=False)



def test_subject_name_strategies(tmp_path: Path) -> None:
    reg = sl.LocalRegistry(tmp_path / "r.json")
    for strategy, subject in [("topic", "orders-value"), ("record", "shop.Order"), ("topic_record", "orders-shop.Order")]:
        sl.Avro(V1, registry=reg, strategy=strategy).bind("orders", reading=False)
        assert reg.versions(subject), strategy
    with pytest.raises(sl.SchemaRegistryError, match="strategy"):
        sl.Avro(V1, registry=reg, strategy="nope").bind("orders", reading=False)


def test_avro_on_the_embedded_log_with_the_local_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default: Avro records in the embedded log, schemas in the local registry, same rules."""
    monkeypatch.setenv("SLUICE_REGISTRY", str(tmp_path / "registry.json"))
    root = tmp_path / "log"

    def send(schema: dict, rows: list[dict]) -> None:
        flow = sl.Flow("orders")
        flow.read("rows", sl.MemorySource(rows)).write("out", sl.LogSink("orders", root, format=sl.Avro(schema)))
        sl.run(flow)

    send(V1, [{"id": "a"}, {"id": "b"}])
    send(V2, [{"id": "c", "qty": 5}])
    with pytest.raises(sl.IncompatibleSchemaError):
        send({**V1, "fields": [{"name": "id", "type": "long"}]}, [{"id": 1}])
    got = sl.CollectSink()
    flow = sl.Flow("read")
    flow.read("orders", sl.LogSource("orders", root, format=sl.Avro(V2))).write("c", got)
    sl.run(flow)
    assert sorted(got.frame().select("id", "qty").rows()) == [("a", 1), ("b", 1), ("c", 5)]
