"""Where keyed state lives. The API is narrow on purpose: entries are (namespace, key) → (value, time),
`time` being when the entry was written (for TTL). Operators reach state through typed handles
(sluice.operators.process) and never see the backend.

The memory backend's snapshot is a dump (namespace, key, value pickled, time) cut into chunks of _CHUNK
entries as the checkpoint writes them (checkpoint/store.py, ChunkedFrame): beside the state, a checkpoint
or a restore holds one chunk, never a copy of the whole state. RocksDB's is a native checkpoint directory.
"""

from __future__ import annotations

import pickle
import shutil
import struct
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from sluice.checkpoint.store import ChunkedFrame
from sluice.core.errors import PlanError

Entry = tuple[Any, int]  # value, write time (ms)
_TIME = struct.Struct("<q")  # an entry's write time, ahead of its pickled value in the memory backend
_CHUNK = 65_536  # entries per chunk of a memory snapshot or restore
_SNAPSHOT_SCHEMA = pl.Schema({"ns": pl.String, "key": pl.Binary, "value": pl.Binary, "time": pl.Int64})


class StateBackend(Protocol):
    def get(self, ns: str, key: bytes) -> Entry | None: ...

    def put(self, ns: str, key: bytes, value: Any, written_ms: int) -> None: ...

    def delete(self, ns: str, key: bytes) -> None: ...

    def items(self) -> Iterator[tuple[str, bytes, Any, int]]: ...

    def snapshot(self) -> Any: ...

    def restore(self, saved: Any) -> None: ...

    def close(self) -> None: ...


class MemoryBackend:
    """Dicts in memory, one per state name: key bytes → one bytes object, the entry's write time (8 bytes,
    little-endian) followed by its value pickled (as RocksDB stores it, and as snapshots hold it).

    Bytes only, on purpose. A dict that has only ever held bytes is not tracked by Python's cyclic garbage
    collector; one holding (value, time) tuples is, and every full collection walks all of its entries: at
    10M keys that made the run quadratic (a full collection every ~70k allocations, each walking 10M
    entries). It also takes ~100 bytes a key instead of ~240 (no tuples, no int objects), and a snapshot
    or restore copies the pickles as they are. Like RocksDB, a read returns a copy of the stored value:
    changing it in place changes the state only through `update`."""

    def __init__(self) -> None:
        self.data: dict[str, dict[bytes, bytes]] = {}

    def get(self, ns: str, key: bytes) -> Entry | None:
        d = self.data.get(ns)
        raw = d.get(key) if d is not None else None
        if raw is None:
            return None
        return pickle.loads(raw[8:]), _TIME.unpack_from(raw)[0]

    def put(self, ns: str, key: bytes, value: Any, written_ms: int) -> None:
        d = self.data.get(ns)
        if d is None:
            d = self.data[ns] = {}
        d[key] = _TIME.pack(written_ms) + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def delete(self, ns: str, key: bytes) -> None:
        d = self.data.get(ns)
        if d is not None:
            d.pop(key, None)

    def items(self) -> Iterator[tuple[str, bytes, Any, int]]:
        for ns, d in self.data.items():
            for key, raw in d.items():
                yield ns, key, pickle.loads(raw[8:]), _TIME.unpack_from(raw)[0]

    def __len__(self) -> int:
        return sum(len(d) for d in self.data.values())

    def snapshot(self) -> ChunkedFrame:
        """The dump, in chunks of _CHUNK entries cut as they are asked for (the stored pickles copied as
        they are): write it before the state changes."""
        return ChunkedFrame(_SNAPSHOT_SCHEMA, self._chunks)

    def _chunks(self) -> Iterator[pl.DataFrame]:
        unpack = _TIME.unpack_from
        for n, d in self.data.items():
            entries = iter(d.items())
            while chunk := list(islice(entries, _CHUNK)):
                yield pl.DataFrame({"ns": [n] * len(chunk), "key": [k for k, _ in chunk],
                                    "value": [r[8:] for _, r in chunk], "time": [unpack(r)[0] for _, r in chunk]},
                                   schema=_SNAPSHOT_SCHEMA)

    def restore(self, saved: Any) -> None:
        """From a chunked dump (read a chunk at a time) or a dump written whole (checkpoints from before chunks,
        and the Kafka runtime's snapshots)."""
        if not isinstance(saved, ChunkedFrame | pl.DataFrame):
            raise PlanError("this checkpoint holds RocksDB state; run with state='rocksdb' to restore it")
        data: dict[str, dict[bytes, bytes]] = {}
        pack = _TIME.pack
        for part in _parts(saved):  # one chunk's Python lists at a time
            for n, k, v, t in zip(part["ns"].to_list(), part["key"].to_list(), part["value"].to_list(),
                                  part["time"].to_list(), strict=True):
                d = data.get(n)
                if d is None:
                    d = data[n] = {}
                d[k] = pack(t) + v
        self.data = data

    def close(self) -> None:
        pass


