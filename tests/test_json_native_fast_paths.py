"""The native JSON decoder's fast paths (native/src/scan.rs, lib.rs) against Python's own parsing as the oracle.

Each fast path must answer exactly what the slow one would: floats bit for bit equal to a correctly rounded
parse (`float(text)`, as `str::parse::<f64>`) on both sides of Clinger's bounds (2^53, 19 digits, 10^±22);
integers read 8 digits at a time equal to `int(text)` at every length; the end of a string found 16 bytes at a
time wherever its quote, escape, control character or UTF-8 falls relative to 16/32-byte chunks and the block
end; predicted keys matched only when spelt exactly; validity kept only from a column's first null on."""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.core.schema import Optional, resolve_schema
from sluice.formats import json_native

pytestmark = pytest.mark.skipif(not json_native.ENABLED, reason="the native decoder is not built")

FLOAT = resolve_schema({"v": Optional(float)})
INT = resolve_schema({"v": Optional(int)})


def bits(v: float | None) -> str | None:
    return None if v is None else struct.pack("<d", v).hex()


def want_float(text: str) -> float | None:
    """What the decoder must answer for a number declared Float64 (None: refuse the block)."""
    if not any(c in text for c in ".eE"):
        v = int(text)  # an integer is read as an i64 and converted: -0 is 0.0
        return float(v) if -(1 << 63) <= v < (1 << 63) else None
    f = float(text)
    return f if math.isfinite(f) else None


def decode_column(texts: list[str], schema: Any, per_line: str = '{{"v":{}}}') -> list[Any] | None:
    blob = "\n".join(per_line.format(t) for t in texts).encode()
    df = json_native.decode(blob, schema)
    return None if df is None else df["v"].to_list()


EDGE_FLOATS = [
    "0.0", "-0.0", "0e0", "-0e-5", "0.1", "0.2", "0.3", "0.30000000000000004", "1.5", "-1.5e-3", "42.398",
    "9007199254740992.0", "9007199254740993.0", "9007199254740991.0", "9007199254740994.0", "9007199254740995.0",
    "900719925474099.2", "900719925474099.3", "900719925474099.5", "9007199254740993e0", "9007199254740993e-1",
    "9007199254740993e1", "1e22", "1e23", "3e22", "3e23", "1e-22", "1e-23", "3e-22", "7e-23", "123.456e20",
    "123.456e21", "123.456e-19", "8.0e22", "9.0e22", "9007199254740991e22", "9007199254740991e-22",
    "9007199254740993e22", "9007199254740993e-22", "1234567890123456789.0", "12345678901234567890.0",
    "1.234567890123456789", "1.2345678901234567890", "9999999999999999999.0", "9999999999999999999e-22",
    "18446744073709551615.0", "18446744073709551616.0", "0.0000000000000000001", "0.00000000000000000001",
    "5e-324", "4.9406564584124654e-324", "2.4703282292062327e-324", "2.4703282292062328e-324", "1e-400",
    "2.2250738585072011e-308", "2.2250738585072014e-308", "1.7976931348623157e308", "1.7976931348623158e308",
    "1e400", "-1e400", "1.7976931348623159e308", "1e+2", "1E-2", "1e0000000000000000000001", "1e-99999999999999",
    "0.5e-22", "12345678.12345678", "1234567812345678.5", "123456781234567812345678.5", "12345678e-8",
]
EDGE_INTS = [
    "0", "-0", "7", "-7", "12345678", "123456789", "1234567890123456", "12345678901234567", "99999999999999999",
    "999999999999999999", "-999999999999999999", "1000000000000000000", "9223372036854775807",
    "-9223372036854775808", "9223372036854775808", "-9223372036854775809", "18446744073709551615",
    "18446744073709551616", "99999999999999999999", "1767225595275", "9007199254740993", "-9007199254740993",
]


@pytest.mark.parametrize("text", EDGE_FLOATS + EDGE_INTS)
@pytest.mark.parametrize("where", ["alone", "middle", "end"])
def test_a_float_is_the_correctly_rounded_value(text: str, where: str) -> None:
    texts = {"alone": [text], "middle": ["1.5", text, "2.5"], "end": ["1.5", "2.5", text]}[where]
    want = [want_float(t) for t in texts]
    got = decode_column(texts, FLOAT)
    if None in want:
        assert got is None  # an overflow or out-of-range integer refuses the block
    else:
        assert got is not None and [bits(v) for v in got] == [bits(v) for v in want]


