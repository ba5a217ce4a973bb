"""The JSON Lines source's blocks: where they are cut (the same as every earlier release cut them, so a
checkpoint written by one resumes the same blocks), and a read resumed anywhere, at any batch size, with bad
records, long lines, a BOM and no final newline, goes on exactly as an uninterrupted read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluice as sl
from sluice.connectors import files
from sluice.connectors.api import SourceContext
from sluice.core.batch import OFFSET
from sluice.core.schema import resolve_schema
from sluice.formats import json_native
from sluice.formats.json_check import BOM

SCHEMA = resolve_schema({"i": int, "s": str})


def reference_blocks(path: Path, start: int, want: int, block_bytes: int) -> Iterator[tuple[int, bytes, int]]:
    """The cut rule as the reader applied it before its parse thread read the file (a seek and a fresh read
    per block): a checkpoint's (byte, block) from that reader must resume the same blocks."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = start
        while pos < size:
            f.seek(pos)
            asked = min(want, block_bytes)
            data = f.read(asked)
            want = asked * 2
            while pos + len(data) < size and b"\n" not in data[-1:]:
                cut = data.rfind(b"\n")
                if cut >= 0:
                    data = data[: cut + 1]
                    break
                more = f.read(block_bytes)
                if not more:
                    break
                data += more
            if pos == 0 and data.startswith(BOM):
                data = b"   " + data[len(BOM):]
            yield pos, data, asked
            pos += len(data)


def cuts(path: Path, start: int, want: int, block_bytes: int) -> list[tuple[int, bytes, int]]:
    # the reader's cutter, one buffer reused (as each parse thread reuses its own): copied before the next cut
    cutter = files._Cutter(path, start, want, block_bytes)
    out, buf = [], bytearray()
    try:
        while (got := cutter.cut(buf)) is not None:
            pos, buf, n, asked = got
            out.append((pos, bytes(buf[:n]), asked))
    finally:
        cutter.close()
    return out


def check_cuts(path: Path, block_bytes: int, want: int) -> None:
    want_blocks = list(reference_blocks(path, 0, want, block_bytes))
    assert cuts(path, 0, want, block_bytes) == want_blocks
    data = path.read_bytes()
    if data.startswith(BOM):
        data = b"   " + data[len(BOM):]
    assert b"".join(b for _, b, _ in want_blocks) == data  # every byte once, in order
    for k, (pos, _block, asked) in enumerate(want_blocks):  # resumed at each block, with the size it was read with
        assert cuts(path, pos, asked, block_bytes) == want_blocks[k:]


lines_st = st.lists(st.one_of(st.integers(0, 200).map(lambda n: b"x" * n), st.sampled_from([b"", b" ", b"\r"])),
                    max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines_st, final_newline=st.booleans(), bom=st.booleans(), block_bytes=st.integers(1, 64),
       want=st.integers(1, 64))
def test_blocks_are_cut_where_the_reference_cuts_them(tmp_path: Path, lines: list[bytes], final_newline: bool,
                                                       bom: bool, block_bytes: int, want: int) -> None:
    path = tmp_path / "in.jsonl"
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path.write_bytes((BOM if bom else b"") + data)
    check_cuts(path, block_bytes, min(want, block_bytes))


@pytest.mark.parametrize(("content", "block_bytes", "want"), [
    (b"abc\ndefg\n" * 5, 5, 5),  # a window ending exactly at a line end (the next block starts at a line)
    (b"abcd\n" * 7, 5, 5),  # every window ends exactly at a line end
    (b"ab\n" + b"y" * 40 + b"\ncd\n" + b"z" * 3 + b"\n", 8, 4),  # a line longer than 2 blocks (5 of them)
    (b"y" * 40 + b"\n", 8, 8),  # ... and the first line
    (b"ab\n" + b"y" * 40, 8, 8),  # ... and the last, with no line end
    (b"ab\ncd", 3, 3),  # no final line end
    (b"", 8, 8),  # empty
    (b"\n\n\n", 1, 1),
    (BOM + b'{"i":1}\n' + BOM, 4, 2),  # a BOM at the start (blanked), and one later (kept)
    (BOM, 2, 2),
])
def test_block_boundaries(tmp_path: Path, content: bytes, block_bytes: int, want: int) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    check_cuts(path, block_bytes, want)


def test_an_empty_file_has_no_blocks(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"")
    assert cuts(tmp_path / "in.jsonl", 0, 8, 8) == []


# --- reads resumed anywhere -------------------------------------------------------------------------


