"""The native JSON decoder (native/, json_native.py) against the Polars path it stands in front of.

The property: for random schemas of the supported types and random blocks of records (good ones, and poison:
wrong types, bad numbers, escapes, surrogates, control characters, duplicate and escaped keys, bad UTF-8, the
poison lines of test_poison_fuzz.py), whenever the native decoder returns columns, the Polars path (forced)
found no bad record and returns the same columns, types and float bits. Other tests show that it does answer
for ordinary input (the fast path is not vacuous) and that it falls back on each strictness case."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sluice.core.schema import Optional, Schema, resolve_schema
from sluice.formats import json_native
from sluice.formats.json import Json
from test_poison_fuzz import line as poison_line

INT_RANGE = {pl.Int64: (-(1 << 63), (1 << 63) - 1), pl.Int32: (-(1 << 31), (1 << 31) - 1),
             pl.UInt32: (0, (1 << 32) - 1), pl.UInt64: (0, (1 << 63) - 1)}
LEAVES = [pl.Int64, pl.Int32, pl.UInt32, pl.UInt64, pl.Float64, pl.String, pl.Boolean]
NAMES = ["id", "name", "v", "a", "b", "é", "k y"]


def current(blob: bytes, schema: Schema) -> Any:
    """What the Polars path decodes (the native one switched off)."""
    was, json_native.ENABLED = json_native.ENABLED, False
    try:
        return Json().decode_block(blob, schema)
    finally:
        json_native.ENABLED = was


def _exact(v: Any) -> Any:
    """A value with every float as its exact bits (so -0.0 differs from 0.0)."""
    if isinstance(v, float):
        return ("f", v.hex())
    if isinstance(v, dict):
        return {k: _exact(x) for k, x in v.items()}
    if isinstance(v, tuple | list):
        return [_exact(x) for x in v]
    return v


def assert_same(native: pl.DataFrame, blob: bytes, schema: Schema) -> None:
    want = current(blob, schema)
    assert not want.bad, f"native accepted a block the Polars path refuses: {want.bad[0]}"
    assert native.schema == want.rows.schema == schema.wire
    assert _exact(native.rows()) == _exact(want.rows.rows())


# --- random schemas and records ----------------------------------------------------------------------


def dtypes(depth: int = 0) -> st.SearchStrategy[Any]:
    leaf = st.sampled_from(LEAVES)
    if depth >= 2:
        return leaf
    return st.one_of(leaf, leaf, st.dictionaries(st.sampled_from(NAMES), dtypes(depth + 1), min_size=1, max_size=3))


schemas = st.dictionaries(st.sampled_from(NAMES), st.tuples(dtypes(), st.booleans()), min_size=1, max_size=4).map(
    lambda d: {n: Optional(t) if opt else t for n, (t, opt) in d.items()})

ws = st.sampled_from(["", "", "", " ", "\t", "\r", "  "])
BAD_WS = ["\x0c", "\x0b", "\n", "\xa0"]
json_any = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                        | st.text(max_size=6),
                        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                        max_leaves=6)
POISON_TOKENS = ['"7"', "1.5", "1e3", "1E3", "1.0", "-0.0", "true", "false", "{}", "[]", "[1]", "NaN", "Infinity",
                 "-Infinity", "1e400", "-1e400", "01", "-", "1.", ".5", "+1", "0x10", '"\\ud83d"', '"\\udc00x"',
                 '"a\x01"', '"\\q"', '"\\u12"', '"\udcff"', '"\udcc3"', '"\udced\udca0\udc80"', "9223372036854775808",
                 "-9223372036854775809", "4294967296", "-1", "2147483648", "-2147483649",
                 "123456789012345678901234567890", "nul", "tru", '"', "{", '{"x":}', "'a'"]


NEAR_MISSES: dict[Any, list[str]] = {  # per declared type, wrong values a lenient reader would take
    "int": ["1.5", "1e3", "1E3", "1.0", "-0.0", "0e0", '"7"', "true", "null"],
    pl.Float64: ['"1.0"', "true", "NaN", "Infinity", "-Infinity", "1e400", "123456789012345678901234567890"],
    pl.String: ["900002", "-1.5", "true", "false", "{}", "[1]", '"\\ud83d"', '"\\udc00"', '"a\x01"', '"\\u00"',
                '"\udcff"', '"a\udcc3"', '"\udced\udca0\udc80"'],  # the last three: invalid UTF-8 bytes
    pl.Boolean: ["1", "0", '"true"', "True", "null"],
    "struct": ["5", "[]", '"x"', "true", "[{}]"],
}


def number_text(draw: st.DrawFn) -> str:
    """Any JSON number's text: sign, digits, fraction, exponent (often many significant digits)."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return repr(draw(st.floats(allow_nan=False, allow_infinity=False)))
    if kind == 1:
        return str(draw(st.integers(-(10 ** 18), 10 ** 18)))
    sign = draw(st.sampled_from(["", "-"]))
    head = draw(st.sampled_from("0123456789"))
    if head != "0" and kind == 3:
        head += draw(st.text("0123456789", max_size=25))
    frac = draw(st.sampled_from(["", "." + draw(st.text("0123456789", min_size=1, max_size=25))]))
    exp = draw(st.sampled_from(["", "e", "E", "e+", "e-", "E-"]))
    exp = exp + str(draw(st.integers(0, 330))) if exp else ""
    return sign + head + frac + exp


