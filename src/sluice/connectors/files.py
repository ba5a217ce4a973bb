"""Files: JSON Lines, CSV and Parquet, read and written; Parquet/JSONL output partitioned by date/hour.

Each input file is one source partition. Output files appear atomically (written under a dot-name,
then renamed), so a reader never sees half a file.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl

from sluice.connectors.api import SinkContext, SourceContext
from sluice.connectors.staging import new_lineage
from sluice.core.batch import OFFSET, TIME, Batch, Origin, user_columns, with_series
from sluice.core.errors import DecodeError, HeaderError, IncompatibleCheckpointError, PlanError, SinkError
from sluice.core.schema import Schema
from sluice.formats.api import BadRecord, Decoded
from sluice.formats.decode import Split, record_numbers, set_aside, split
from sluice.formats.json import Json
from sluice.formats.json_check import BOM

if TYPE_CHECKING:
    from sluice.formats.csv import Csv, CsvFile

FIRST_BLOCK_BYTES = 256 << 10
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 1 << 20, 64 << 20  # the bounds of a block size chosen from the data
OLD_BLOCK_BYTES = 8 << 20  # the one block size before it was chosen from the data
log = logging.getLogger("sluice.files")


def _expand(paths: str | Path | Sequence[str | Path], step: str, suffix: str, allow_empty: bool = False) -> list[Path]:
    """The input files, checked before the run starts: each named file exists and is a file, and each
    glob (`*`, `?`, `[…]`; `**` spans directories) matches at least one file unless `allow_empty`."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    out: list[Path] = []
    for item in items:
        text = str(item)
        if any(c in text for c in "*?["):
            matched = [Path(m) for m in sorted(glob(text, recursive=True)) if os.path.isfile(m)]
            if not matched and not allow_empty:
                raise PlanError(
                    f"step {step!r}: no input files: the glob {text!r}{_relative(text)} matches no files. Fix: check the "
                    f"pattern, or pass allow_empty=True if files are still to come and an empty read is expected"
                )
            out.extend(matched)
            continue
        path = Path(item)
        if path.is_dir():
            raise PlanError(
                f"step {step!r}: input {text!r} is a directory, not a file. Fix: give a glob such as "
                f"'{path / ('*' + suffix)}' (or '{path / '**' / ('*' + suffix)}' to include subdirectories)"
            )
        if not path.exists():
            raise PlanError(
                f"step {step!r}: input file {text!r}{_relative(text)} does not exist. "
                f"Fix: check the path, or write it as a glob with allow_empty=True if it may not exist yet"
            )
        out.append(path)
    return out


def _relative(path: str) -> str:
    return "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"


def _slices(df: pl.DataFrame, size: int) -> Iterator[pl.DataFrame]:
    for start in range(0, df.height, size):
        yield df.slice(start, size)


def _eof(origin: Origin) -> tuple[str, Batch]:
    return "out", Batch(pl.DataFrame(), origin=origin, end_of_partition=True)


class _FileReader:
    """What every file reader shares: its files (one partition each) and a resumable position."""

    def __init__(self, ctx: SourceContext, files: list[Path], start: dict[str, int]) -> None:
        self.ctx = ctx
        self.files = files
        self.pos = dict(start)
        self.start = dict(start)

    def position(self) -> dict[str, Any]:
        return dict(self.pos)

    def seek(self, position: dict[str, Any]) -> None:
        self.pos = {k: int(v) for k, v in position.items()}
        self.start = dict(self.pos)

    def partitions(self) -> int:
        return len(self.files)

    def close(self) -> None:
        pass

    def _split(self, path: Path, decoded: Decoded, lines: Callable[[], list[int]]) -> Split:
        """Good rows and dead letters (or the error), bad records named by `file:line`; `lines()` gives each
        record's line, and is called only when a record is bad."""
        if not decoded.bad:
            return split(decoded, self.ctx.step, self.ctx.on_error, str)
        at = lines()
        return split(decoded, self.ctx.step, self.ctx.on_error, lambda i: f"{path}:{at[i]}", unit="line")


# --- JSON Lines ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JsonLinesSource:
    """One JSON object per line. `path` may be a glob or a list; each file is one partition.

    `block_bytes`: the most bytes read (and decoded) at a time; by default each file's blocks are sized to hold
    about 90% of a batch (its lines' mean length measured on the file's first block; 1-64 MB), so a block
    makes one full batch rather than a full one and a small remainder."""

    path: str | Path | Sequence[str | Path]
    block_bytes: int | None = None
    allow_empty: bool = False  # a glob that matches no file reads nothing instead of failing

    def open(self, ctx: SourceContext) -> _JsonLinesReader:
        return _JsonLinesReader(self, ctx, _expand(self.path, ctx.step, ".jsonl", self.allow_empty))


