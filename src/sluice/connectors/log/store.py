"""Topics, partitions and segments on local disk.

    <root>/<topic>/topic.json               {"partitions": N}
    <root>/<topic>/<p>/<base offset>.seg    frames (see segment.py), rolled at `segment_bytes`

One process writes a partition at a time (an exclusive lock file guards it); any number read. On open
for writing, a torn tail (a frame cut short or failing its CRC at the end of the newest segment) is cut
off and reported; damage anywhere else raises CorruptSegmentError when read.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from sluice.connectors.log import segment
from sluice.connectors.log.segment import RecordBatch
from sluice.core.errors import CorruptSegmentError, FrameError, LogError

log = logging.getLogger("sluice.log")

FSYNC_POLICIES = ("always", "interval", "never")


@dataclass(frozen=True)
class LogSettings:
    segment_bytes: int = 64 << 20
    fsync: str = "interval"  # "always": after every append; "interval": at most every fsync_interval_s; "never"
    fsync_interval_s: float = 1.0
    retention_bytes: int | None = None  # per partition; whole old segments are deleted past it
    retention_ms: int | None = None  # segments whose newest record is older than this are deleted

    def __post_init__(self) -> None:
        if self.fsync not in FSYNC_POLICIES:
            raise LogError(f"fsync must be one of {FSYNC_POLICIES}, got {self.fsync!r}")


class Log:
    """A directory of topics."""

    def __init__(self, root: str | Path, settings: LogSettings | None = None) -> None:
        self.root = Path(root)
        self.settings = settings or LogSettings()

    def topics(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "topic.json").exists())

    def create_topic(self, name: str, partitions: int = 1, exist_ok: bool = True) -> None:
        meta = self.root / name / "topic.json"
        if meta.exists():
            have = self.partition_count(name)
            if not exist_ok:
                raise LogError(f"topic {name!r} already exists")
            if have != partitions:
                raise LogError(f"topic {name!r} exists with {have} partitions, not {partitions}")
            return
        if partitions < 1:
            raise LogError(f"a topic needs at least one partition, got {partitions}")
        meta.parent.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"partitions": partitions}))
        os.replace(tmp, meta)

    def partition_count(self, name: str) -> int:
        meta = self.root / name / "topic.json"
        if not meta.exists():
            raise LogError(f"topic {name!r} does not exist under {self.root}; topics: {', '.join(self.topics()) or 'none'}")
        return int(json.loads(meta.read_text())["partitions"])

    def partition(self, topic: str, p: int, writable: bool = False) -> Partition:
        count = self.partition_count(topic)
        if not 0 <= p < count:
            raise LogError(f"topic {topic!r} has partitions 0..{count - 1}, not {p}")
        return Partition(self.root / topic / str(p), self.settings, writable)


class Partition:
    def __init__(self, directory: Path, settings: LogSettings, writable: bool) -> None:
        self.dir = directory
        self.settings = settings
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._file = None
        self._last_sync = time.monotonic()
        # index: (base offset, segment path, position, count) of every frame
        self.index: list[tuple[int, Path, int, int]] = []
        self._scanned: dict[Path, int] = {}
        if writable:
            self._lock_fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise LogError(f"partition {self.dir} is being written by another process") from exc
            self._recover_tail()
        self.refresh()

    # --- index ---------------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        return sorted(self.dir.glob("*.seg"))

    def refresh(self) -> None:
        """Index frames appended since the last look (by this or another process)."""
        for seg in self.segments():
            pos = self._scanned.get(seg, 0)
            size = seg.stat().st_size
            if pos >= size:
                continue
            with open(seg, "rb") as f:
                f.seek(pos)
                data = f.read(size - pos)
            at = 0
            while at < len(data):
                try:
                    base, n, nxt = segment.peek(data, at)
                except FrameError:
                    break  # a frame being written right now, or a torn tail a writer will cut
                self.index.append((base, seg, pos + at, n))
                at = nxt
            self._scanned[seg] = pos + at

    @property
    def end_offset(self) -> int:
        if not self.index:
            segs = self.segments()
            return int(segs[-1].stem) if segs else 0
        base, _s, _p, n = self.index[-1]
        return base + n

    @property
    def start_offset(self) -> int:
        return self.index[0][0] if self.index else self.end_offset

    def _recover_tail(self) -> None:
        segs = self.segments()
        if not segs:
            return
        last = segs[-1]
        data = last.read_bytes()
        pos = 0
        good = 0
        while pos < len(data):
            try:
                _batch, nxt = segment.decode(data, pos)
            except FrameError as exc:
                log.warning("log %s: cut a torn tail of %d bytes at position %d of %s (%s)",
                            self.dir, len(data) - pos, pos, last.name, exc)
                break
            pos = good = nxt
        if good < len(data):
            with open(last, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())

    # --- writing -------------------------------------------------------------------------------
    def append(self, timestamps: npt.NDArray[np.int64], values: bytes, value_offsets: npt.NDArray[np.uint32],
               keys: bytes = b"", key_offsets: npt.NDArray[np.uint32] | None = None, flags: int = 0) -> int:
        """Append one batch of records; returns the offset of the first."""
        if self._lock_fd is None:
            raise LogError(f"partition {self.dir} was opened read-only")
        base = self.end_offset
        frame = segment.encode(base, timestamps, values, value_offsets, keys, key_offsets, flags)
        seg = self._active_segment(base, len(frame))
        with open(seg, "ab") as f:
            pos = f.tell()
            f.write(frame)
            f.flush()
            self._maybe_sync(f.fileno())
        self.index.append((base, seg, pos, len(timestamps)))
        self._scanned[seg] = pos + len(frame)
        self._apply_retention()
        return base

    def _active_segment(self, base: int, incoming: int) -> Path:
        segs = self.segments()
        if segs and segs[-1].stat().st_size + incoming <= self.settings.segment_bytes:
            return segs[-1]
        if segs and segs[-1].stat().st_size == 0:
            return segs[-1]
        seg = self.dir / f"{base:020d}.seg"
        seg.touch()
        _fsync_dir(self.dir)
        return seg

    def _maybe_sync(self, fd: int) -> None:
        policy = self.settings.fsync
        now = time.monotonic()
        if policy == "always" or (policy == "interval" and now - self._last_sync >= self.settings.fsync_interval_s):
            os.fsync(fd)
            self._last_sync = now

    def sync(self) -> None:
        segs = self.segments()
        if segs:
            with open(segs[-1], "rb") as f:
                os.fsync(f.fileno())

    def _apply_retention(self) -> None:
        s = self.settings
        if s.retention_bytes is None and s.retention_ms is None:
            return
        segs = self.segments()
        total = sum(p.stat().st_size for p in segs)
        now_ms = int(time.time() * 1000)
        for seg in segs[:-1]:  # never the active segment
            frames = [e for e in self.index if e[1] == seg]
            too_big = s.retention_bytes is not None and total > s.retention_bytes
            too_old = False
            if s.retention_ms is not None and frames:
                newest = max(self._read_frame(e).timestamps.max() for e in frames)
                too_old = now_ms - int(newest) > s.retention_ms
            if not (too_big or too_old):
                break
            total -= seg.stat().st_size
            seg.unlink()
            self.index = [e for e in self.index if e[1] != seg]
            self._scanned.pop(seg, None)

    def truncate(self, offset: int) -> None:
        """Drop every record at or after `offset` (a frame boundary): used to take back an unfinished commit."""
        if self._lock_fd is None:
            raise LogError(f"partition {self.dir} was opened read-only")
        if offset >= self.end_offset:
            return
        cut = [e for e in self.index if e[0] >= offset]
        if any(e[0] < offset < e[0] + e[3] for e in self.index):
            raise LogError(f"offset {offset} is inside a frame of {self.dir}; truncation works at frame boundaries")
        _base, seg, pos, _n = cut[0]
        with open(seg, "r+b") as f:
            f.truncate(pos)
            os.fsync(f.fileno())
        for later in self.segments():
            if later > seg:
                later.unlink()
        self.index = [e for e in self.index if e[0] < offset]
        self._scanned = {p: (pos if p == seg else n) for p, n in self._scanned.items() if p <= seg}
        _fsync_dir(self.dir)

    def close(self) -> None:
        if self._lock_fd is not None:
            self.sync()
            os.close(self._lock_fd)
            self._lock_fd = None

    # --- reading -------------------------------------------------------------------------------
    def _read_frame(self, entry: tuple[int, Path, int, int]) -> RecordBatch:
        base, seg, pos, _n = entry
        with open(seg, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
                try:
                    batch, _end = segment.decode(mm, pos)
                except FrameError as exc:
                    raise CorruptSegmentError(
                        f"log segment {seg} is damaged at position {pos} (offset {base}): {exc}. "
                        "Restore the partition from a replica or truncate it before that offset"
                    ) from exc
        return batch

    def read(self, from_offset: int, until_offset: int | None = None) -> Iterator[tuple[RecordBatch, int]]:
        """Frames holding offsets ≥ from_offset (and < until_offset), each with the index of its first wanted record."""
        index = self.index  # appends go past `stop`; retention and truncation replace the list, not change it
        stop = len(index)
        # frames are contiguous, so their end offsets ascend: the first frame ending after from_offset is a bisection
        at = bisect.bisect_right(index, from_offset, 0, stop, key=lambda e: e[0] + e[3])
        for i in range(at, stop):
            entry = index[i]
            base = entry[0]
            if until_offset is not None and base >= until_offset:
                return
            yield self._read_frame(entry), max(0, from_offset - base)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