def string_text(draw: st.DrawFn) -> str:
    s = draw(st.text(st.characters(exclude_categories=["Cs"]), max_size=8)
             | st.sampled_from(["123", "-4", "true", "{x", "[1]", "null", "1e5", "\x00", "\U0001f600", "é"]))
    text = json.dumps(s, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # other spellings of the same string
        text = text.replace("/", "\\/") if "/" in text else text[:-1] + "\\/\\u00e9\\ud83d\\ude00\\n\\t\\u0000\""
    return text


class Faults:
    """How many faults a block may still get: one at most, so that a fault the native decoder misses is not
    hidden behind another that it refuses."""

    def __init__(self, n: int) -> None:
        self.n = n

    def take(self, draw: st.DrawFn, odds: int) -> bool:
        if self.n and draw(st.integers(0, odds)) == 0:
            self.n -= 1
            return True
        return False


def value_text(draw: st.DrawFn, t: Any, poison: Faults, required: bool) -> str:
    if (not required and draw(st.integers(0, 9)) == 0) or (required and poison.take(draw, 9)):
        return "null"
    if poison.take(draw, 6):
        near = NEAR_MISSES["struct" if isinstance(t, dict) else "int" if t in INT_RANGE else t]
        if not isinstance(t, dict) and t in INT_RANGE:
            lo, hi = INT_RANGE[t]
            near = [*near, str(lo - 1), str(hi + 1)]
        return draw(st.sampled_from(near) | st.sampled_from(POISON_TOKENS) | st.builds(json.dumps, json_any))
    if isinstance(t, dict):
        return object_text(draw, t, poison, ())
    if t == pl.Float64:
        return number_text(draw) if draw(st.booleans()) else str(draw(st.integers(-(1 << 53), 1 << 53)))
    if t in INT_RANGE:
        lo, hi = INT_RANGE[t]
        return str(draw(st.integers(lo, hi) | st.sampled_from([lo, hi, 0, -0])))
    if t == pl.String:
        return string_text(draw)
    return draw(st.sampled_from(["true", "false"]))


def object_text(draw: st.DrawFn, spec: dict[str, Any], poison: Faults, required: tuple[str, ...]) -> str:
    """An object of the declared fields (`spec`, Optional marks kept), undeclared ones, and with `poison`, any
    of the faults."""
    items: list[tuple[str, str]] = []
    for name, t in spec.items():
        t = t.dtype if isinstance(t, Optional) else t
        if (name not in required and draw(st.integers(0, 7)) == 0) or (name in required and poison.take(draw, 7)):
            continue  # missing
        items.append((json.dumps(name, ensure_ascii=False), value_text(draw, t, poison, name in required)))
    for _ in range(draw(st.integers(0, 2))):  # undeclared fields, any JSON (or poison)
        extra = draw(st.sampled_from(POISON_TOKENS)) if poison.take(draw, 5) else draw(st.builds(json.dumps, json_any))
        items.append((json.dumps(draw(st.sampled_from(["x", "extra", "é"]))), extra))
    if items and poison.take(draw, 12):
        items.append(draw(st.sampled_from(items)))  # a duplicate key
    if items and poison.take(draw, 12):  # a key spelt with an escape
        k, v = items[0]
        items[0] = ('"\\u00' + f"{ord(k[1]):02x}" + k[2:] if len(k) > 2 and ord(k[1]) < 256 else k, v)
    items = draw(st.permutations(items))
    w = lambda: draw(st.sampled_from(BAD_WS)) if poison.take(draw, 40) else draw(ws)  # noqa: E731
    return "{" + w() + ",".join(f"{w()}{k}{w()}:{w()}{v}{w()}" for k, v in items) + w() + "}"


@st.composite
def blocks(draw: st.DrawFn) -> tuple[dict[str, Any], bytes]:
    schema = draw(schemas)
    required = resolve_schema(schema).required
    poison = Faults(draw(st.sampled_from([0, 1, 1, 1, 3])))  # with none, every record is good
    lines: list[bytes] = []
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.integers(0, 2)) if poison.take(draw, 8) else 2
        if kind == 0:
            lines.append(draw(st.sampled_from([b"", b" ", b"\t\r", b"\x0c", b"null", b"[]", b"1", b'"a"', b"{}"])))
        elif kind == 1:
            lines.append(draw(poison_line(i))[0])
        else:
            text = object_text(draw, schema, poison, required).encode("utf-8", "surrogateescape")  # \udcff: byte ff
            if poison.take(draw, 30):  # damage it
                cut = draw(st.integers(0, len(text)))
                text = text[:cut] + draw(st.sampled_from([b"\xff", b"\xc3", b"}", b",", b"\x00", b"\xef\xbb\xbf", b""]))
            lines.append(text)
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from([b"", b" ", b"\t\r"])))
    end = draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"]))
    return schema, end.join(lines) + draw(st.sampled_from([b"", end]))