def content() -> tuple[bytes, list[dict[str, Any]], list[int]]:
    """A file of good records, bad ones, blank lines and long lines; the good rows and bad lines it holds
    (worked out line by line here: the oracle)."""
    out, good, bad = [], [], []
    for n in range(300):
        line_no = n + 1
        if n % 23 == 5:
            out.append(b'{"i": "not a number", "s": "a"}')
            bad.append(line_no)
        elif n % 31 == 7:
            out.append(b"{not json")
            bad.append(line_no)
        elif n % 17 == 3:
            out.append(b"   ")
        else:
            s = "é" * (n % 7) + "w" * ((n * 37) % 120 if n % 50 != 9 else 400)  # some lines span several blocks
            out.append(json.dumps({"i": n, "s": s}, ensure_ascii=False).encode())
            good.append({"i": n, "s": s})
    return BOM + b"\n".join(out), good, bad  # a BOM at the start, no final line end


def read(path: Path, batch_size: int, position: dict[str, Any] | None = None,
         stop_after: int | None = None, block_bytes: int | None = 64) -> tuple[list[pl.DataFrame], list[str], dict[str, Any]]:
    """The rows and the dead letters' positions of a read (from `position`), stopped after `stop_after`
    batches of rows; and the position to resume from (as a checkpoint holds it)."""
    source = sl.JsonLinesSource(path, block_bytes=block_bytes)
    reader = source.open(SourceContext("in", SCHEMA, batch_size, "dead_letter"))
    if position is not None:
        reader.seek(position)
    frames: list[pl.DataFrame] = []
    dead: list[str] = []
    batches = reader.batches()
    for port, batch in batches:
        if port == "dead_letters":
            dead += batch.df["position"].to_list()
        elif batch.height:
            frames.append(batch.df)  # kept, so a later block reusing the reader's buffer would show here
            if len(frames) == stop_after:
                break
    batches.close()
    return frames, dead, json.loads(json.dumps(reader.position()))


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("batch_size", [1, 7, 65536])
def test_a_read_resumed_anywhere_goes_on_as_an_uninterrupted_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   batch_size: int, native: bool, threads: int) -> None:
    monkeypatch.setattr(files, "FIRST_BLOCK_BYTES", 16)  # the doubling first blocks, many of them
    monkeypatch.setattr(files, "PARSE_THREADS", threads)  # blocks decoded by 1-3 threads, taken in file order
    monkeypatch.setattr(json_native, "ENABLED", native and json_native.ENABLED)
    data, good, bad = content()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    frames, dead, _ = read(path, batch_size)
    whole = pl.concat(frames)
    assert whole.drop(OFFSET).to_dicts() == good
    assert dead == [f"{path}:{n}" for n in bad]
    assert whole[OFFSET].to_list() == sorted(set(whole[OFFSET].to_list()))  # record ordinals, increasing
    for stop in sorted({1, 2, 3, 5, 8, len(frames) // 2, len(frames) - 1, len(frames)}):
        first, dead1, position = read(path, batch_size, stop_after=stop)
        rest, dead2, _ = read(path, batch_size, position)
        assert pl.concat(first + rest).equals(whole), stop
        assert dead1 + dead2 == dead, stop


# --- blocks sized to the batch ----------------------------------------------------------------------


def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "FIRST_BLOCK_BYTES", 64)
    monkeypatch.setattr(files, "MIN_BLOCK_BYTES", 16)


@pytest.mark.parametrize("batch_size", [1, 7, 40, 65536])
def test_blocks_sized_to_the_batch_make_whole_batches_and_resume_anywhere(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          batch_size: int) -> None:
    small_blocks(monkeypatch)
    data, good, bad = content()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    frames, dead, _ = read(path, batch_size, block_bytes=None)
    whole = pl.concat(frames)
    assert whole.drop(OFFSET).to_dicts() == good
    assert dead == [f"{path}:{n}" for n in bad]
    for stop in sorted({1, 2, 5, len(frames) // 2, len(frames) - 1}):
        first, dead1, position = read(path, batch_size, stop_after=stop, block_bytes=None)
        assert "limit" in position
        rest, dead2, _ = read(path, batch_size, position, block_bytes=None)
        assert pl.concat(first + rest).equals(whole), stop
        assert [f.height for f in first + rest] == [f.height for f in frames], stop  # the same batches
        assert dead1 + dead2 == dead, stop


def test_the_block_size_is_chosen_from_the_first_block_to_hold_nine_tenths_of_a_batch(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    small_blocks(monkeypatch)
    monkeypatch.setattr(files, "MAX_BLOCK_BYTES", 10_000)
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"i": n, "s": "x" * (n % 5)}).encode() for n in range(3000)]  # 20-24 bytes + line end
    path.write_bytes(b"\n".join(lines) + b"\n")
    cutter = files._Cutter(path, 0, 64, None, 100)
    sizes, rows, lengths = [], [], []
    buf = bytearray()
    while (got := cutter.cut(buf)) is not None:
        _, buf, n, asked = got
        sizes.append(asked)
        lengths.append(n)
        rows.append(bytes(buf[:n]).count(b"\n"))
    cutter.close()
    assert cutter.limit == int(0.9 * 100 * lengths[0] / rows[0])  # 90 lines of the first block's mean length
    assert sizes[:2] == [64, min(128, cutter.limit)]  # the first blocks double up to it ...
    assert max(sizes) == cutter.limit and sizes[-2] == cutter.limit  # ... and stay there
    # whole batches, none split into a small remainder (later lines hold longer numbers: a few less per block)
    assert all(r <= 100 for r in rows) and max(rows) >= 70
    # a batch of rows so long that 90% of it is more than MAX_BLOCK_BYTES: MAX_BLOCK_BYTES
    big = files._Cutter(path, 0, 64, None, 1_000_000)
    big.cut(bytearray())
    assert big.limit == 10_000
    big.close()


def test_a_checkpoint_from_before_the_chosen_size_resumes_with_the_old_blocks(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "OLD_BLOCK_BYTES", 100)
    data, _, _ = content()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    reference = list(reference_blocks(path, 0, 50, 100))
    byte, _, asked = reference[3]
    position = {"file": 0, "byte": byte, "skip": 0, "ordinal": 0, "block": asked}  # no "limit": written before it
    reader = sl.JsonLinesSource(path).open(SourceContext("in", SCHEMA, 7, "dead_letter"))
    reader.seek(position)
    starts, limits = set(), set()
    for port, _batch in reader.batches():
        if port == "out" and reader.position()["file"] == 0:
            starts.add(reader.position()["byte"])  # the start of the block the batch is from
            limits.add(reader.position()["limit"])
    assert limits == {100}
    cut_before = {b for b, _, _ in reference[3:]}
    assert starts <= cut_before and len(starts) >= 0.8 * len(cut_before)  # (a block of bad lines makes no batch)


# --- blocks decoded by several threads ------------------------------------------------------------


def test_blocks_are_taken_in_file_order_when_a_later_one_is_decoded_first(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    data, good, bad = content()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    decode = files.Json.decode_block
    calls = []
    lock = threading.Lock()

    def slow_first(self: Any, blob: Any, schema: Any) -> Any:
        with lock:
            calls.append(None)
            first = len(calls) == 1
        if first:
            time.sleep(0.3)  # the next blocks are decoded meanwhile by the other threads
        return decode(self, blob, schema)

    monkeypatch.setattr(files.Json, "decode_block", slow_first)
    monkeypatch.setattr(files, "PARSE_THREADS", 3)
    frames, dead, _ = read(path, 7)
    assert pl.concat(frames).drop(OFFSET).to_dicts() == good
    assert pl.concat(frames)[OFFSET].to_list() == sorted(pl.concat(frames)[OFFSET].to_list())
    assert dead == [f"{path}:{n}" for n in bad]


def test_a_failed_read_is_raised_after_the_blocks_before_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, good, _ = content()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    cut = files._Cutter.cut
    calls = []

    def failing(self: Any, buf: bytearray) -> Any:
        calls.append(None)
        if len(calls) == 4:
            raise OSError("disk gone")
        return cut(self, buf)

    monkeypatch.setattr(files._Cutter, "cut", failing)
    monkeypatch.setattr(files, "PARSE_THREADS", 2)
    reader = sl.JsonLinesSource(path, block_bytes=64).open(SourceContext("in", SCHEMA, 1, "dead_letter"))
    rows = []
    with pytest.raises(OSError, match="disk gone"):
        for port, batch in reader.batches():
            if port == "out" and batch.height:
                rows += batch.df.drop(OFFSET).to_dicts()
    assert rows == good[: len(rows)] and rows  # the 3 blocks before, in order, and nothing after


def test_a_read_stopped_early_ends_its_threads_and_closes_the_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    data, _, _ = content()
    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    monkeypatch.setattr(files, "PARSE_THREADS", 3)
    frames, _, _ = read(path, 1, stop_after=2)
    assert len(frames) == 2
    assert not [t for t in threading.enumerate() if t.name.startswith("sluice-parse")]


# --- the decoder reads the reader's buffer in place -------------------------------------------------


@pytest.mark.skipif(not json_native.ENABLED, reason="the native decoder is not built")
def test_the_native_decoder_reads_any_byte_buffer_and_keeps_none_of_it() -> None:
    schema = resolve_schema({"i": int, "s": str, "m": {"v": float}})
    block = b"".join(b'{"i": %d, "s": "%s", "m": {"v": %d.5}}\n' % (n, b"long text " * (n % 4), n) for n in range(50))
    want = pl.read_ndjson(block, schema=schema.wire)
    buf = bytearray(b"xx\n" + block + b"{broken")  # the block inside a larger, reused buffer
    view = memoryview(buf)[3:3 + len(block)]
    got = [json_native.decode(b, schema) for b in (block, bytearray(block), view)]
    buf[:] = b"#" * len(buf)  # the next block overwrites the buffer: the rows decoded before stay as they were
    for df in got:
        assert df is not None and df.equals(want)
    with pytest.raises(ValueError, match="contiguous"):
        json_native.decode(memoryview(block)[::2], schema)