@pytest.mark.parametrize("text", EDGE_FLOATS)
def test_an_undeclared_float_is_refused_exactly_when_it_overflows(text: str) -> None:
    blob = f'{{"v":1,"x":{text}}}\n{{"x":[{text}],"v":2}}'.encode()
    got = json_native.decode(blob, INT)
    if math.isfinite(float(text)):
        assert got is not None and got["v"].to_list() == [1, 2]
    else:
        assert got is None


def random_decimal(rnd: random.Random) -> str:
    """Decimals around Clinger's bounds: 1 to 22 significant digits, exponents near ±22, mantissas near 2^53."""
    kind = rnd.randrange(4)
    if kind == 0:
        mant = str(rnd.randint(1, 10 ** rnd.randint(1, 22)))
    elif kind == 1:
        mant = str((1 << 53) + rnd.randint(-3, 3) * rnd.choice([1, 10, 100]))
    elif kind == 2:
        mant = str(rnd.getrandbits(64))
    else:
        mant = "0" * rnd.randint(0, 3) + str(rnd.randint(0, 99999))
    cut = rnd.randint(1, len(mant))
    text = mant[:cut] + ("." + mant[cut:] if cut < len(mant) else "")
    text = text.lstrip("0") or "0"
    if text.startswith("."):
        text = "0" + text
    if rnd.random() < 0.7:
        text += rnd.choice("eE") + rnd.choice(["", "+", "-"]) + str(rnd.randint(0, 45))
    elif "." not in text:
        text += ".0"
    return rnd.choice(["", "-"]) + text


@pytest.mark.parametrize("rows", [1, 7, 65536])
def test_random_decimals_near_the_fast_path_bounds_equal_a_correctly_rounded_parse(rows: int) -> None:
    rnd = random.Random(rows)
    texts = [random_decimal(rnd) for _ in range(max(rows, 20_000))]
    for at in range(0, len(texts), rows):
        chunk = texts[at:at + rows]
        got = decode_column(chunk, FLOAT)
        assert got is not None, chunk
        assert [bits(v) for v in got] == [bits(want_float(t)) for t in chunk], chunk


@settings(max_examples=1500, deadline=None)
@given(mant=st.integers(0, (1 << 64) - 1) | st.integers((1 << 53) - 5, (1 << 53) + 5), point=st.integers(0, 25),
       exp=st.one_of(st.none(), st.integers(-30, 30)), neg=st.booleans())
def test_any_decimal_equals_a_correctly_rounded_parse(mant: int, point: int, exp: int | None, neg: bool) -> None:
    digits = str(mant)
    point = min(point, len(digits) - 1)
    text = digits[:len(digits) - point] + ("." + digits[len(digits) - point:] if point else "")
    text = ("-" if neg else "") + text + (f"e{exp}" if exp is not None else "")
    if text.lstrip("-").startswith("0") and len(text.lstrip("-")) > 1 and text.lstrip("-")[1].isdigit():
        return  # a leading zero: not JSON
    want = want_float(text)
    got = decode_column([text], FLOAT)
    assert (got is None) == (want is None), text
    if got is not None:
        assert bits(got[0]) == bits(want), text


@pytest.mark.parametrize("text", EDGE_INTS + [str(10 ** n) for n in range(20)] + [str(10 ** n - 1) for n in range(1, 21)])
@pytest.mark.parametrize("tail", [",", " ", "}"])
def test_an_integer_is_its_exact_value_at_every_length(text: str, tail: str) -> None:
    line = '{{"v":{}' + (',"x":1}}' if tail == "," else " }}" if tail == " " else "}}")
    got = decode_column([text, "5"], INT, line)
    v = int(text)
    if -(1 << 63) <= v < (1 << 63):
        assert got == [v, 5]
    else:
        assert got is None


@pytest.mark.parametrize("bad", ["12345678x", "1234567:", "1234567/", "12345678.", "12345678e", "0123456789",
                                 "-", "--1", "1.2.3", "12345678 9"])
def test_a_malformed_number_refuses_the_block(bad: str) -> None:
    assert decode_column([bad], INT) is None
    assert decode_column([bad], FLOAT) is None


# --- strings: wherever the special byte falls ------------------------------------------------------------

SPECIALS = ['\\"', "\\\\", "\\n", "\\u00e9", "\\ud83d\\ude00", "é", "😀", "\\/", '"', "\x01", "\x1f", "\x7f",
            "\\ud83d", "\\q", "\xff", "\xc3"]  # the last five after "\x7f" must refuse the block (two are bytes)


def line_bytes(prefix_pad: int, body: str) -> bytes:
    text = '{"' + "k" * prefix_pad + '":1,"v":"' + body + '"}'
    # "\xff"/"\xc3" stand for the invalid UTF-8 bytes themselves
    return text.encode("utf-8").replace("\xff".encode(), b"\xff").replace("\xc3".encode(), b"\xc3")