class _Block(NamedTuple):
    """A block of a JSON Lines file, decoded (in the parse thread)."""

    byte: int  # where it starts in the file
    length: int  # its bytes: it ends at a line end, or at the end of the file
    asked: int  # the bytes it was read with (a resumed read asks for as many, so it cuts the same block)
    limit: int  # the most bytes a block of its file is read with (a resumed read keeps it)
    rows: pl.DataFrame  # its good rows, with their record ordinals (OFFSET)
    bad: list[BadRecord]  # its bad records (none when a resumed read set them aside before)
    lines: list[int]  # each record's line number: only when a record is bad
    records: int  # good and bad


class _JsonLinesReader(_FileReader):
    def __init__(self, spec: JsonLinesSource, ctx: SourceContext, files: list[Path]) -> None:
        # where to resume: file index, byte where its current block starts, rows of that block consumed,
        # and the record ordinal at the block's start
        super().__init__(ctx, files, {"file": 0, "byte": 0, "skip": 0, "ordinal": 0})
        self.spec = spec
        self.format = Json()
        self.schema = ctx.schema

    def batches(self) -> Iterator[tuple[str, Batch]]:
        start = self.start
        for p, path in enumerate(self.files):
            if p < start["file"]:
                continue
            resume = p == start["file"]
            origin = Origin(self.ctx.step, p, str(path), unit="record")
            ordinal = start["ordinal"] if resume else 0
            skip = start["skip"] if resume else 0
            want = FIRST_BLOCK_BYTES
            # the file's block size as chosen when its read began (a checkpoint older than the choice: 8 MB)
            limit: int | None = self.spec.block_bytes or (start.get("limit") if resume else None)
            if resume and start["byte"]:  # the size this block was read with (older checkpoints: a whole block)
                limit = limit or OLD_BLOCK_BYTES
                want = start.get("block", limit)
            byte = start["byte"] if resume else 0
            for block in _ParseAhead(self, path, byte, want, limit).blocks(ordinal, skip):
                dead = set_aside(block.bad, self.ctx.step, self.ctx.on_error,
                                 lambda i: f"{path}:{block.lines[i]}", unit="line")  # noqa: B023
                if dead is not None:
                    yield "dead_letters", dead
                df, size = block.rows, self.ctx.batch_size
                for first in range(skip, df.height, size):
                    piece = df.slice(first, size)
                    self.pos = {"file": p, "byte": block.byte, "skip": first + piece.height, "ordinal": ordinal,
                                "block": block.asked, "limit": block.limit}
                    yield "out", Batch(piece, origin=origin)
                skip = 0
                ordinal += block.records
                self.pos = {"file": p, "byte": block.byte + block.length, "skip": 0, "ordinal": ordinal,
                            "block": min(block.asked * 2, block.limit), "limit": block.limit}
            self.pos = {"file": p + 1, "byte": 0, "skip": 0, "ordinal": 0}
            yield _eof(origin)


PARSE_THREADS = max(1, int(os.environ.get("SLUICE_PARSE_THREADS", "0")) or min(4, os.cpu_count() or 1))