@settings(max_examples=int(os.environ.get("NATIVE_EXAMPLES", "1000")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=blocks())
def test_whenever_native_answers_it_equals_the_polars_path(data: tuple[dict[str, Any], bytes]) -> None:
    spec, blob = data
    schema = resolve_schema(spec)
    assert json_native.supports(schema)
    native = json_native.decode(blob, schema)
    event("native answered" if native is not None else "native not sure")
    if native is not None:
        assert_same(native, blob, schema)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.sampled_from([{"timestamp": int, "user_id": str, "metrics": {"value": float}},
                             {"id": int, "name": str, "v": float}]),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["flip", "insert", "delete"]),
                                st.binary(min_size=1, max_size=3)), min_size=1, max_size=4))
def test_damaged_bytes_never_crash_it_and_never_change_an_answer(spec: dict[str, Any],
                                                                 edits: list[tuple[int, str, bytes]]) -> None:
    """Byte-level damage to good records (anywhere: keys, quotes, digits, escapes, UTF-8)."""
    good = (b'{"timestamp":1767225595275,"user_id":"u\\u00e9\xc3\xa9","metrics":{"value":42.398,"r":[1,{"a":"\\n"}]},'
            b'"id":7,"name":"n","v":-1.5e-3}\n') * 3
    schema = resolve_schema(spec)
    assert json_native.decode(good, schema) is not None
    blob = bytearray(good)
    for at, how, data in edits:
        at %= len(blob) + 1
        if how == "flip" and at < len(blob):
            blob[at] ^= data[0] or 1
        elif how == "insert":
            blob[at:at] = data
        else:
            del blob[at:at + len(data)]
    native = json_native.decode(bytes(blob), schema)
    if native is not None:
        assert_same(native, bytes(blob), schema)


# --- it answers for ordinary input ---------------------------------------------------------------------

W1 = {"timestamp": pl.Int64, "user_id": pl.String, "metrics": {"value": pl.Float64}}
EVENT = (b'{"event_id":"e000000000","event_type":"checkout","timestamp":1767225595275,"user_id":"u00002",'
         b'"properties":{"country":"GB"},"metrics":{"value":42.398,"response_time":14.217}}')

ACCEPTED: list[tuple[dict[str, Any], bytes]] = [
    (W1, EVENT + b"\n" + EVENT.replace(b"42.398", b"-1.5e-3") + b"\n"),
    (W1, b"\n  \n" + EVENT + b"\r\n\n" + EVENT + b"\n\n"),  # blank lines, CRLF
    (W1, EVENT),  # no final newline
    ({"a": Optional(int), "b": Optional(str), "c": Optional(bool), "d": Optional(float)},
     b'{}\n{"a":null,"b":null,"c":null,"d":null}\n{"a":-0,"b":"","c":true,"d":-0.0}\n{"d":7,"c":false}\n'),
    ({"s": str}, '{"s":"caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\ \\/ \\b\\f\\n\\r\\t \\u0000 é 😀"}\n'.encode()),
    ({"m": Optional({"a": Optional({"v": float}), "s": str})},
     b'{"m":{}}\n{"m":null}\n{}\n{"m":{"a":{}}}\n{"m":{"a":null,"s":"x"}}\n{"m":{"s":"y","a":{"v":1e5}}}\n'),
    ({"i": pl.Int32, "u": pl.UInt32, "w": pl.UInt64},
     b'{"i":-2147483648,"u":4294967295,"w":9223372036854775807}\n{"i":2147483647,"u":0,"w":0}\n'),
    ({"v": float}, b'{"v":123456789012345678}\n{"v":1e-400}\n{"v":2.2250738585072011e-308}\n{"v":0.1e1}\n'),
    ({"id": int}, b'{"id":1,"deep":[[[{"a":[1,{"b":null}]}]]],"x":{"y":"\\u00e9","z":[true,false,null,-1.5E+3]}}\n'),
    ({"id": int}, b'{ "id" : 1 ,\t"x":"\xc3\xa9" }\t\r\n'),
    ({"id": int}, b'{"id":1,"x":1,"x":2}\n'),  # duplicate undeclared keys: the Polars path accepts them too
    ({"é": int, "id": int}, b'{"\\u00e9":1,"\\u0069d":2,"\\u00e9x":3}\n'),  # keys spelt with escapes (json.dumps)
]


