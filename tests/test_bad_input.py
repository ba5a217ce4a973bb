"""Bad input stops with an error naming the step, the position and the fix — or, with
on_error="dead_letter", goes aside with its reason while everything else carries on."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest

import sluice as sl
from sluice import testing

SCHEMA = {"ts": int, "user": str, "amount": float}
GOOD = [b'{"ts": 1000, "user": "a", "amount": 1.5}', b'{"ts": 2000, "user": "b", "amount": 2.5}']


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def flow_over(path: Path, on_error: str = "fail") -> tuple[sl.Flow, sl.CollectSink, sl.CollectSink]:
    flow = sl.Flow("bad")
    src = flow.read("orders", sl.JsonLinesSource(path), schema=SCHEMA, on_error=on_error)
    out = testing.collect(src)
    dead = testing.collect(src.dead_letters) if on_error == "dead_letter" else sl.CollectSink()
    return flow, out, dead


@pytest.mark.parametrize(("line", "reason"), [
    (b'{"ts": 3000, "user": "c", "amount": 1.0', "truncated JSON: the record ends (after 39 characters) with a "
                                                 "string, object or array still open"),
    (b'{"ts": 3000, "user": "c", "amo', "truncated JSON"),
    (b'{"ts": 3000, "user": "c", "amount": }', "malformed JSON: expecting value (at character 36: '}')"),
    (b'{"ts": "yesterday", "user": "c", "amount": 1.0}', "field 'ts': expected an integer (Int64), found the string "
                                                         '"yesterday"'),
    (b'{"ts": 3000, "amount": 1.0}', "required field 'user' is missing"),
    (b'[1, 2, 3]', "not a JSON object: the record is an array [1, 2, 3]"),
    # a number, an object or a boolean in a str field is not a string (the reader would make it one)
    (b'{"ts": 3000, "user": 900002, "amount": 1.0}', "field 'user': expected a string (str), found the number 900002"),
    (b'{"ts": 3000, "user": {"id": 7}, "amount": 1.0}', """field 'user': expected a string (str), found an object {"id": 7}"""),
    (b'{"ts": 3000, "user": true, "amount": 1.0}', "field 'user': expected a string (str), found the boolean true"),
    (b'{"ts": 3000, "user": [1], "amount": 1.0}', "field 'user': expected a string (str), found an array [1]"),
    (b'{"ts": true, "user": "c", "amount": 1.0}', "field 'ts': expected an integer (Int64), found the boolean true"),
    (b'{"ts": 3000, "user": "c", "amount": "1.0"}', 'field \'amount\': expected a number (Float64), found the string "1.0"'),
    (b'{"ts": 3000, "user": "c", "amount": NaN}', "NaN is not a JSON value (JSON has no NaN or Infinity)"),
    (b'{"ts": 3000, "user": "c", "amount": -Infinity}', "-Infinity is not a JSON value"),
    (b'{"ts": 3000, "user": "c\xff", "amount": 1.0}', "not valid UTF-8: byte 0xff at byte 23 of the record"),
    (b'\xef\xbb\xbf{"ts": 3000, "user": "c", "amount": 1.0}', "byte order mark (BOM); one is accepted only before the "
                                                         "first line of a file"),
    # half of an escaped UTF-16 pair: Polars' reader would make it "\x00"
    (b'{"ts": 3000, "user": "c\\ud83d", "amount": 1.0}', "field 'user': the string holds a lone UTF-16 surrogate "
                                                          "\\ud83d (half of a character"),
])
def test_bad_line_fails_with_step_position_and_fix(tmp_path: Path, line: bytes, reason: str) -> None:
    path = write_lines(tmp_path / "orders.jsonl", [GOOD[0], b"", GOOD[1], line, GOOD[0]])
    flow, _out, _dead = flow_over(path)
    with pytest.raises(sl.DecodeError) as err:
        sl.run(flow)
    msg = str(err.value)
    assert err.value.step == "orders"
    assert err.value.position == f"{path}:4"  # the blank line counts: positions are real line numbers
    assert reason in msg
    assert 'on_error="dead_letter"' in msg  # the fix


def test_strings_that_look_like_other_types_are_strings() -> None:
    # the fast path's second look (json_check.py) must not refuse real strings that read like numbers
    lines = [b'{"ts": %d, "user": "%s", "amount": 1.0}' % (i, s) for i, s in
             enumerate([b"900002", b"-1", b"true", b"false", b'{\\"a\\": 1}', b"[1]", b"1e5", b"null"])]
    from sluice.core.schema import resolve_schema
    from sluice.formats.json import Json

    decoded = Json().decode_block(b"\n".join(lines) + b"\n", resolve_schema(SCHEMA))
    assert decoded.bad == []
    assert decoded.rows["user"].to_list() == ["900002", "-1", "true", "false", '{"a": 1}', "[1]", "1e5", "null"]


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
@pytest.mark.parametrize("block_bytes", [64, 8 << 20])
def test_a_lone_surrogate_in_a_declared_string_is_refused_and_whole_pairs_are_kept(
        tmp_path: Path, batch_size: int, block_bytes: int) -> None:
    schema = {"ts": int, "user": str, "tags": sl.Optional(pl.List(pl.String)), "who": sl.Optional({"name": str})}
    lines = [
        b'{"ts": 1, "user": "a\\ud83d\\ude00b"}',  # a whole pair: one character
        b'{"ts": 2, "user": "a\\ud83d"}',  # half a pair, at the end of the string
        b'{"ts": 3, "user": "c\\\\ud83d"}',  # an escaped backslash, then text: not an escape
        b'{"ts": 4, "user": "d", "other": "\\ud83d"}',  # in a field nobody reads
        b'{"ts": 5, "user": "e", "tags": ["x", "\\uDBFFz"]}',  # in a list, upper case
        b'{"ts": 6, "user": "f", "who": {"name": "\\ud800\\u0041"}}',  # followed by an escape that is not a low half
        b'{"ts": 7, "user": "g", "who": {"name": "\\ud800 "}}',  # in a struct
        b'{"ts": 8, "user": "\\ud83d\\ude00\\ud83d"}',  # a pair, then half of one
        b'{"ts": 9, "user": "h\\\\\\ud83d"}',  # an escaped backslash, then half a pair
    ]
    path = write_lines(tmp_path / "orders.jsonl", lines)
    flow = sl.Flow("surrogates")
    src = flow.read("orders", sl.JsonLinesSource(path, block_bytes=block_bytes), schema=schema, on_error="dead_letter")
    out, dead = testing.collect(src), testing.collect(src.dead_letters)
    sl.run(flow, batch_size=batch_size)
    assert out.frame().select("ts", "user").rows() == [(1, "a\U0001F600b"), (3, "c\\ud83d"), (4, "d")]
    d = dead.frame()
    assert d["position"].to_list() == [f"{path}:{n}" for n in (2, 5, 6, 7, 8, 9)]
    assert [r.split(":")[0] for r in d["reason"].to_list()] == [
        "field 'user'", "field 'tags[1]'", "field 'who.name'", "field 'who.name'", "field 'user'", "field 'user'"]
    assert all("lone UTF-16 surrogate" in r for r in d["reason"].to_list())


def test_a_bom_before_the_first_line_and_deep_nesting_in_ignored_fields_are_accepted(tmp_path: Path) -> None:
    deep_array = b'{"ts": 3000, "user": "c", "amount": 1.0, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    deep_object = b'{"ts": 4000, "x": ' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b', "user": "d", "amount": 2.0}'
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join([GOOD[0], deep_array, GOOD[1], deep_object]) + b"\n")
    flow, out, dead = flow_over(path, "dead_letter")
    sl.run(flow)
    assert dead.frame().height == 0
    assert out.frame().select("ts", "user", "amount").rows() == [
        (1000, "a", 1.5), (3000, "c", 1.0), (2000, "b", 2.5), (4000, "d", 2.0)]
    # deep nesting that is not valid JSON is still refused, in words
    bad = b'{"ts": 5000, "user": "e", "amount": 1.0, "x": ' + b"[" * 5000 + b"]" * 4999 + b"}"
    path.write_bytes(b"\n".join([GOOD[0], bad]) + b"\n")
    flow, out, dead = flow_over(path, "dead_letter")
    sl.run(flow)
    assert out.frame().height == 1 and dead.frame()["position"].to_list() == [f"{path}:2"]
    assert "JSON" in dead.frame()["reason"][0] and "TapeError" not in dead.frame()["reason"][0]


def test_dead_letters_keep_everything_else(tmp_path: Path) -> None:
    lines = [GOOD[0], b'{"ts": 3000, "user": "c", "amount": }', GOOD[1], b'{"ts": 4000, "amount": 1.0}'] * 500
    path = write_lines(tmp_path / "orders.jsonl", lines)
    flow, out, dead = flow_over(path, "dead_letter")
    sl.run(flow, batch_size=333)
    assert out.frame().height == 1000
    assert out.frame()["user"].to_list() == ["a", "b"] * 500  # order kept
    d = dead.frame()
    assert d.height == 1000
    assert d.columns == ["step", "position", "reason", "raw"]
    assert d["position"][0] == f"{path}:2" and d["position"][1] == f"{path}:4"
    assert d["raw"][0] == '{"ts": 3000, "user": "c", "amount": }'
    assert "required field 'user'" in d["reason"][1]


def test_missing_timestamp_is_named(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    rows = [{"ts": 1000, "user": "a"}, {"ts": None, "user": "b"}]
    src = flow.read("in", testing.rows(pl.DataFrame(rows, schema={"ts": pl.Int64, "user": pl.String})))
    testing.collect(src.event_time("ts", timedelta(seconds=1), name="stamp"))
    with pytest.raises(sl.MissingTimestampError) as err:
        sl.run(flow)
    assert err.value.step == "stamp" and err.value.position == "memory[0] record 1"


def test_missing_timestamp_dead_letter(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    rows = pl.DataFrame({"ts": [1000, None, 3000], "user": ["a", "b", "c"]})
    timed = flow.read("in", testing.rows(rows)).event_time("ts", timedelta(seconds=1), name="stamp", on_error="dead_letter")
    out, dead = testing.collect(timed), testing.collect(timed.dead_letters)
    sl.run(flow, batch_size=2)
    assert out.frame()["user"].to_list() == ["a", "c"]
    assert dead.frame()["raw"].to_list() == ['{"ts":null,"user":"b"}']


def test_map_error_names_step_record_and_function(tmp_path: Path) -> None:
    def ratio(row: dict) -> dict:
        return {"user": row["user"], "r": 1 / row["amount"]}

    flow = sl.Flow("t")
    src = flow.read("in", testing.rows({"user": ["a", "b"], "amount": [2.0, 0.0]}))
    testing.collect(src.map(ratio, name="ratio"))
    with pytest.raises(sl.UserFunctionError) as err:
        sl.run(flow)
    assert err.value.step == "ratio" and err.value.position == "memory[0] record 1"
    assert "ZeroDivisionError" in str(err.value) and "test_bad_input.py" in str(err.value)


def test_map_dead_letter(tmp_path: Path) -> None:
    flow = sl.Flow("t")
    src = flow.read("in", testing.rows({"user": ["a", "b", "c"], "amount": [2.0, 0.0, 4.0]}))
    mapped = src.map(lambda r: {"user": r["user"], "r": 1 / r["amount"]}, name="ratio", on_error="dead_letter")
    out, dead = testing.collect(mapped), testing.collect(mapped.dead_letters)
    sl.run(flow)
    assert out.frame().to_dicts() == [{"user": "a", "r": 0.5}, {"user": "c", "r": 0.25}]
    assert dead.frame()["reason"].to_list() == ["ZeroDivisionError: float division by zero"]


def test_wrong_time_type_is_a_clear_plan_error() -> None:
    flow = sl.Flow("t")
    src = flow.read("in", testing.rows({"ts": ["2026-01-01"], "user": ["a"]}))
    testing.collect(src.event_time("ts", timedelta(seconds=1)))
    with pytest.raises(sl.PlanError, match=r"str\.to_datetime"):
        sl.run(flow)


# --- CSV gets the same checks as JSON ---------------------------------------------------------------

CSV_HEADER = b"ts,user,amount"
CSV_GOOD = [b"1000,a,1.5", b'2000,"b, with a comma",2.5']


def csv_flow(path: Path, on_error: str = "fail") -> tuple[sl.Flow, sl.CollectSink, sl.CollectSink]:
    flow = sl.Flow("bad")
    src = flow.read("orders", sl.CsvSource(path), schema=SCHEMA, on_error=on_error)
    out = testing.collect(src)
    dead = testing.collect(src.dead_letters) if on_error == "dead_letter" else sl.CollectSink()
    return flow, out, dead


@pytest.mark.parametrize(("line", "reason"), [
    (b"yesterday,c,1.0", "field 'ts': 'yesterday' is not an integer"),
    (b"3000,c,1.0.0", "field 'amount': '1.0.0' is not a number"),
    (b"3000,,1.0", "required field 'user' is missing or null"),
    (b"3000,c", "required field 'amount' is missing or null"),
    (b"3000,c,1.0,9", "4 fields where the header has 3"),
])
def test_bad_csv_row_fails_with_step_line_and_fix(tmp_path: Path, line: bytes, reason: str) -> None:
    path = write_lines(tmp_path / "orders.csv", [CSV_HEADER, CSV_GOOD[0], b"", CSV_GOOD[1], line, CSV_GOOD[0]])
    flow, _out, _dead = csv_flow(path)
    with pytest.raises(sl.DecodeError) as err:
        sl.run(flow)
    msg = str(err.value)
    assert err.value.step == "orders"
    assert err.value.position == f"{path}:5"  # the header and the blank line count: real line numbers
    assert reason in msg
    assert 'on_error="dead_letter"' in msg
    assert "offset" not in msg and "might want" not in msg  # no Polars hints leak


def test_csv_dead_letters_keep_everything_else(tmp_path: Path) -> None:
    lines = [CSV_GOOD[0], b"3000,c,lots", CSV_GOOD[1], b"4000,,1.0", b'5000,"multi\nline",5.0', b"6000,d,1,2"] * 300
    path = write_lines(tmp_path / "orders.csv", [CSV_HEADER, *lines])
    flow, out, dead = csv_flow(path, "dead_letter")
    sl.run(flow, batch_size=333)
    assert out.frame().to_dicts() == [
        {"ts": 1000, "user": "a", "amount": 1.5}, {"ts": 2000, "user": "b, with a comma", "amount": 2.5},
        {"ts": 5000, "user": "multi\nline", "amount": 5.0},
    ] * 300  # order kept, quoted newlines are data
    d = dead.frame()
    assert d.height == 900 and d.columns == ["step", "position", "reason", "raw"]
    # lines: 1 header; then per group of 7 lines (the quoted record spans two)
    assert d["position"][:3].to_list() == [f"{path}:3", f"{path}:5", f"{path}:8"]
    assert d["position"][3] == f"{path}:10"
    assert d["raw"][:3].to_list() == ["3000,c,lots", "4000,,1.0", "6000,d,1,2"]
    assert "field 'amount': 'lots' is not a number" in d["reason"][0]
    assert "required field 'user'" in d["reason"][1]
    assert "4 fields where the header has 3" in d["reason"][2]


def test_csv_without_a_declared_column_in_its_header_is_named(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "orders.csv", [b"ts,amount", b"1000,1.5"])
    flow, _out, _dead = csv_flow(path, "dead_letter")
    with pytest.raises(sl.DecodeError) as err:
        sl.run(flow)
    assert err.value.position == f"{path}:1" and "no column 'user'" in str(err.value)


class _Crash(Exception):
    pass


def test_csv_dead_letters_resume_exactly_once(tmp_path: Path) -> None:
    lines = [CSV_GOOD[0], b"3000,c,lots", CSV_GOOD[1], b"4000,,1.0"] * 50
    path = write_lines(tmp_path / "orders.csv", [CSV_HEADER, *lines])

    def run(out: Path, crash_at: int | None, ckpt: Path | None) -> None:
        seen = {"n": 0}

        def maybe_crash(row: dict) -> dict:
            seen["n"] += 1
            if crash_at is not None and seen["n"] == crash_at:
                raise _Crash
            return row

        flow = sl.Flow("bad")
        src = flow.read("orders", sl.CsvSource(path), schema=SCHEMA, on_error="dead_letter")
        src.map(maybe_crash, name="maybe_crash").write("out", sl.JsonLinesSink(out / "rows"))
        src.dead_letters.write("dead", sl.JsonLinesSink(out / "dead"))
        sl.run(flow, batch_size=7, checkpoint_dir=ckpt, checkpoint_interval=0)

    run(tmp_path / "once", None, None)
    with pytest.raises(sl.UserFunctionError, match="_Crash"):
        run(tmp_path / "twice", 60, tmp_path / "ckpt")
    run(tmp_path / "twice", None, tmp_path / "ckpt")
    for part in ("rows", "dead"):
        once = pl.read_ndjson(sorted((tmp_path / "once" / part).glob("*.jsonl")))
        twice = pl.read_ndjson(sorted((tmp_path / "twice" / part).glob("*.jsonl")))
        assert twice.equals(once), part
    assert once.height == 100


def test_csv_refuses_a_nested_declared_type_before_the_run(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "orders.csv", [b"ts,metrics", b"1000,x"])
    flow = sl.Flow("bad")
    testing.collect(flow.read("orders", sl.CsvSource(path), schema={"ts": int, "metrics": {"value": float}}))
    with pytest.raises(sl.PlanError, match=r"'metrics' is declared as Struct.*a CSV cell cannot hold"):
        sl.run(flow)


AVRO_SCHEMA = {"type": "record", "name": "Row", "fields": [{"name": "user", "type": "string"}, {"name": "n", "type": "int"}]}


@pytest.mark.parametrize("checkpointed", [False, True])
def test_a_record_the_avro_schema_rejects_names_the_sink_and_position(tmp_path: Path, checkpointed: bool) -> None:
    flow = sl.Flow("t")
    fmt = sl.Avro(AVRO_SCHEMA, registry=sl.LocalRegistry(tmp_path / "registry"))
    flow.read("in", testing.rows({"user": ["a", "b"], "n": ["1", "x"]})).write(
        "to_log", sl.LogSink("rows", root=tmp_path / "log", format=fmt))
    with pytest.raises(sl.EncodeError) as err:
        sl.run(flow, checkpoint_dir=tmp_path / "chk" if checkpointed else None)
    assert err.value.step == "to_log" and err.value.position == "memory[0] record 0"
    assert "an integer is required on field n" in str(err.value) and '"n":"1"' in str(err.value)
    assert ".with_columns" in err.value.fix


class _Typed(sl.KeyedProcessFunction):
    def process(self, record, ctx):
        yield {"user": record["user"], "v": record["n"] if record["n"] < 150 else "many"}


class _ReturnsText(sl.KeyedProcessFunction):
    def process(self, record, ctx):
        return record["user"]


class _Divides(sl.KeyedProcessFunction):
    def open(self, ctx):
        self.seen = ctx.value_state("seen")

    def process(self, record, ctx):
        ctx.timers.event_time(record["ts"] + 500)
        yield {"user": record["user"], "r": 10 // record["n"]}

    def on_timer(self, timestamp, ctx):
        if timestamp == 3500:
            raise ValueError("no timer at 3500")
        yield {"user": ctx.key, "r": -1}


def _process_flow(fn: sl.KeyedProcessFunction, rows: dict, on_error: str = "fail", schema: dict | None = None):
    flow = sl.Flow("t")
    src = flow.read("in", testing.rows(rows)).event_time("ts", timedelta(0)).key_by("user")
    proc = src.process("score", fn, on_error=on_error, schema=schema)
    return flow, testing.collect(proc), (testing.collect(proc.dead_letters) if on_error == "dead_letter" else None)


MANY = {"ts": list(range(1000, 201_000, 1000)), "user": ["a"] * 200, "n": list(range(200))}


def test_process_output_of_the_wrong_type_names_the_record_and_the_column() -> None:
    flow, _, _ = _process_flow(_Typed(), MANY)
    with pytest.raises(sl.UserFunctionError) as err:
        sl.run(flow)
    assert err.value.step == "score" and "offset 150" in err.value.position
    assert "v='many' (str), but earlier records have int" in str(err.value)
    assert "infer_schema_length" not in str(err.value) and 'on_error="dead_letter"' in err.value.fix
    flow, _, _ = _process_flow(_ReturnsText(), MANY)
    with pytest.raises(sl.UserFunctionError, match="process returned a str; return a list of dicts"):
        sl.run(flow)


def test_unknown_aggregate_column_names_the_step_and_the_user_columns() -> None:
    flow = sl.Flow("t")
    keyed = flow.read("in", testing.rows(MANY)).event_time("ts", timedelta(0)).key_by("user")
    testing.collect(keyed.window("w", sl.Tumbling(timedelta(seconds=10)), total=sl.agg.sum("amount")))
    with pytest.raises(sl.PlanError) as err:
        sl.run(flow)
    assert "window 'w': aggregate 'total'" in str(err.value) and "its columns are: ts, user, n" in str(err.value)
    assert "__sl_" not in str(err.value)


def test_expression_errors_do_not_show_internal_columns() -> None:
    flow = sl.Flow("t")
    testing.collect(flow.read("in", testing.rows(MANY)).filter(pl.col("amount") > 1))
    with pytest.raises(sl.StepError) as err:
        sl.run(flow)
    assert '"amount"' in str(err.value) and "__sl_" not in str(err.value)


def test_process_dead_letters_records_and_timers_that_fail() -> None:
    rows = {"ts": [1000, 2000, 3000, 4000], "user": ["a", "b", "a", "b"], "n": [5, 0, 2, 1]}
    flow, _, _ = _process_flow(_Divides(), rows)
    with pytest.raises(sl.UserFunctionError) as err:
        sl.run(flow)
    assert err.value.position == "offset 1 (key 'b', event time 2000)" and "ZeroDivisionError" in str(err.value)
    assert 'on_error="dead_letter"' in err.value.fix
    for batch_size in (1, 3, 100):
        flow, out, dead = _process_flow(_Divides(), rows, on_error="dead_letter")
        sl.run(flow, batch_size=batch_size)
        assert out.frame().to_dicts() == [
            {"user": "a", "r": 2}, {"user": "a", "r": -1}, {"user": "b", "r": -1},
            {"user": "a", "r": 5}, {"user": "b", "r": 10}, {"user": "b", "r": -1}], batch_size
        assert dead.frame().to_dicts() == [
            {"step": "score", "position": "offset 1 (key 'b', event time 2000)",
             "reason": "ZeroDivisionError: integer division or modulo by zero", "raw": '{"ts":2000,"user":"b","n":0}'},
            {"step": "score", "position": "the timer at 3500 of key 'a'",
             "reason": "ValueError: no timer at 3500", "raw": '{"key":"a","timer":3500}'}], batch_size


def test_process_dead_letters_output_that_does_not_fit_its_declared_schema() -> None:
    for batch_size in (7, 1000):
        flow, out, dead = _process_flow(_Typed(), MANY, on_error="dead_letter", schema={"user": str, "v": int})
        sl.run(flow, batch_size=batch_size)
        assert out.frame()["v"].to_list() == list(range(150)) and dead.frame().height == 50
        assert dead.frame()["reason"][0].startswith('its output record {"user":"a","v":"many"} does not fit the declared')
        assert dead.frame()["position"][0] == "offset 150 (key 'a', event time 151000)"