class _ParseAhead:
    """The decoded blocks of one file, in order, decoded ahead of the caller by `PARSE_THREADS` threads (named
    sluice-parse_N). Each thread takes the next block from the file in turn (under the lock: one `_Cutter`,
    so blocks are cut exactly as a single reader cuts them) and decodes it outside the lock, into its own
    buffer; the native decoder releases the GIL, so blocks decode on every core beside the operators. At most
    `depth` blocks are cut and not yet taken by the caller: memory is bounded whatever the operators' pace.

    What depends on the blocks before (the rows' record ordinals, a bad record's line number) is set by the
    caller's thread as it takes each block, in order."""

    def __init__(self, reader: _JsonLinesReader, path: Path, start: int, want: int, limit: int | None) -> None:
        self.reader, self.path = reader, path
        self.cutter = _Cutter(path, start, want, limit, reader.ctx.batch_size)
        self.cond = threading.Condition()
        self.done: dict[int, Any] = {}  # decoded blocks (or the exception that stopped one), by sequence number
        self.cut = 0  # blocks cut
        self.taken = 0  # blocks the caller took
        self.end: int | None = None  # the number of blocks, once the file's end is reached (or a read failed)
        self.stop = False
        n = PARSE_THREADS
        self.depth = n + 1  # each thread one block, and one decoded and waiting
        self.threads = [threading.Thread(target=self._work, name=f"sluice-parse_{i}", daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        buf = bytearray()
        reader = self.reader
        while True:
            with self.cond:
                while not self.stop and self.end is None and self.cut - self.taken >= self.depth:
                    self.cond.wait()
                if self.stop or self.end is not None:
                    return
                seq = self.cut
                try:
                    got = self.cutter.cut(buf)
                    if got is not None and reader.schema is None:  # inferred from the first block, once
                        reader.schema = Schema(pl.read_ndjson(io.BytesIO(bytes(got[1][: got[2]]))).schema, ())
                except BaseException as exc:  # handed to the caller's thread, raised there
                    self.done[seq] = exc
                    got = None
                if got is None:
                    self.end = seq + (seq in self.done)
                    self.cond.notify_all()
                    return
                self.cut += 1
                schema = reader.schema
                assert schema is not None
                limit = self.cutter.limit
            byte, buf, n, asked = got
            result: Any
            try:
                with memoryview(buf) as view:
                    block = view[:n]
                    decoded = reader.format.decode_block(block, schema)
                    # a bad record's line within its block (the block's first line is set by the caller)
                    rel = _record_lines(bytes(block), 1) if decoded.bad else []
                    block.release()
                numbers = record_numbers(decoded, 0, OFFSET)  # within the block; the caller adds the first
                result = (byte, n, asked, limit, decoded, rel, numbers)
            except BaseException as exc:  # handed to the caller's thread, raised there
                result = exc
            with self.cond:
                self.done[seq] = result
                self.cond.notify_all()

    def blocks(self, ordinal: int, skip: int) -> Iterator[_Block]:
        """The blocks in file order, their rows numbered from `ordinal`. `skip`: rows of the first block consumed
        before (its bad records were set aside then)."""
        known = (0, 1)  # a line start and its number: bad records' lines are counted on from the last one
        seq = 0
        try:
            while True:
                with self.cond:
                    while seq not in self.done and (self.end is None or seq < self.end):
                        self.cond.wait()
                    if seq not in self.done:
                        return
                    got = self.done.pop(seq)
                    self.taken += 1
                    self.cond.notify_all()
                if isinstance(got, BaseException):
                    raise got
                byte, length, asked, limit, decoded, rel, numbers = got
                records = decoded.rows.height + len(decoded.bad)
                bad = [] if skip else decoded.bad
                lines: list[int] = []
                if bad:
                    known = (byte, _line_at(self.path, byte, known))
                    lines = [known[1] - 1 + r for r in rel]
                numbers = numbers + ordinal if ordinal else numbers
                rows = with_series(decoded.rows, [numbers])
                yield _Block(byte, length, asked, limit, rows, bad, lines, records)
                ordinal += records
                skip = 0
                seq += 1
        finally:
            with self.cond:
                self.stop = True
                self.cond.notify_all()
            for t in self.threads:
                t.join()  # a block being decoded is finished first
            self.cutter.close()


class _Cutter:
    """The blocks of one JSON Lines file from `start`, cut one after another into a caller's buffer; each block
    ends at a line end, or at the end of the file (as it was when the read began).

    From the start of a file the first blocks are small and double up to `limit` (`want` is the size of the
    first): the first records reach the flow (and the progress line) within a fraction of a second, not after
    a whole 8 MB block is parsed. A position records the size its block was read with, so a resumed read cuts
    the same blocks (and batches) as the run it resumes. A block holds the lines that begin in its first
    `asked` bytes and end within them; a line longer than that is read on, `limit` bytes at a time, to the
    first read that holds a line end (and the block ends at the last line end of that read).

    Plain reads, not mmap: pages of a mapped file stay resident, so memory would grow with the file. The bytes
    read past a block's last line end (part of a line, as a rule) are carried to the start of the next block.
    Not thread-safe: callers take turns (`_ParseAhead` holds a lock around `cut`)."""

    def __init__(self, path: Path, start: int, want: int, limit: int | None, batch_size: int = 0) -> None:
        self.f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by close())
        self.size = os.fstat(self.f.fileno()).st_size
        self.f.seek(start)
        self.pos, self.want = start, want
        self.limit = limit or 0  # 0: chosen from the first block, to hold about 90% of `batch_size` lines
        self.batch_size = batch_size
        self.carry = b""

    def close(self) -> None:
        self.f.close()

    def cut(self, buf: bytearray) -> tuple[int, bytearray, int, int] | None:
        """The next block: (its byte position, the buffer holding it at its start — `buf`, or a larger one —,
        its length, the bytes it was asked with); None at the end of the file."""
        if self.pos >= self.size:
            return None
        asked = min(self.want, self.limit) if self.limit else self.want
        self.want = asked * 2
        have = len(self.carry)
        if len(buf) < have:
            buf = bytearray(have)
        buf[:have] = self.carry  # the same length: never resizes a buffer a view may still hold

        def fill(upto: int) -> int:
            """Read until the buffer holds `upto` bytes from pos (fewer at the end of the file)."""
            nonlocal buf, have
            upto = min(upto, self.size - self.pos)
            if upto > len(buf):  # the first blocks double up; a long line doubles it on
                grown = bytearray(min(max(upto, 2 * len(buf)), self.size - self.pos))
                grown[:have] = memoryview(buf)[:have]
                buf = grown
            with memoryview(buf) as view:
                while have < upto:
                    got = self.f.readinto(view[have:upto])
                    if not got:  # the file was cut short since its size was taken
                        self.size = self.pos + have
                        break
                    have += got
            return min(upto, have)

        n = fill(asked)
        if n == 0:
            return None
        if self.pos + n < self.size:  # not the end of the file: end at the window's last line end
            cut = buf.rfind(b"\n", 0, n)
            while cut < 0:  # a line longer than the block: read on
                seen = n
                n = fill(n + (self.limit or asked))
                if self.pos + n >= self.size:
                    break
                cut = buf.rfind(b"\n", seen, n)
            if cut >= 0:
                n = cut + 1
        if self.pos == 0 and buf.startswith(BOM):
            # a byte order mark before the first line: blanks keep every byte's and line's position
            buf[: len(BOM)] = b"   "
        self.carry = bytes(memoryview(buf)[n:have])
        if not self.limit:
            lines = buf.count(b"\n", 0, n) + (buf[n - 1] != ord("\n"))
            self.limit = min(max(int(0.9 * self.batch_size * n / lines), MIN_BLOCK_BYTES), MAX_BLOCK_BYTES)
        pos, self.pos = self.pos, self.pos + n
        return pos, buf, n, asked


def _line_at(path: Path, byte_pos: int, since: tuple[int, int] = (0, 1)) -> int:
    """The 1-based line number at `byte_pos`, counted (only when an error needs it) from `since`: a byte at or
    before it that starts a line, and that line's number. Read a block at a time, not the whole prefix."""
    at, line = since
    with open(path, "rb") as f:
        f.seek(at)
        while at < byte_pos and (chunk := f.read(min(8 << 20, byte_pos - at))):
            line += chunk.count(b"\n")
            at += len(chunk)
    return line


def _record_lines(block: bytes, first_line: int) -> list[int]:
    """The 1-based line number of each non-blank line of `block`."""
    return [first_line + i for i, ln in enumerate(block.split(b"\n")) if ln.strip()]


# --- CSV and Parquet sources --------------------------------------------------------------------


@dataclass(frozen=True)
class CsvSource:
    """CSV with a header row. Each file is one partition. Cells are checked against the declared schema as
    JSON values are (types, required fields), and bad rows are reported or dead-lettered by `file:line`."""

    path: str | Path | Sequence[str | Path]
    separator: str = ","
    allow_empty: bool = False  # a glob that matches no file reads nothing instead of failing

    def open(self, ctx: SourceContext) -> _CsvReader:
        from sluice.formats.csv import Csv  # loaded only by flows that read CSV

        fmt = Csv(self.separator)
        if ctx.schema is not None:
            fmt.check(ctx.schema, ctx.step)
        return _CsvReader(ctx, _expand(self.path, ctx.step, ".csv", self.allow_empty), fmt)


class _CsvReader(_FileReader):
    def __init__(self, ctx: SourceContext, files: list[Path], fmt: Csv) -> None:
        # where to resume: file index, records consumed, and dead letters already sent (by record index)
        super().__init__(ctx, files, {"file": 0, "row": 0, "dead": 0})
        self.format = fmt
        self.schema = ctx.schema

    def _decode(self, path: Path) -> CsvFile:
        data = path.read_bytes()
        if self.schema is None:
            self.schema = self.format.infer(data)
        try:
            return self.format.decode_file(data, self.schema)
        except HeaderError as exc:
            raise DecodeError(self.ctx.step, f"{path}:1", str(exc),
                              "add the column to the file, or declare the field sl.Optional(...)") from exc

    def batches(self) -> Iterator[tuple[str, Batch]]:
        for p, path in enumerate(self.files):
            if p < self.start["file"]:
                continue
            resume = p == self.start["file"]
            row, dead = (self.start["row"], self.start["dead"]) if resume else (0, 0)
            origin = Origin(self.ctx.step, p, str(path), unit="record")
            file = self._decode(path)
            bad = [b for b in file.decoded.bad if b.index >= dead]  # the rest were set aside before
            if bad:
                dead = bad[-1].index + 1
                self.pos = {"file": p, "row": row, "dead": dead}
            rows, kept, dead_letters = self._split(path, file.decoded._replace(bad=bad), lambda: file.lines)  # noqa: B023
            if dead_letters is not None:
                yield "dead_letters", dead_letters
            df = rows.with_columns(pl.Series(OFFSET, kept, dtype=pl.Int64)).filter(pl.col(OFFSET) >= row)
            for piece in _slices(df, self.ctx.batch_size):
                self.pos = {"file": p, "row": int(piece[OFFSET][-1]) + 1, "dead": dead}
                yield "out", Batch(piece, origin=origin)
            self.pos = {"file": p + 1, "row": 0, "dead": 0}
            yield _eof(origin)


@dataclass(frozen=True)
class ParquetSource:
    """Parquet files, read row group by row group. Each file is one partition."""

    path: str | Path | Sequence[str | Path]
    allow_empty: bool = False  # a glob that matches no file reads nothing instead of failing

    def open(self, ctx: SourceContext) -> _TableReader:
        import pyarrow.parquet as pq  # loaded only by flows that read Parquet

        def load(path: Path) -> Iterator[pl.DataFrame]:
            pf = pq.ParquetFile(path)
            cols = ctx.schema.names if ctx.schema is not None else None
            for rb in pf.iter_batches(batch_size=max(ctx.batch_size, 1), columns=cols):
                frame = pl.from_arrow(rb)
                assert isinstance(frame, pl.DataFrame)
                yield frame

        return _TableReader(ctx, _expand(self.path, ctx.step, ".parquet", self.allow_empty), load)


class _TableReader(_FileReader):
    def __init__(self, ctx: SourceContext, files: list[Path], load: object) -> None:
        super().__init__(ctx, files, {"file": 0, "row": 0})
        self.load = load

    def batches(self) -> Iterator[tuple[str, Batch]]:
        for p, path in enumerate(self.files):
            if p < self.start["file"]:
                continue
            skip = self.start["row"] if p == self.start["file"] else 0
            origin = Origin(self.ctx.step, p, str(path), unit="record")
            loaded = self.load(path)  # type: ignore[operator]
            frames = [loaded] if isinstance(loaded, pl.DataFrame) else loaded
            ordinal = 0
            for frame in frames:
                frame = frame.with_columns(pl.int_range(ordinal, ordinal + frame.height, dtype=pl.Int64).alias(OFFSET))
                ordinal += frame.height
                frame = frame.filter(pl.col(OFFSET) >= skip)
                for piece in _slices(frame, self.ctx.batch_size):
                    self.pos = {"file": p, "row": int(piece[OFFSET][-1]) + 1}
                    yield "out", Batch(piece, origin=origin)
            self.pos = {"file": p + 1, "row": 0}
            yield _eof(origin)


# --- sinks --------------------------------------------------------------------------------------

PARTITIONINGS = ("date", "hour")
MODES = ("replace", "append")


@dataclass(frozen=True)
class _FileSink:
    """What every file sink takes: where, how output is partitioned and cut into files, replace or append."""

    path: str | Path
    partition_by: str | None = None  # "date" or "hour": Hive-style date=YYYY-MM-DD[/hour=H] directories
    time_column: str | None = None  # which column partitions; default: the event time
    rows_per_file: int = 1_000_000
    # "replace": a run's output replaces what an earlier run left, when the run first commits;
    # "append": it adds to it. A run resumed from a checkpoint always continues its own output.
    mode: str = "replace"

    suffix = ""
    appendable = False
    partition_columns = False  # whether each partitioned file also holds its `date` (and `hour`) as columns

    def __post_init__(self) -> None:
        if self.partition_by is not None and self.partition_by not in PARTITIONINGS:
            raise PlanError(f"partition_by must be one of {PARTITIONINGS}, got {self.partition_by!r}")
        if self.mode not in MODES:
            raise PlanError(f"mode must be one of {MODES}, got {self.mode!r}")

    def open(self, ctx: SinkContext) -> _FileWriter:
        return _FileWriter(self, ctx)

    def write_file(self, df: pl.DataFrame, path: Path) -> None:
        raise NotImplementedError

    def append_file(self, df: pl.DataFrame, path: Path, header: bool) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class ParquetSink(_FileSink):
    """Parquet files. Unpartitioned: `path` is a directory of part files (or a file ending in .parquet).
    Partitioned: `date=YYYY-MM-DD[/hour=H]` directories, and each file holds `date` (Date) and `hour`
    (Int64) as columns too, so every reader sees the same types (docs/guarantees.md)."""

    compression: str = "zstd"
    suffix = ".parquet"
    # date (Date) and hour (Int64) inside each file: polars, DuckDB and pyarrow then agree on their types
    partition_columns = True

    def write_file(self, df: pl.DataFrame, path: Path) -> None:
        df.write_parquet(path, compression=self.compression)  # type: ignore[arg-type]


@dataclass(frozen=True)
class JsonLinesSink(_FileSink):
    """JSON Lines files, one object per row."""

    suffix = ".jsonl"
    appendable = True

    def write_file(self, df: pl.DataFrame, path: Path) -> None:
        df.write_ndjson(path)

    def append_file(self, df: pl.DataFrame, path: Path, header: bool) -> None:
        with open(path, "ab") as f:
            df.write_ndjson(f)


@dataclass(frozen=True)
class CsvSink(_FileSink):
    """CSV files with a header row."""

    suffix = ".csv"
    appendable = True

    def write_file(self, df: pl.DataFrame, path: Path) -> None:
        df.write_csv(path)

    def append_file(self, df: pl.DataFrame, path: Path, header: bool) -> None:
        with open(path, "ab") as f:
            df.write_csv(f, include_header=header)


@dataclass
class _FileWriter:
    """Stages rows and publishes them at commit.

    Directory output: each staged file `.part-….stage` is renamed at commit to
    `part-<lineage>-<epoch>-<run>-<seq>`, so the file system itself says which epoch published a file.
    Single-file output (JSONL, CSV): the epoch's rows are staged in `.<name>.stage-<epoch>`; commit
    truncates the target to its length before the epoch and appends them, so commit can be repeated
    (the first epoch of a replacing run renames the stage over the target instead). Every transaction
    records the output path, the epoch, the lineage and (single file) the target's length after it.

    Recovery from an older checkpoint than the newest written (a damaged newest one) cuts the output back
    to exactly that checkpoint: part files of the same lineage from later epochs are deleted, a single
    file is truncated to the recorded length.

    mode="replace": a fresh run (not resumed from a checkpoint) leaves the old output in place until its
    first commit; that transaction lists the old part files to delete (or the old file to remove), so
    recovery repeats the deletion like the renames, and a run that fails before committing changes nothing.
    """

    spec: _FileSink
    ctx: SinkContext
    buffers: dict[str, list[pl.DataFrame]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    epoch: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    staged: list[tuple[str, str]] = field(default_factory=list)
    committed_len: int = 0
    written: list[Path] = field(default_factory=list)
    fresh: bool = False  # not resumed, and nothing prepared yet: the first transaction replaces old output
    lineage: str = field(default_factory=new_lineage)
    # staged files are encoded and written on one background thread, in order, while the operators go on
    # (Polars releases the GIL as it encodes); prepare waits for them
    ahead: _WriteAhead = field(default_factory=lambda: _WriteAhead())

    def __post_init__(self) -> None:
        if self.single_file and self.ctx.task is not None:
            raise PlanError(
                f"sink {self.ctx.step!r}: under the Kafka runtime each task writes its own part files, so a file "
                f"sink needs a directory path, not the single file {str(self.spec.path)!r}"
            )
        if self.single_file and self.ctx.exactly_once and not self.spec.appendable:
            raise PlanError(
                f"sink {self.ctx.step!r}: a single {self.spec.suffix} file cannot grow checkpoint by checkpoint; "
                f"give a directory path (part files are published at each checkpoint)"
            )
        if self.single_file and self.spec.mode == "append" and not self.spec.appendable:
            raise PlanError(
                f"sink {self.ctx.step!r}: a single {self.spec.suffix} file cannot be appended to; "
                f"give a directory path (each run adds part files), or leave mode='replace'"
            )

    @property
    def single_file(self) -> bool:
        return self.spec.partition_by is None and str(self.spec.path).endswith(self.spec.suffix)

    @property
    def part_prefix(self) -> str:
        """Part files of one Kafka-runtime task carry its number, so that its recovery and its replacing
        touch only its own files in a directory that every task writes into."""
        return "part-" if self.ctx.task is None else f"part-t{self.ctx.task}-"

    @property
    def target(self) -> Path:
        return Path(self.spec.path)

    def _stage_path(self, epoch: int) -> Path:
        return self.target.with_name(f".{self.target.name}.stage-{epoch}")

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        if self.spec.partition_by is None:
            self._buffer("", user_columns(df))
            return
        for key, part in self._partition(df):
            self._buffer(key, part)

    def _partition(self, df: pl.DataFrame) -> Iterator[tuple[str, pl.DataFrame]]:
        col = self.spec.time_column
        if col is None:
            if TIME not in df.columns:
                raise PlanError(f"sink {self.ctx.step!r} partitions by time but the stream has no event time; pass time_column=")
            ts = pl.col(TIME).cast(pl.Datetime("ms", "UTC"))
        else:
            dtype = df.schema[col]
            ts = pl.col(col).cast(pl.Datetime("ms", "UTC")) if dtype.is_integer() else pl.col(col).dt.convert_time_zone("UTC") if getattr(dtype, "time_zone", None) else pl.col(col)
        names = ["date"] if self.spec.partition_by == "date" else ["date", "hour"]
        if self.spec.partition_columns and (clash := [n for n in names if n in df.columns]):
            raise PlanError(
                f"sink {self.ctx.step!r} writes the partition column {clash[0]!r} into its files, but the stream "
                f"already has a column {clash[0]!r}. Fix: rename that column before the sink (.with_columns / .select)"
            )
        # hour=7, not hour=07: DuckDB reads a zero-padded hour as text, an unpadded one as a BIGINT like polars
        keys = [ts.dt.date().alias("__sl_date"), ts.dt.hour().cast(pl.Int64).alias("__sl_hour")][: len(names)]
        keyed = df.with_columns(keys)
        for values, part in keyed.partition_by([k.meta.output_name() for k in keys], as_dict=True,
                                               maintain_order=True).items():
            key = "/".join(f"{n}={v}" for n, v in zip(names, values, strict=True))
            rows = user_columns(part)
            if self.spec.partition_columns:
                typed = zip(names, values, (pl.Date, pl.Int64), strict=False)
                rows = rows.with_columns(pl.lit(v, dtype).alias(n) for n, v, dtype in typed)
            yield key, rows

    def _buffer(self, key: str, df: pl.DataFrame) -> None:
        self.buffers.setdefault(key, []).append(df)
        self.rows[key] = self.rows.get(key, 0) + df.height
        limit: int | None = self.spec.rows_per_file if not self.single_file else None
        if self.single_file and self.spec.appendable:
            # one file grows by appends: hand them to the writing thread in batch-sized pieces
            limit = min(self.spec.rows_per_file, APPEND_ROWS)
        if limit is not None and self.rows[key] >= limit:
            self._flush(key)

    def _flush(self, key: str) -> None:
        """Hand the rows buffered under `key` to the writing thread (an error of an earlier write raises)."""
        frames = self.buffers.pop(key, [])
        self.rows.pop(key, None)
        if not frames:
            return
        df = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        if self.single_file:
            stage = self._stage_path(self.epoch)
            if self.spec.appendable:
                header_allowed = self.committed_len == 0

                def write() -> None:
                    stage.parent.mkdir(parents=True, exist_ok=True)
                    first = not stage.exists() or stage.stat().st_size == 0
                    self.spec.append_file(df, stage, header=first and header_allowed)
            else:
                def write() -> None:
                    stage.parent.mkdir(parents=True, exist_ok=True)
                    self.spec.write_file(df, stage)
        else:
            directory = self.target / key if key else self.target
            self.seq += 1
            stage = directory / f".{self.part_prefix}{self.run_id}-{self.seq:06d}{self.spec.suffix}.stage"
            self.staged.append((str(stage), ""))  # named at prepare, once the epoch is known

            def write() -> None:
                directory.mkdir(parents=True, exist_ok=True)
                self.spec.write_file(df, stage)
        self.ahead.submit(lambda: self._io(write, "writing into", self.target))

    def _written(self) -> None:
        """Wait for every staged write handed to the writing thread; the first one that failed raises."""
        self.ahead.wait()

    def _io(self, action: Callable[[], Any], doing: str, path: Path | str) -> Any:
        """Run a file operation; an OSError other than a full disk becomes an error naming the step and path."""
        try:
            return action()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
                raise  # the runtime says what to do about a full disk
            reason = exc.strerror or str(exc)
            raise SinkError(f"write step {self.ctx.step!r}: {doing} {path} failed: {reason}. Fix: make "
                            f"{Path(path).parent} writable (permissions, a read-only mount) and run again; "
                            "a checkpointed run resumes where it was") from None

    def _final(self, stage: str, epoch: int) -> str:
        """`part-<lineage>-<epoch>-<run>-<seq><suffix>` for the stage `.part-<run>-<seq><suffix>.stage`."""
        p = Path(stage)
        rest = p.name[1 + len(self.part_prefix):-len(".stage")]
        return str(p.with_name(f"{self.part_prefix}{self.lineage}-{epoch:06d}-{rest}"))

    def prepare(self, epoch: int) -> dict[str, Any]:
        for key in list(self.buffers):
            self._flush(key)
        self._written()
        txn: dict[str, Any] = self._replaced() if self.fresh else {}
        txn.update(path=str(self.spec.path), epoch=epoch, lineage=self.lineage)
        self.fresh = False
        if self.single_file:
            stage = self._stage_path(self.epoch)
            self.epoch += 1
            length = 0 if "remove" in txn else self.committed_len
            if stage.exists():
                self._io(lambda: _fsync_file(stage), "syncing", stage)
                txn["append"] = [str(stage), str(self.target), self.committed_len]
                length = self.committed_len + stage.stat().st_size
            txn["length"] = length
            return txn
        for st, _final in self.staged:
            self._io(lambda st=st: _fsync_file(Path(st)), "syncing", st)  # type: ignore[misc]
        txn["files"] = [(st, self._final(st, epoch)) for st, _final in self.staged]
        self.staged = []
        return txn

    def _replaced(self) -> dict[str, Any]:
        """What the first commit of a fresh replacing run deletes: the earlier runs' visible output."""
        if self.spec.mode != "replace":
            return {}
        if self.single_file:
            return {"remove": [str(self.target)]} if self.target.exists() else {}
        if not self.target.is_dir():
            return {}
        return {"remove": sorted(str(p) for p in self.target.rglob(f"{self.part_prefix}*{self.spec.suffix}"))}

    def commit(self, txn: dict[str, Any]) -> None:
        self._io(lambda: self._commit(txn), "publishing into", self.target)

    def _commit(self, txn: dict[str, Any]) -> None:
        for st, final in txn.get("files", []):
            if os.path.exists(st):
                os.replace(st, final)
                self.written.append(Path(final))
        if self.single_file and "append" in txn and txn["append"][2] == 0:
            txn = {k: v for k, v in txn.items() if k != "remove"}  # the rename below replaces the old file
        for old in txn.get("remove", []):
            _remove_part(Path(old), self.target)
        if "append" in txn:
            st, target, before = txn["append"]
            if os.path.exists(st) and int(before) == 0:
                os.replace(st, target)  # atomic: a reader sees the old file or the new one
                self.written.append(Path(target))
            elif os.path.exists(st):
                with open(target, "ab") as out:
                    out.truncate(int(before))
                    with open(st, "rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    out.flush()
                    os.fsync(out.fileno())
                os.unlink(st)
                self.written.append(Path(target))
            self.committed_len = os.path.getsize(target)

    def abort(self, txn: dict[str, Any]) -> None:
        """The epoch's record failed: drop what it staged (nothing of it was published)."""
        for st, _final in txn.get("files", []):
            Path(st).unlink(missing_ok=True)
        if "append" in txn:
            Path(txn["append"][0]).unlink(missing_ok=True)
        if "remove" in txn:
            self.fresh = True  # the next transaction replaces the old output instead

    def recover(self, txn: dict[str, Any] | None) -> None:
        """Publish the last checkpoint's transaction again, then drop everything staged after it, and cut
        back whatever epochs after it published (recovery from an older checkpoint than the newest)."""
        if txn and txn.get("path") is not None and Path(txn["path"]) != Path(self.spec.path):
            raise IncompatibleCheckpointError(
                f"write step {self.ctx.step!r}: its output path changed from {txn['path']!r} to "
                f"{str(self.spec.path)!r} since the checkpoint; the rows written so far are in the old path and "
                f"a resumed run would write only the rest into the new one. Fix: move the output "
                f"(mv {txn['path']} {self.spec.path}) and run again, or give back the old path, or start this sink "
                f"empty at the new path with drop_state=[{self.ctx.step!r}] (--drop-state {self.ctx.step})")
        if txn and txn.get("lineage"):
            self.lineage = str(txn["lineage"])
        self._io(lambda: self._recover(txn), "recovering", self.target)
        self.fresh = txn is None

    def _recover(self, txn: dict[str, Any] | None) -> None:
        if txn:
            self._commit(txn)
        if self.single_file:
            for stray in self.target.parent.glob(f".{self.target.name}.stage-*"):
                stray.unlink()
            if txn and txn.get("length") is not None:
                length = int(txn["length"])
                if self.target.exists() and self.target.stat().st_size > length:
                    log.warning("write step %r: %s holds %d bytes written after checkpoint epoch %s; cut back "
                                "to the %d bytes of that checkpoint", self.ctx.step, self.target,
                                self.target.stat().st_size - length, txn.get("epoch"), length)
                    with open(self.target, "r+b") as out:
                        out.truncate(length)
                        os.fsync(out.fileno())
                self.committed_len = min(length, self.target.stat().st_size) if self.target.exists() else 0
            elif not txn or "append" not in txn:
                keep = txn is not None or self.spec.mode == "append"  # a fresh replacing run starts from nothing
                self.committed_len = self.target.stat().st_size if keep and self.target.exists() else 0
        elif self.target.exists():
            for stray in self.target.rglob(f".{self.part_prefix}*.stage"):
                stray.unlink()
            if txn and txn.get("epoch") is not None and txn.get("lineage"):
                self._cut_back(str(txn["lineage"]), int(txn["epoch"]))

    def _cut_back(self, lineage: str, epoch: int) -> None:
        """Delete the part files this lineage published in epochs after `epoch`."""
        head = f"{self.part_prefix}{lineage}-"
        later = []
        for part in self.target.rglob(f"{head}*{self.spec.suffix}"):
            number = part.name[len(head):].split("-", 1)[0]
            if number.isdigit() and int(number) > epoch:
                later.append(part)
        if later:
            log.warning("write step %r: %d part file(s) in %s were published after checkpoint epoch %d; deleted, "
                        "so the output is exactly that checkpoint's", self.ctx.step, len(later), self.target, epoch)
        for part in later:
            _remove_part(part, self.target)

    def close(self) -> None:
        self.ahead.close()


APPEND_ROWS = 65_536  # rows per append to a single JSON Lines or CSV file, on the writing thread
AHEAD = 2  # writes handed over and not yet done, at most: more wait (memory stays bounded)


class _WriteAhead:
    """One thread that runs a file sink's staged writes in the order they were handed over."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.pending: list[Any] = []  # futures, oldest first

    def submit(self, write: Callable[[], None]) -> None:
        while len(self.pending) >= AHEAD:
            self.pending.pop(0).result()  # the oldest: its error, if any, raises here
        if self.pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1, thread_name_prefix="sluice-sink")
        self.pending.append(self.pool.submit(write))

    def wait(self) -> None:
        while self.pending:
            self.pending.pop(0).result()

    def close(self) -> None:
        """Let the writes handed over finish (an error raised already, or the run is ending on another)."""
        for f in self.pending:
            f.exception()
        self.pending = []
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _remove_part(path: Path, root: Path) -> None:
    """Delete an old output file, and the partition directories it leaves empty (never `root` itself)."""
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != root and root in parent.parents and parent.is_dir() and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