@pytest.mark.parametrize(("spec", "blob"), ACCEPTED)
def test_native_answers_for_ordinary_records(spec: dict[str, Any], blob: bytes) -> None:
    schema = resolve_schema(spec)
    native = json_native.decode(blob, schema)
    assert native is not None
    assert_same(native, blob, schema)


def test_native_answers_for_the_benchmark_events(events_small) -> None:
    blob = events_small.read_bytes()
    for spec in (W1, {"event_id": str, "event_type": str, "timestamp": int, "user_id": str,
                      "properties": {"country": str}, "metrics": {"value": float, "response_time": float}}):
        schema = resolve_schema(spec)
        native = json_native.decode(blob, schema)
        assert native is not None and native.height == 1500
        assert_same(native, blob, schema)


def test_native_answers_for_random_floats_with_polars_bits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Correctly rounded both: many-digit decimals, subnormals, near-halfway cases."""
    import random

    rnd = random.Random(7)
    texts = []
    for _ in range(20_000):
        digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 30))).lstrip("0") or "0"
        frac = "".join(rnd.choice("0123456789") for _ in range(rnd.randint(1, 30)))
        texts.append(f"{rnd.choice(['', '-'])}{digits}.{frac}e{rnd.randint(-340, 300)}")
        texts.append(repr(rnd.uniform(-1e6, 1e6)))
        texts.append(repr(struct_float(rnd.getrandbits(64))))
    blob = "".join(f'{{"v":{t}}}\n' for t in texts if t not in ("nan", "inf", "-inf")).encode()
    schema = resolve_schema({"v": float})
    native = json_native.decode(blob, schema)
    if native is None:  # some text overflowed: leave those out
        keep = [t for t in texts if math.isfinite(float(t))]
        blob = "".join(f'{{"v":{t}}}\n' for t in keep).encode()
        native = json_native.decode(blob, schema)
    assert native is not None
    assert_same(native, blob, schema)


def struct_float(bits: int) -> float:
    import struct

    v = struct.unpack("<d", bits.to_bytes(8, "little"))[0]
    return v if math.isfinite(v) else 1.5


# --- it falls back on every strictness case --------------------------------------------------------------

STRICT = {"id": int, "name": str, "v": float}
REFUSED = [
    b'{"id":"7","name":"a","v":1}', b'{"id":1.5,"name":"a","v":1}', b'{"id":true,"name":"a","v":1}',
    b'{"id":1e2,"name":"a","v":1}', b'{"id":1.0,"name":"a","v":1}', b'{"id":1,"name":900002,"v":1}',
    b'{"id":1,"name":{"id":3},"v":1}', b'{"id":1,"name":"a","v":"1.0"}', b'{"id":1,"name":"a","v":false}',
    b'{"id":1,"name":"a","v":NaN}', b'{"id":1,"name":"a","v":Infinity}', b'{"id":1,"name":"a","v":-Infinity}',
    b'{"id":1,"name":"a","v":1e400}', b'null', b'[1]', b'1', b'"x"', b'{"id":1,"name":"a",}',
    b'{"id":1,"name":"a","v":1,"v":2}', b'{"id":1,"name":"\\ud83d","v":1}', b'{"id":1,"name":"\\udc00","v":1}',
    b'\xef\xbb\xbf{"id":1,"name":"a","v":1}', b'{"id":1,"name":"\xff","v":1}', b'{"id":1,"name":"\xed\xa0\x80","v":1}',
    b'{"id":1,"name":"a","v":1}}', b'{"id":1,"name":"a","v":1} {"id":2}', b'{"id":1,"name":"a\x01","v":1}',
    b'{"id":1,"name":"a","v":1,"x":"\x1f"}', b'{"id":1,"name":"a","v":1,"x":[1,}', b'{"id":1,"name":"a","v":1,"x":01}',
    b'{"id":9223372036854775808,"name":"a","v":1}', b'{"id":1,"name":"a","v":1,"x":' + b"[" * 200 + b"]" * 200 + b"}",
    b'{"id":1,"name":"a"}', b'{"id":null,"name":"a","v":1}',
    b'{"id":1,"name":"a","v":1', b'{"id":1,\n"name":"a","v":1}', b'{"id":1,"name":"a","v":1}\x0c',
    b'{"id":1,"name":"a\\x","v":1}', b"{'id':1,\"name\":\"a\",\"v\":1}", b'{"id":-,"name":"a","v":1}',
]


@pytest.mark.parametrize("raw", REFUSED)
def test_native_falls_back_on_each_strictness_case(raw: bytes) -> None:
    blob = b'{"id":0,"name":"ok","v":0}\n' + raw + b"\n"
    schema = resolve_schema(STRICT)
    assert json_native.supports(schema)
    assert json_native.decode(blob, schema) is None


@pytest.mark.parametrize(("spec", "raw"), [
    ({"i": pl.Int32}, b'{"i":2147483648}'), ({"i": pl.Int32}, b'{"i":-2147483649}'), ({"u": pl.UInt32}, b'{"u":-1}'),
    ({"u": pl.UInt32}, b'{"u":4294967296}'), ({"u": pl.UInt64}, b'{"u":9223372036854775808}'),
    ({"b": bool}, b'{"b":1}'), ({"b": bool}, b'{"b":"true"}'), ({"m": {"v": float}}, b'{"m":5}'),
    ({"m": {"v": float}}, b'{"m":{"v":1,"v":2}}'), ({"m": {"v": float}}, b'{"m":[1]}'),
    ({"v": float}, b'{"v":123456789012345678901234567890}'),  # beyond i64 as an integer: not sure of Polars' rounding
])
def test_native_falls_back_on_each_type_boundary(spec: dict[str, Any], raw: bytes) -> None:
    assert json_native.decode(raw + b"\n", resolve_schema(spec)) is None


def test_schemas_it_does_not_handle_go_to_the_polars_path() -> None:
    from datetime import datetime

    import sluice as sl

    for spec in ({"a": pl.List(pl.Int64)}, {"a": sl.Map(str, float)}, {"a": sl.JsonValue}, {"a": datetime},
                 {"a": pl.Float32}, {"a": pl.Int16}, {"a": {"b": pl.List(pl.String)}}):
        assert not json_native.supports(resolve_schema(spec))


def test_the_native_decoder_is_built_and_sluice_works_without_it() -> None:
    """CI builds it (`make setup`); without the module, or with SLUICE_NATIVE_JSON=0, the Polars path decodes."""
    assert json_native._native is not None and json_native.ENABLED
    code = ("import sys; sys.modules['sluice_native'] = None\n"
            "from sluice.formats import json_native; from sluice.formats.json import Json\n"
            "from sluice.core.schema import resolve_schema\n"
            "assert not json_native.ENABLED\n"
            "d = Json().decode_block(b'{\"a\":1}\\n{\"a\":\"x\"}\\n', resolve_schema({'a': int}))\n"
            "print(d.rows['a'].to_list(), len(d.bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[1] 1"
    env = {**os.environ, "SLUICE_NATIVE_JSON": "0"}
    off = subprocess.run([sys.executable, "-c", "from sluice.formats import json_native; print(json_native.ENABLED)"],
                         capture_output=True, text=True, check=True, env=env).stdout
    assert off.strip() == "False"


@pytest.mark.parametrize("batch_size", [1, 7, 65536])
def test_a_flow_reads_through_the_native_path_with_the_same_output(events_small, batch_size: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The file source's blocks (small ones here) go through the native decoder, and the output is the Polars
    path's, row for row."""
    import sluice as sl
    from sluice import testing

    answers: list[bool] = []
    decode = json_native.decode

    def counted(blob: bytes, schema: Schema) -> pl.DataFrame | None:
        df = decode(blob, schema)
        answers.append(df is not None)
        return df

    def run() -> pl.DataFrame:
        flow = sl.Flow("native")
        src = flow.read("events", sl.JsonLinesSource(events_small, block_bytes=20_000), schema=W1)
        out = testing.collect(src)
        sl.run(flow, batch_size=batch_size)
        return out.frame()

    monkeypatch.setattr(json_native, "decode", counted)
    native = run()
    assert len(answers) > 5 and all(answers)
    monkeypatch.setattr(json_native, "ENABLED", False)
    polars = run()
    assert native.height == 1500 and _exact(native.rows()) == _exact(polars.rows())
