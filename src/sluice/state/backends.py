"""Where keyed state lives. The API is narrow on purpose: entries are (namespace, key) → (value, time),
`time` being when the entry was written (for TTL). Operators reach state through typed handles
(sluice.operators.process) and never see the backend.

Snapshots are full dumps into an Arrow frame (namespace, key, value, time); values are pickled.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from sluice.core.errors import PlanError

Entry = tuple[Any, int]  # value, write time (ms)


class StateBackend(Protocol):
    def get(self, ns: str, key: bytes) -> Entry | None: ...

    def put(self, ns: str, key: bytes, value: Any, written_ms: int) -> None: ...

    def delete(self, ns: str, key: bytes) -> None: ...

    def items(self) -> Iterator[tuple[str, bytes, Any, int]]: ...

    def snapshot(self) -> Any: ...

    def restore(self, saved: Any) -> None: ...

    def close(self) -> None: ...


def _frame(rows: Iterator[tuple[str, bytes, Any, int]]) -> pl.DataFrame:
    ns, keys, values, times = [], [], [], []
    for n, k, v, t in rows:
        ns.append(n)
        keys.append(k)
        values.append(pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL))
        times.append(t)
    return pl.DataFrame({"ns": ns, "key": keys, "value": values, "time": times},
                        schema={"ns": pl.String, "key": pl.Binary, "value": pl.Binary, "time": pl.Int64})


class MemoryBackend:
    """A dict. Fast; state must fit in memory."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, bytes], Entry] = {}

    def get(self, ns: str, key: bytes) -> Entry | None:
        return self.data.get((ns, key))

    def put(self, ns: str, key: bytes, value: Any, written_ms: int) -> None:
        self.data[(ns, key)] = (value, written_ms)

    def delete(self, ns: str, key: bytes) -> None:
        self.data.pop((ns, key), None)

    def items(self) -> Iterator[tuple[str, bytes, Any, int]]:
        for (ns, key), (value, t) in self.data.items():
            yield ns, key, value, t

    def __len__(self) -> int:
        return len(self.data)

    def snapshot(self) -> pl.DataFrame:
        return _frame(self.items())

    def restore(self, saved: Any) -> None:
        if not isinstance(saved, pl.DataFrame):
            raise PlanError("this checkpoint holds RocksDB state; run with state='rocksdb' to restore it")
        self.data = {(n, k): (pickle.loads(v), t) for n, k, v, t in saved.iter_rows()}

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

        if isinstance(saved, pl.DataFrame):  # a dump (from the memory backend): load it entry by entry
            from rocksdict import WriteBatch

            wb = WriteBatch(raw_mode=True)
            for n, k, v, t in saved.iter_rows():
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
