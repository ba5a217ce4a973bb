"""Poison input, fuzzed: files of good records mixed with random bytes, truncated records, wrong types,
NaN/Infinity, huge and deeply nested records, byte order marks and invalid UTF-8, read with
on_error="dead_letter". Every bad record is in the dead letters exactly once (by its file:line) with a
reason in words, and every good record is in the output, in order, with its values — whatever the block
size and batch size. What is good and bad is known from how each line was made, not from the reader."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice import testing

SCHEMA = {"id": int, "name": str, "v": float}
WRONG = {  # values of the wrong type per field (an int in a float field is a number: not wrong)
    "id": ['"7"', "1.5", "true", '{"a": 1}', "[1]", "123456789012345678901234567890"],
    "name": ["900002", "-1.5", "true", "false", '{"id": 3}', "[]", "0"],
    "v": ['"1.0"', "false", "{}", "[1.0]"],
}
names = st.one_of(st.text(max_size=12), st.sampled_from(["123", "-4", "true", "false", "{x", "[1]", "null", "1e5"]))


BOM = b"\xef\xbb\xbf"


@st.composite
def line(draw: st.DrawFn, i: int, message: bool = False) -> tuple[bytes, dict | None]:
    """A line (with `message`: a message value) and, when it is a good record, what it holds."""
    good = {"id": i, "name": draw(names), "v": draw(st.floats(allow_nan=False, allow_infinity=False, width=32))}
    text = json.dumps(good)
    kind = draw(st.sampled_from(["good", "good", "good", "bytes", "truncated", "wrong", "nan", "huge", "deep",
                                 "deep_bad", "bom", "utf8", "extra", *(["bom_only", "two_boms"] if message else [])]))
    if kind == "good":
        return text.encode(), good
    if kind == "extra":  # ignored fields of any shape
        extra = draw(st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                  lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                                  max_leaves=8))
        return json.dumps({**good, "extra": extra}).encode(), good
    if kind == "huge":
        return json.dumps({**good, "blob": "x" * draw(st.integers(100_000, 400_000))}).encode(), good
    if kind == "deep":  # valid, nested beyond the fast reader's limit, in an ignored field
        d = draw(st.integers(1100, 3000))
        return (text[:-1] + ', "deep": ' + "[" * d + "]" * d + "}").encode(), good
    if kind == "deep_bad":
        d = draw(st.integers(1100, 3000))
        return (text[:-1] + ', "deep": ' + "[" * d + "]" * (d - 1) + "}").encode(), None
    if kind == "bytes":
        raw = draw(st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b and b.strip()))
        return raw, None
    if kind == "truncated":
        return text[: draw(st.integers(1, len(text) - 1))].encode(), None
    if kind == "wrong":
        field = draw(st.sampled_from(sorted(WRONG)))
        value = draw(st.sampled_from(WRONG[field]))
        return json.dumps({**good, field: "@@"}).replace('"@@"', value).encode(), None
    if kind == "nan":
        return json.dumps({**good, "v": "@@"}).replace('"@@"', draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))).encode(), None
    if kind == "bom":  # a byte order mark: before the file's first line or a message value fine, elsewhere bad
        return BOM + text.encode(), good if i == 0 or message else None
    if kind == "bom_only":  # a message of nothing but the mark
        return BOM + draw(st.sampled_from([b"", b" ", b"\t "])), None
    if kind == "two_boms":  # the producer's mark, then one more: the second is not JSON
        return BOM + BOM + text.encode(), None
    cut = draw(st.integers(0, len(text)))  # invalid UTF-8 somewhere in the record
    return text[:cut].encode() + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + text[cut:].encode(), None


@st.composite
def files(draw: st.DrawFn) -> tuple[list[bytes], list[dict | None]]:
    n = draw(st.integers(1, 25))
    made = [draw(line(i)) for i in range(n)]
    lines, goods = [m[0] for m in made], [m[1] for m in made]
    if draw(st.booleans()) and goods[0] is not None and not lines[0].startswith(b"\xef\xbb\xbf"):
        # a BOM before the first line is fine
        lines[0] = b"\xef\xbb\xbf" + lines[0]
    return lines, goods


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=files(), block=st.sampled_from([64, 4096, 8 << 20]), batch_size=st.sampled_from([1, 7, 65536]))
def test_every_bad_record_is_dead_lettered_once_and_every_good_one_is_output(
        tmp_path_factory, data: tuple[list[bytes], list[dict | None]], block: int, batch_size: int) -> None:
    lines, goods = data
    path = tmp_path_factory.mktemp("fuzz") / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    flow = sl.Flow("fuzz")
    src = flow.read("in", sl.JsonLinesSource(path, block_bytes=block), schema=SCHEMA, on_error="dead_letter")
    out, dead = testing.collect(src), testing.collect(src.dead_letters)
    sl.run(flow, batch_size=batch_size)

    want = [g for g in goods if g is not None]
    got = out.frame()
    assert got.height == len(want)
    if want:
        assert got["id"].to_list() == [g["id"] for g in want]
        assert got["name"].to_list() == [g["name"] for g in want]
        assert got["v"].to_list() == [float(g["v"]) for g in want]
    d = dead.frame()
    bad_lines = [f"{path}:{i + 1}" for i, g in enumerate(goods) if g is None]
    assert (d["position"].to_list() if d.height else []) == bad_lines  # each once, in order
    for reason in d["reason"].to_list() if d.height else []:
        assert "TapeError" not in reason and "Syntax at character" not in reason and reason


def test_a_wrong_type_among_a_million_bytes_of_good_records_is_found(tmp_path: Path) -> None:
    good = [json.dumps({"id": i, "name": str(900000 + i), "v": i / 2}) for i in range(20_000)]
    lines = [*good[:12_345], '{"id": -1, "name": 900002, "v": 1.0}', *good[12_345:]]
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    flow = sl.Flow("one")
    src = flow.read("in", sl.JsonLinesSource(path), schema=SCHEMA, on_error="dead_letter")
    out, dead = testing.collect(src), testing.collect(src.dead_letters)
    sl.run(flow)
    assert out.frame().height == 20_000 and out.frame()["name"].to_list() == [str(900000 + i) for i in range(20_000)]
    assert dead.frame().select("position", "reason").rows() == [
        (f"{path}:12346", "field 'name': expected a string (str), found the number 900002")]
    assert pl.Series(out.frame()["id"]).is_sorted()


@st.composite
def message_values(draw: st.DrawFn) -> tuple[list[bytes], list[dict | None]]:
    """Message values: any of the lines above, and a UTF-8 byte order mark before any value (as .NET and
    Windows producers write) that is the producer's, not data: it changes nothing about the value."""
    n = draw(st.integers(1, 25))
    made = [draw(line(i, message=True)) for i in range(n)]
    values = [BOM + raw if draw(st.booleans()) and not raw.startswith(BOM) else raw for raw, _ in made]
    return values, [g for _, g in made]