class RocksDBBackend:
    """RocksDB through rocksdict: state larger than memory, on local disk under `directory`."""

    def __init__(self, directory: str | Path | None = None) -> None:
        from rocksdict import Options, Rdict

        self._owned = directory is None
        self.dir = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="sluice-rocksdb-"))
        if self.dir.exists() and not self._owned:
            shutil.rmtree(self.dir)  # the working copy is rebuilt from the checkpoint on every start
        self.dir.mkdir(parents=True, exist_ok=True)
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(str(self.dir), opts)

    @staticmethod
    def _k(ns: str, key: bytes) -> bytes:
        return ns.encode() + b"\x00" + key

    def get(self, ns: str, key: bytes) -> Entry | None:
        raw = self.db.get(self._k(ns, key))
        if raw is None:
            return None
        entry: Entry = pickle.loads(raw)
        return entry

    def put(self, ns: str, key: bytes, value: Any, written_ms: int) -> None:
        self.db[self._k(ns, key)] = pickle.dumps((value, written_ms), protocol=pickle.HIGHEST_PROTOCOL)

    def delete(self, ns: str, key: bytes) -> None:
        del self.db[self._k(ns, key)]

    def items(self) -> Iterator[tuple[str, bytes, Any, int]]:
        for k, raw in self.db.items():
            ns, _, key = bytes(k).partition(b"\x00")  # type: ignore[arg-type]  # raw mode: keys are bytes
            value, t = pickle.loads(raw)
            yield ns.decode(), key, value, t

    def snapshot(self) -> Any:
        """A native RocksDB checkpoint: SST files hard-linked into the checkpoint, not a dump."""
        from rocksdict import Checkpoint

        from sluice.checkpoint.store import DirectoryState

        self.db.flush()
        return DirectoryState(lambda path: Checkpoint(self.db).create_checkpoint(str(path)))

    def restore(self, saved: Any) -> None:
        from rocksdict import Options, Rdict

        if isinstance(saved, ChunkedFrame | pl.DataFrame):  # the memory backend's dump: entry by entry
            from rocksdict import WriteBatch

            for part in _parts(saved):
                wb = WriteBatch(raw_mode=True)
                for n, k, v, t in part.iter_rows():
                    wb.put(self._k(n, k), pickle.dumps((pickle.loads(v), t), protocol=pickle.HIGHEST_PROTOCOL))
                self.db.write(wb)
            return
        self.db.close()
        shutil.rmtree(self.dir)
        shutil.copytree(saved, self.dir, copy_function=_link_or_copy)  # SST files are immutable: link them
        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(str(self.dir), opts)

    def close(self) -> None:
        self.db.close()
        if self._owned:
            shutil.rmtree(self.dir, ignore_errors=True)


def _parts(dump: ChunkedFrame | pl.DataFrame) -> Iterator[pl.DataFrame]:
    return iter(dump) if isinstance(dump, ChunkedFrame) else dump.iter_slices(_CHUNK)


def _link_or_copy(src: str, dst: str) -> None:
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


BACKENDS = ("memory", "rocksdb")


def make_backend(kind: str, directory: Path | None) -> StateBackend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "rocksdb":
        return RocksDBBackend(directory)
    raise PlanError(f"state backend must be one of {BACKENDS}, got {kind!r}")
