"""The on-disk frame of one record batch, columnar like Kafka's record batches.

    magic "SLB1" | length u32 | crc32 u32 | header | timestamps i64[n] | key offsets u32[n+1] | keys
                 | value offsets u32[n+1] | values

`crc32` covers header and payload; `length` is their size. A frame cut short (a torn write) or failing
its CRC at the tail of the newest segment is truncated away on open; anywhere else it is corruption.
Flag NEWLINE_JOINED: `values` is exactly the values each followed by b"\n" (JSON Lines), so a decoder
can parse the blob as is, without splitting it into records.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sluice.core.errors import FrameError

MAGIC = b"SLB1"
PREFIX = struct.Struct("<4sII")  # magic, length, crc
HEADER = struct.Struct("<qiqqIII")  # base offset, count, min ts, max ts, keys len, values len, flags
NEWLINE_JOINED = 1
HAS_KEYS = 2


@dataclass(frozen=True)
class RecordBatch:
    base_offset: int
    timestamps: npt.NDArray[np.int64]
    key_offsets: npt.NDArray[np.uint32] | None
    keys: bytes
    value_offsets: npt.NDArray[np.uint32]
    values: bytes
    flags: int

    @property
    def count(self) -> int:
        return len(self.timestamps)

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.count

    def value(self, i: int) -> bytes:
        a, b = int(self.value_offsets[i]), int(self.value_offsets[i + 1])
        if self.flags & NEWLINE_JOINED:
            b -= 1
        return self.values[a:b]

    def key(self, i: int) -> bytes | None:
        if self.key_offsets is None:
            return None
        return self.keys[int(self.key_offsets[i]) : int(self.key_offsets[i + 1])]

    def newline_blob(self, start: int = 0) -> bytes:
        """Values from record `start` on, each followed by a newline."""
        if self.flags & NEWLINE_JOINED:
            return self.values[int(self.value_offsets[start]) :]
        return b"".join(self.value(i) + b"\n" for i in range(start, self.count))


def encode(base_offset: int, timestamps: npt.NDArray[np.int64], values: bytes, value_offsets: npt.NDArray[np.uint32],
           keys: bytes = b"", key_offsets: npt.NDArray[np.uint32] | None = None, flags: int = 0) -> bytes:
    n = len(timestamps)
    if key_offsets is not None:
        flags |= HAS_KEYS
    header = HEADER.pack(base_offset, n, int(timestamps.min()) if n else 0, int(timestamps.max()) if n else 0,
                         len(keys), len(values), flags)
    parts = [header, timestamps.astype("<i8").tobytes()]
    if key_offsets is not None:
        parts += [key_offsets.astype("<u4").tobytes(), keys]
    parts += [value_offsets.astype("<u4").tobytes(), values]
    body = b"".join(parts)
    return PREFIX.pack(MAGIC, len(body), zlib.crc32(body)) + body


def decode(buf: memoryview | bytes | mmap.mmap, pos: int) -> tuple[RecordBatch, int]:
    """The frame at `pos` and the position after it."""
    if len(buf) - pos < PREFIX.size:
        raise FrameError("incomplete frame prefix")
    magic, length, crc = PREFIX.unpack_from(buf, pos)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}")
    start = pos + PREFIX.size
    end = start + length
    if end > len(buf):
        raise FrameError("incomplete frame body")
    body = bytes(buf[start:end])
    if zlib.crc32(body) != crc:
        raise FrameError("CRC mismatch")
    base, n, _mn, _mx, klen, vlen, flags = HEADER.unpack_from(body, 0)
    p = HEADER.size
    ts = np.frombuffer(body, dtype="<i8", count=n, offset=p).astype(np.int64)
    p += 8 * n
    koffs = None
    keys = b""
    if flags & HAS_KEYS:
        koffs = np.frombuffer(body, dtype="<u4", count=n + 1, offset=p)
        p += 4 * (n + 1)
        keys = body[p : p + klen]
        p += klen
    voffs = np.frombuffer(body, dtype="<u4", count=n + 1, offset=p)
    p += 4 * (n + 1)
    values = body[p : p + vlen]
    return RecordBatch(base, ts, koffs, keys, voffs, values, flags), end


def peek(buf: memoryview | bytes | mmap.mmap, pos: int) -> tuple[int, int, int]:
    """(base offset, count, next position) of the frame at `pos`, without checking its CRC."""
    if len(buf) - pos < PREFIX.size + HEADER.size:
        raise FrameError("incomplete frame")
    magic, length, _crc = PREFIX.unpack_from(buf, pos)
    if magic != MAGIC:
        raise FrameError(f"bad magic {bytes(magic)!r}")
    base, n = struct.unpack_from("<qi", buf, pos + PREFIX.size)
    end = pos + PREFIX.size + length
    if end > len(buf):
        raise FrameError("incomplete frame body")
    return base, n, end