def check_messages(values: list[bytes], goods: list[dict | None], got: pl.DataFrame, dead: pl.DataFrame,
                   position: str) -> None:
    """Every good value is in `got` (in order, with its values), every bad one in `dead` once, at its offset,
    with a reason in words and its raw bytes as sent (the mark included)."""
    want = [g for g in goods if g is not None]
    assert got.height == len(want)
    if want:
        assert got["id"].to_list() == [g["id"] for g in want]
        assert got["name"].to_list() == [g["name"] for g in want]
        assert got["v"].to_list() == [float(g["v"]) for g in want]
    bad = [i for i, g in enumerate(goods) if g is None]
    assert (dead["position"].to_list() if dead.height else []) == [f"{position} {i}" for i in bad]
    assert (dead["raw"].to_list() if dead.height else []) == [values[i].decode("utf-8", "replace") for i in bad]
    for value, reason in zip([values[i] for i in bad], dead["reason"].to_list() if dead.height else [], strict=True):
        assert "TapeError" not in reason and "Syntax at character" not in reason and reason
        assert "before the first line of a file" not in reason, reason
        if value.startswith(BOM) and not value[3:].strip():
            assert reason == "the record is empty: a UTF-8 byte order mark (BOM) and nothing else"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=message_values(), joined=st.booleans(), block=st.sampled_from([64, 4096, 8 << 20]),
       batch_size=st.sampled_from([1, 7, 65536]))
def test_log_messages_with_a_byte_order_mark_are_read_as_without_it(
        tmp_path_factory, data: tuple[list[bytes], list[dict | None]], joined: bool, block: int,
        batch_size: int) -> None:
    """Through the embedded log's source: values appended newline-joined (as Sluice's log sink writes
    JSON) or one by one (as another producer may)."""
    import numpy as np

    from sluice.connectors.log import Log

    values, goods = data
    root = tmp_path_factory.mktemp("log")
    log = Log(root)
    log.create_topic("t", 1)
    part = log.partition("t", 0, writable=True)
    try:
        for chunk in (values[:len(values) // 2], values[len(values) // 2:]):
            if not chunk:
                continue
            sep = b"\n" if joined else b""
            blob = b"".join(v + sep for v in chunk)
            offs = np.concatenate([[0], np.cumsum([len(v) + len(sep) for v in chunk])]).astype(np.uint32)
            part.append(np.arange(len(chunk), dtype=np.int64), blob, offs, flags=1 if joined else 0)
    finally:
        part.close()
    flow = sl.Flow("log")
    src = flow.read("in", sl.LogSource("t", root=root, block_bytes=block), schema=SCHEMA, on_error="dead_letter")
    out, dead = testing.collect(src), testing.collect(src.dead_letters)
    sl.run(flow, batch_size=batch_size)
    check_messages(values, goods, out.frame(), dead.frame(), "log:t/0 offset")