def want_string(raw: bytes) -> str | None:
    try:
        v = json.loads(raw.decode("utf-8"))["v"]
        v.encode("utf-8")  # a lone surrogate cannot be
        return str(v)
    except (UnicodeError, ValueError, KeyError):
        return None


STR = resolve_schema({"v": Optional(str)})


@pytest.mark.parametrize("special", SPECIALS)
@pytest.mark.parametrize("pad", [0, 1, 5, 13])
def test_a_string_special_anywhere_relative_to_16_and_32_byte_chunks(special: str, pad: int) -> None:
    for at in range(0, 40):
        for after in (0, 1, 15, 16, 17, 33):
            body = "a" * at + special + "b" * after
            for end in (b"", b"\n"):  # the block's last bytes, or a line end
                raw = line_bytes(pad, body)
                df = json_native.decode(raw + end, STR)
                want = want_string(raw)
                got = None if df is None else df["v"][0]
                assert got == want, (special, pad, at, after, end)


@pytest.mark.parametrize("rows", [1, 7, 65536])
def test_strings_of_every_length_are_copied_whole(rows: int) -> None:
    rnd = random.Random(rows)
    alphabet = "ab \\\"é😀/\t"
    values = ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(max(rows, 2000))]
    for at in range(0, len(values), rows):
        chunk = values[at:at + rows]
        blob = "\n".join(json.dumps({"v": v, "w": v}, ensure_ascii=rnd.random() < 0.5) for v in chunk).encode()
        df = json_native.decode(blob, STR)
        assert df is not None and df["v"].to_list() == chunk


# --- keys: the predicted one only when spelt exactly -------------------------------------------------------

KEYS = resolve_schema({"timestamp": Optional(int), "id": Optional(int), "a_long_field_name_x": Optional(int)})


@pytest.mark.parametrize(("line", "want"), [
    ('{"timestamp":1,"id":2,"a_long_field_name_x":3}', (1, 2, 3)),
    ('{"timestam":1,"id":2}', (None, 2, None)),  # a prefix of the predicted name
    ('{"timestampx":1,"id":2}', (None, 2, None)),  # the predicted name then more
    ('{"\\u0074imestamp":1,"id":2}', (1, 2, None)),  # an escaped spelling of it
    ('{"timestamp\\u0000":1,"id":2}', (None, 2, None)),
    ('{"a_long_field_name_y":1,"a_long_field_name_x":2}', (None, None, 2)),  # differs past the first 8 bytes
    ('{"a_long_field_name_x" : 3 , "timestamp" :\t1}', (1, None, 3)),
    ('{"timestamp":1,"timestamp":2}', None),  # a duplicate, both spelt plainly
    ('{"timestamp":1,"\\u0074imestamp":2}', None),
    ('{"id":1,"timestamp":2,"id":3}', None),
])
def test_a_predicted_key_matches_only_its_exact_spelling(line: str, want: tuple[Any, ...] | None) -> None:
    lead = '{"timestamp":0,"id":0,"a_long_field_name_x":0}\n'  # sets the prediction
    df = json_native.decode((lead + line).encode(), KEYS)
    if want is None:
        assert df is None
    else:
        assert df is not None and df.row(1) == want


def test_a_key_cut_by_the_block_end_refuses_it() -> None:
    for cut in range(1, 12):
        assert json_native.decode(b'{"timestamp":1}\n{"timestamp":1}'[:-cut], KEYS) is None


# --- validity: only from a column's first null on ---------------------------------------------------------

NULLS = resolve_schema({"v": Optional(float), "s": Optional(str), "m": Optional({"x": Optional(int)})})


@pytest.mark.parametrize("rows", [1, 7, 65536])
def test_nulls_anywhere_give_the_same_validity_as_the_polars_path(rows: int) -> None:
    rnd = random.Random(rows)
    for first in sorted({0, 1, rows // 2, rows - 1}):
        recs = []
        for i in range(rows):
            null = i == first or (i > first and rnd.random() < 0.2)
            recs.append({"v": None if null else i + 0.5, "s": None if null and i % 2 else str(i),
                         "m": None if null and i % 3 == 0 else {"x": None if null else i}})
        blob = "\n".join(json.dumps(r) for r in recs).encode()
        df = json_native.decode(blob, NULLS)
        assert df is not None
        assert df.to_dicts() == recs
        want = pl.DataFrame(recs, schema=NULLS.wire)
        assert [df[c].null_count() for c in df.columns] == [want[c].null_count() for c in want.columns]
