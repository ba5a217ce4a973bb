"""What the fast JSON parser does not say: values of the wrong type that it quietly turns into text, and
why a record was refused, in words.

Polars' NDJSON reader, asked for a String, turns a number, `true` or an object into its text ("900002",
"true", '{"id": 3}'): the record would pass with a value it never held. Such text starts with a digit,
`-`, `{` or `[`, or is `true`/`false`, so one vectorized look at the String columns (`suspects`) finds
the rows that may hold one; only those are parsed again with every String read as Categorical, which
accepts strings and null only. A block without suspects costs that one look.

A record the reader refuses (or that holds a wrong type) is explained by Python's own JSON parser
(`explain`): a byte order mark, invalid UTF-8, NaN/Infinity, truncated or malformed JSON (with the
character where it breaks), not an object, or the field, the type it is declared and the value it holds.

Polars' reader also turns a lone UTF-16 high surrogate escape (`"\\ud83d"` not followed by its low half) into
"\\x00": the record would pass with a character it never held. `lone_surrogate` finds the records whose
declared strings hold one (a block without a backslash costs one memchr, one without a lone high escape
one regex scan); `explain` names the field.

The reader refuses records nested deeper than its limit (1024 levels), even in fields the schema ignores;
`shallow` keeps only a record's declared top-level fields (checking, without recursion, that the rest is
valid JSON), so such a record is read by its declared fields like any other.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from typing import Any

import polars as pl

BOM = b"\xef\xbb\xbf"
# a BOM starting a record that holds more than it (a BOM alone stays, and is refused as an empty record)
_RECORD_BOM = re.compile(rb"(?m)^\xef\xbb\xbf(?=[ \t\r\f\v]*[^\s])")


def drop_record_boms(blob: bytes) -> bytes:
    """`blob` (newline-separated records) with a byte order mark at the start of any record replaced by
    three blanks: every byte and record keeps its position, and the record reads as without it. Message
    values from .NET and Windows producers often start with one; Jackson (Kafka's JsonConverter, Kafka
    Streams' serdes) and Python's json.loads of bytes skip it too."""
    if b"\xef" not in blob or BOM not in blob:  # one memchr rules out nearly every block (~50x faster)
        return blob
    return _RECORD_BOM.sub(b"   ", blob)
DType = Any  # a Polars type, or its class (the fields of a struct and a list's inner type may be either)
_COERCED = r"^(?:[-0-9\[{]|true$|false$)"  # the text a number, object, array or boolean becomes


def _string_leaves(e: pl.Expr, dtype: DType) -> list[pl.Expr]:
    """Per row, whether a String inside `e` (a struct field, a list element, …) looks like coerced text."""
    if dtype == pl.String:
        return [e.str.contains(_COERCED).fill_null(False)]
    if isinstance(dtype, pl.Struct):
        return [x for f in dtype.fields for x in _string_leaves(e.struct.field(f.name), f.dtype)]
    if isinstance(dtype, pl.List | pl.Array):
        inner = _string_leaves(pl.element(), dtype.inner)
        if not inner:
            return []
        return [e.list.eval(pl.any_horizontal(inner)).list.any().fill_null(False)] if isinstance(dtype, pl.List) else []
    return []


def string_columns(schema: pl.Schema, skip: Sequence[str]) -> list[str]:
    """The declared fields that hold a String somewhere (maps and JSON values, read as text, excepted)."""
    return [n for n, t in schema.items() if n not in skip and _string_leaves(pl.col(n), t)]


def suspects(df: pl.DataFrame, schema: pl.Schema, columns: Sequence[str]) -> list[int]:
    """Rows whose String values may be a number, boolean, object or array turned into text."""
    if not columns:
        return []
    flags = [x for n in columns for x in _string_leaves(pl.col(n), schema[n])]
    mask = df.select(pl.any_horizontal(flags).alias("m"))["m"]
    if not mask.any():
        return []
    return mask.arg_true().to_list()


def strict(schema: pl.Schema, columns: Sequence[str]) -> pl.Schema:
    """The schema with every String of `columns` read as Categorical: the reader then refuses non-strings."""
    def go(t: DType) -> DType:
        if t == pl.String:
            return pl.Categorical()
        if isinstance(t, pl.Struct):
            return pl.Struct({f.name: go(f.dtype) for f in t.fields})
        if isinstance(t, pl.List):
            return pl.List(go(t.inner))
        return t
    return pl.Schema({n: go(t) if n in columns else t for n, t in schema.items()})


_PARSE_ERRORS = (pl.exceptions.ComputeError, pl.exceptions.SchemaError, pl.exceptions.InvalidOperationError)


def all_strings(lines: Sequence[bytes], schema: pl.Schema, columns: Sequence[str]) -> bool:
    """Whether every String of `columns` in these records holds a string (or null)."""
    try:
        pl.read_ndjson(io.BytesIO(b"\n".join(lines)), schema=strict(schema, columns))
    except _PARSE_ERRORS:
        return False
    return True


# --- reasons ---------------------------------------------------------------------------------------


# a high surrogate escape without its low half (or text such as `\\\\ud83d`: each line found is parsed, and only
# a lone surrogate in a declared string counts); the literal start lets the regex engine skip ahead fast
_LONE_HIGH = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})")


def lone_surrogate(blob: bytes, schema: pl.Schema, skip: Sequence[str] = ()) -> bool:
    """Whether a record of `blob` (newline-separated) holds a lone UTF-16 surrogate in a declared string (not
    in `skip`); the caller's slow path then finds the record and `explain` names the field."""
    if b"\\" not in blob:  # memchr, ~6 ms per 170 MB
        return False
    end = -1
    for m in _LONE_HIGH.finditer(blob):
        if m.start() < end:
            continue  # a line already looked at
        start = blob.rfind(b"\n", 0, m.start()) + 1
        end = blob.find(b"\n", m.end())
        end = len(blob) if end < 0 else end
        line = blob[start:end]
        try:
            value = json.loads(line)
        except ValueError:
            continue  # not the reader's silent case: it refuses the record itself
        if isinstance(value, dict) and any(_holds_surrogate(value.get(n), t) for n, t in schema.items() if n not in skip):
            return True
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")  # Python's JSON parser keeps a lone surrogate as a character


def _surrogate(s: str) -> int | None:
    """The first lone surrogate in `s`, if any."""
    m = _SURROGATE.search(s)
    return None if m is None else ord(m.group())


def _holds_surrogate(v: Any, t: DType) -> bool:
    """Whether a String of the declared type `t` inside `v` holds a lone surrogate."""
    if t == pl.String:
        return isinstance(v, str) and _surrogate(v) is not None
    if isinstance(t, pl.Struct) and isinstance(v, dict):
        return any(_holds_surrogate(v.get(f.name), f.dtype) for f in t.fields)
    if isinstance(t, pl.List) and isinstance(v, list):
        return any(_holds_surrogate(x, t.inner) for x in v)
    return False


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return f"the boolean {json.dumps(v)}"
    if isinstance(v, int | float):
        return f"the number {json.dumps(v)}"
    if isinstance(v, str):
        return f"the string {json.dumps(v, ensure_ascii=False)[:60]}"
    if isinstance(v, dict):
        return f"an object {json.dumps(v, ensure_ascii=False)[:60]}"
    return f"an array {json.dumps(v, ensure_ascii=False)[:60]}"


def _expected(t: DType) -> str:
    if t == pl.String:
        return "a string (str)"
    if t == pl.Boolean:
        return "a boolean (bool)"
    if t.is_integer():
        return f"an integer ({t})"
    if t.is_float():
        return f"a number ({t})"
    if isinstance(t, pl.Struct):
        return "an object"
    if isinstance(t, pl.List | pl.Array):
        return "an array"
    return str(t)


def _mismatch(v: Any, t: DType, path: str) -> str | None:
    """Why `v` does not fit the declared type `t` (None when it does, or when only the reader can tell)."""
    if v is None:
        return None
    ok = True
    if t == pl.String:
        ok = isinstance(v, str)
        if ok and (half := _surrogate(v)) is not None:
            return (f"field {path!r}: the string holds a lone UTF-16 surrogate \\u{half:04x} (half of a character "
                    "escaped as a pair), which is not text: write the whole pair, or the character itself")
    elif t == pl.Boolean:
        ok = isinstance(v, bool)
    elif t.is_integer():
        ok = isinstance(v, int) and not isinstance(v, bool)
        if ok:
            info = _INT_RANGE.get(str(t))
            if info is not None and not info[0] <= v <= info[1]:
                return f"field {path!r}: {v} is out of range for {t}"
    elif t.is_float():
        ok = isinstance(v, int | float) and not isinstance(v, bool)
    elif isinstance(t, pl.Struct):
        if not isinstance(v, dict):
            ok = False
        else:
            for f in t.fields:
                why = _mismatch(v.get(f.name), f.dtype, f"{path}.{f.name}")
                if why:
                    return why
    elif isinstance(t, pl.List):
        if not isinstance(v, list):
            ok = False
        else:
            for i, x in enumerate(v):
                why = _mismatch(x, t.inner, f"{path}[{i}]")
                if why:
                    return why
    if ok:
        return None
    return f"field {path!r}: expected {_expected(t)}, found {_kind(v)}"


_INT_RANGE = {f"{s}{b}": ((-(1 << (b - 1)), (1 << (b - 1)) - 1) if s == "Int" else (0, (1 << b) - 1))
              for s in ("Int", "UInt") for b in (8, 16, 32, 64)}


def explain(raw: bytes, schema: pl.Schema, skip: Sequence[str] = (), fallback: str = "") -> str:
    """Why the record `raw` is refused, in words."""
    if raw.startswith(BOM):
        if not raw[len(BOM):].strip():
            return "the record is empty: a UTF-8 byte order mark (BOM) and nothing else"
        return ("the line starts with a UTF-8 byte order mark (BOM); one is accepted only before the first line "
                "of a file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start} of the record"
    if not text.strip():
        return "the record is empty"
    constants: list[str] = []  # NaN, Infinity, -Infinity: Python reads them, JSON has none
    try:
        value = json.loads(text, parse_constant=lambda name: constants.append(name))
    except RecursionError:
        if shallow(raw, ()) is not None:
            return "a declared field is nested deeper than the JSON reader goes (over 1000 levels)"
        if _cut_short(text):
            return "truncated JSON: the record ends with an object or array still open (nested over 1000 levels)"
        return "malformed JSON, nested over 1000 levels: an object or array is closed by the wrong bracket or twice"
    except json.JSONDecodeError as exc:
        end = len(text.rstrip())
        if exc.pos >= end or _cut_short(text):
            return (f"truncated JSON: the record ends (after {end} characters) with a string, object or array still "
                    "open")
        return f"malformed JSON: {exc.msg.lower()} (at character {exc.pos}: {text[exc.pos:exc.pos + 20]!r})"
    if constants:
        return (f"{constants[0]} is not a JSON value (JSON has no NaN or Infinity): write null, or the number as a "
                "string and declare the field str")
    if not isinstance(value, dict):
        return f"not a JSON object: the record is {_kind(value)}"
    for name, t in schema.items():
        if name in skip:
            continue
        why = _mismatch(value.get(name), t, name)
        if why:
            return why
    return fallback or "the JSON reader refused the record"


_LENIENT = re.compile(r'"(?:[^"\\]|\\.)*("?)|([{\[])|([}\]])|[^"{}\[\]]+')


def _cut_short(text: str) -> bool:
    """Whether the text ends inside a string, object or array (what a record cut short looks like)."""
    depth = 0
    for m in _LENIENT.finditer(text):
        if m.group(0).startswith('"') and not m.group(1):
            return True
        depth += 1 if m.group(2) else -1 if m.group(3) else 0
    return depth > 0


# --- deep records ------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'[ \t\r\n]*(?:("(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")'
    r"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)|(true|false|null)|([{}\[\],:]))"
)


def shallow(raw: bytes, keep: Sequence[str]) -> bytes | None:
    """The record with only its top-level fields in `keep`, if the whole record is a valid JSON object
    (checked without recursion, at any depth); None when it is not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    wanted = set(keep)
    stack: list[str] = []  # the open containers, "{" or "["
    expect = "value"  # value | value_or_close | key | key_or_close | colon | comma_or_close | end
    pos = start = 0
    key: str | None = None
    kept: dict[str, str] = {}

    def value_done() -> str:
        if len(stack) == 1 and key is not None and key in wanted:  # a field of the record itself
            kept[key] = text[start:pos].strip()
        return "comma_or_close" if stack else "end"

    while expect != "end":
        m = _TOKEN.match(text, pos)
        if m is None:
            return None
        string, number, literal, punct = m.groups()
        pos = m.end()
        if expect in ("key", "key_or_close"):
            if string is not None:
                if len(stack) == 1:
                    key = json.loads(string)
                expect = "colon"
            elif punct == "}" and expect == "key_or_close":
                stack.pop()
                expect = value_done()
            else:
                return None
        elif expect == "colon":
            if punct != ":":
                return None
            start, expect = pos, "value"
        elif expect in ("value", "value_or_close"):
            if punct in ("{", "["):
                if not stack and punct != "{":
                    return None  # the record itself must be an object
                stack.append(punct)
                expect = "key_or_close" if punct == "{" else "value_or_close"
            elif punct == "]" and expect == "value_or_close":
                stack.pop()
                expect = value_done()
            elif stack and (string is not None or number is not None or literal is not None):
                expect = value_done()
            else:
                return None
        elif punct == ",":
            expect = "key" if stack[-1] == "{" else "value"
        elif (punct, stack[-1]) in (("}", "{"), ("]", "[")):
            stack.pop()
            expect = value_done()
        else:
            return None
    if text[pos:].strip(" \t\r\n"):
        return None
    return ("{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kept.items()) + "}").encode()
