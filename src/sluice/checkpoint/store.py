"""Checkpoints on disk.

    <dir>/chk-000042/manifest.json    written last, through a temporary name, fsync'ed, then renamed
    <dir>/chk-000042/<step>.<key>.arrow   DataFrames of a step's state (Arrow IPC file); a chunked frame
                                          (the memory backend's state) as one record batch per chunk

    <dir>/HEAD                            the id of the newest checkpoint written (after its manifest)

The manifest holds each stateful step's kind and fingerprint (a JSON object of the parameters its state
depends on, see docs/design/plan.md), its scalar state, the names and SHA-256 of its frame files, each
sink's pending transaction, the closed plan's steps (names, kinds, fingerprints, parameters), and a
SHA-256 of all of that (`checksum`: every field, so an edited source position is caught too).

A frame too large to hold twice (`ChunkedFrame`: the memory state backend's dump) is written as its parts
come, one Arrow record batch each, hashed on the way; a restore reads it back one record batch at a time.
So a checkpoint of state S needs S + one chunk of memory, not S twice. The manifest marks such a frame
`"chunked": true`; a frame without the mark (every frame written before chunks) is read whole, as before.

A checkpoint exists only once its manifest does. A damaged one (unreadable or edited manifest, a frame
flipped, truncated or deleted, a manifest or directory deleted although HEAD says it was written) is
reported with what is wrong, set aside as `damaged-chk-…`, and recovery uses the newest whole checkpoint
before it; the runtime then cuts every sink back to that checkpoint (docs/design/commit.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from sluice.core.errors import CheckpointError as CheckpointError  # also importable from here, as before
from sluice.core.errors import IncompatibleCheckpointError as IncompatibleCheckpointError
from sluice.core.failpoints import failpoint

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("sluice.checkpoint")

State = dict[str, Any]  # scalars (JSON), polars DataFrames, ChunkedFrame and DirectoryState


@dataclass(frozen=True)
class DirectoryState:
    """State that writes itself as a directory (a RocksDB checkpoint): `create(path)` makes `path`."""

    create: Any  # Callable[[Path], None]


@dataclass(frozen=True)
class ChunkedFrame:
    """A frame that is never whole in memory: iterating it yields its parts, DataFrames of `schema`, one at
    a time. From a state backend's snapshot the parts are cut from the live state as they are asked for, so
    it is written (iterated once) before the state changes; read from a checkpoint, they are the file's
    record batches, read one at a time."""

    schema: pl.Schema
    parts: Callable[[], Iterator[pl.DataFrame]]

    def __iter__(self) -> Iterator[pl.DataFrame]:
        return self.parts()

    def collect(self) -> pl.DataFrame:
        """The whole frame (for small state and tests: this is the copy chunks avoid)."""
        parts = list(self)
        return pl.concat(parts) if parts else pl.DataFrame(schema=self.schema)


class _HashingFile:
    """A binary file that hashes what is written through it (pyarrow writes to any object with write)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        self.sha.update(data)
        n: int = self.f.write(data)
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.closed = True  # the underlying file is closed by its owner, after fsync


def _write_chunks(sink: Any, frame: ChunkedFrame, options: pa.ipc.IpcWriteOptions | None = None,
                  each: Callable[[], None] = lambda: None) -> int:
    """Write `frame` into `sink` as an Arrow IPC file, one record batch per part as it comes; the row count."""
    import pyarrow as pa  # loaded only when chunked state is written: a run without it never needs pyarrow
    import pyarrow.ipc

    rows = 0
    schema = pl.DataFrame(schema=frame.schema).to_arrow().schema
    with pa.ipc.new_file(sink, schema, options=options) as writer:
        for part in frame:
            if part.height:
                writer.write_table(part.to_arrow().cast(schema))
                rows += part.height
                each()
    return rows


def _read_chunks(path: Path) -> Iterator[pl.DataFrame]:
    """A chunked frame's parts from its file, one record batch at a time (read, not memory-mapped: mapped
    pages would count in the resident set as the whole file is touched)."""
    import pyarrow as pa
    import pyarrow.ipc

    with pa.OSFile(str(path)) as f:
        reader = pa.ipc.open_file(f)
        for i in range(reader.num_record_batches):
            part = pl.from_arrow(reader.get_batch(i))
            assert isinstance(part, pl.DataFrame)
            yield part


def _chunked(path: Path) -> ChunkedFrame:
    import pyarrow as pa
    import pyarrow.ipc

    with pa.OSFile(str(path)) as f:
        schema = pl.from_arrow(pa.ipc.open_file(f).schema.empty_table()).schema  # type: ignore[union-attr]
    return ChunkedFrame(schema, lambda: _read_chunks(path))


def _sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # in blocks: a frame is never read whole for this


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """SHA-256 of every field of the manifest but the checksum itself (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Damage:
    """A checkpoint recovery could not use, and why."""

    id: int
    path: Path
    problem: str


@dataclass(frozen=True)
class Checkpoint:
    id: int
    path: Path
    manifest: dict[str, Any]

    def state(self, step: str) -> State | None:
        entry = self.manifest["steps"].get(step)
        if entry is None:
            return None
        out: State = dict(entry["scalars"])
        for key, meta in entry["frames"].items():
            file = self.path / meta["file"]
            out[key] = _chunked(file) if meta.get("chunked") else pl.read_ipc(io.BytesIO(file.read_bytes()))
        for key, name in entry.get("dirs", {}).items():
            out[key] = self.path / name
        return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.dir = Path(directory)
        self.keep = max(keep, 1)

    def ids(self) -> list[int]:
        if not self.dir.exists():
            return []
        found = []
        for p in self.dir.glob("chk-*"):
            if (p / "manifest.json").exists():
                try:
                    found.append(int(p.name[4:]))
                except ValueError:
                    continue
        return sorted(found)

    def head(self) -> int | None:
        """The id HEAD says was written last (None: no HEAD, a directory from before HEAD existed)."""
        try:
            return int((self.dir / "HEAD").read_text().strip())
        except (OSError, ValueError):
            return None

    def _write_head(self, cid: int) -> None:
        """Not fsynced: a HEAD lost in a power cut only says less (an older id, or none, which is never
        mistaken for damage); it is written after the manifest is durable, so it never says more."""
        tmp = self.dir / "HEAD.tmp"
        tmp.write_text(f"{cid}\n")
        os.replace(tmp, self.dir / "HEAD")

    def write(self, cid: int, flow: str, steps: dict[str, tuple[str, Any, State]], sinks: dict[str, Any],
              plan: dict[str, Any] | None = None) -> Checkpoint:
        """steps: name → (kind, fingerprint (JSON), state); plan: the closed plan's steps by name (kind,
        fingerprint, parameters). Returns once the manifest is durable."""
        path = self.dir / f"chk-{cid:06d}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        manifest: dict[str, Any] = {"id": cid, "flow": flow, "steps": {}, "sinks": sinks}
        if plan is not None:
            manifest["plan"] = plan
        for name, (kind, fingerprint, state) in steps.items():
            scalars, frames, dirs = {}, {}, {}
            for key, value in state.items():
                if isinstance(value, DirectoryState):
                    dirs[key] = f"{name}.{key}.dir"
                    value.create(path / dirs[key])
                elif isinstance(value, pl.DataFrame):
                    file = f"{name}.{key}.arrow"
                    buf = io.BytesIO()
                    value.write_ipc(buf)
                    data = buf.getvalue()
                    with open(path / file, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    frames[key] = {"file": file, "sha256": hashlib.sha256(data).hexdigest(), "rows": value.height}
                elif isinstance(value, ChunkedFrame):
                    file = f"{name}.{key}.arrow"
                    with open(path / file, "wb") as f:
                        sink = _HashingFile(f)
                        rows = _write_chunks(sink, value, each=lambda: failpoint("during_chunked_state"))
                        f.flush()
                        os.fsync(f.fileno())
                    frames[key] = {"file": file, "sha256": sink.sha.hexdigest(), "rows": rows, "chunked": True}
                else:
                    scalars[key] = value
            manifest["steps"][name] = {"kind": kind, "fingerprint": fingerprint, "scalars": scalars, "frames": frames,
                                       "dirs": dirs}
        manifest["checksum"] = manifest_checksum(manifest)
        tmp = path / "manifest.json.tmp"
        with open(tmp, "w") as f:  # an OSError (a full disk) reaches the runtime, which says what to do
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / "manifest.json")
        _fsync(path)
        self._write_head(cid)
        return Checkpoint(cid, path, manifest)

    def load(self, cid: int) -> Checkpoint:
        path = self.dir / f"chk-{cid:06d}"
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {cid} at {path} has an unreadable manifest: {exc}") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("steps"), dict) \
                or not isinstance(manifest.get("sinks"), dict):
            raise CheckpointError(f"checkpoint {cid} at {path} has a manifest without its steps and sinks")
        if "checksum" in manifest and manifest["checksum"] != manifest_checksum(manifest):
            raise CheckpointError(f"checkpoint {cid} at {path}: its manifest fails its checksum (edited or "
                                  "damaged: a source position, a state value or a transaction differs from what "
                                  "was written)")
        if manifest.get("id", cid) != cid:
            raise CheckpointError(f"checkpoint {cid} at {path} holds the manifest of checkpoint {manifest.get('id')}")
        for step in manifest["steps"].values():
            for meta in step["frames"].values():
                file = path / meta["file"]
                try:
                    digest = _sha256_of(file)
                except OSError as exc:
                    raise CheckpointError(f"checkpoint {cid}: {file} is missing: {exc}") from exc
                if digest != meta["sha256"]:
                    raise CheckpointError(f"checkpoint {cid}: {file} fails its checksum")
        return Checkpoint(cid, path, manifest)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that is whole; a damaged newer one is reported and skipped."""
        return self.recoverable()[0]

    def recoverable(self) -> tuple[Checkpoint | None, list[Damage]]:
        """The newest whole checkpoint, and every newer one that is damaged (each reported with a warning).

        Damaged: a manifest that is unreadable, edited (its checksum), or whose frames fail theirs; and,
        up to the id in HEAD, a checkpoint whose manifest or whole directory is gone (a directory without
        a manifest above HEAD is a checkpoint a crash interrupted, not damage)."""
        damaged: list[Damage] = []
        ids = self.ids()
        head = self.head()
        top = max([*ids, head or 0])
        chosen: Checkpoint | None = None
        known = set(ids)
        for cid in range(top, 0, -1):
            path = self.dir / f"chk-{cid:06d}"
            if cid not in known:
                if head is None or cid > head:
                    continue
                if not ids or cid < ids[0]:
                    if not ids:  # every checkpoint up to HEAD is gone: one report, not one per id
                        damaged.append(Damage(cid, path, f"checkpoint {cid} (HEAD) and every one before it in "
                                                         f"{self.dir} are missing (deleted)"))
                    break  # older than every kept checkpoint: pruned
                problem = (f"checkpoint {cid} at {path} has no manifest (deleted)" if path.exists() else
                           f"checkpoint {cid} at {path} is missing (its directory was deleted)")
                damaged.append(Damage(cid, path, problem))
                continue
            try:
                chosen = self.load(cid)
                break
            except CheckpointError as exc:
                damaged.append(Damage(cid, path, str(exc)))
        for d in damaged:
            log.warning("%s; recovering from %s", d.problem,
                        f"checkpoint {chosen.id}, the newest whole one before it" if chosen else
                        "the start: no whole checkpoint is left")
        return chosen, damaged

    def set_aside(self, damaged: list[Damage]) -> None:
        """Move damaged checkpoints out of the way (kept for inspection as damaged-chk-…); HEAD goes back
        to the checkpoint recovery chose, so they are not reported again."""
        for d in damaged:
            if d.path.exists():
                aside = self.dir / f"damaged-{d.path.name}"
                if aside.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                os.replace(d.path, aside)
        ids = self.ids()
        if damaged or (self.head() or 0) > (ids[-1] if ids else 0):
            if ids:
                self._write_head(ids[-1])
            else:
                (self.dir / "HEAD").unlink(missing_ok=True)

    def prune(self, keep: int | None = None) -> list[int]:
        keep = self.keep if keep is None else keep
        ids = self.ids()
        dropped = ids[:-keep] if keep > 0 else ids
        for cid in dropped:
            shutil.rmtree(self.dir / f"chk-{cid:06d}", ignore_errors=True)
        for stray in self.dir.glob("chk-*"):  # directories a crash left without a manifest
            if not stray.name[4:].isdigit() or (stray / "manifest.json").exists():
                continue
            if not ids or int(stray.name[4:]) > ids[-1] or int(stray.name[4:]) < ids[0]:
                shutil.rmtree(stray, ignore_errors=True)
        return dropped


# --- state as one blob (for runtimes that keep checkpoints in Kafka) ------------------------------------
_MAGIC = b"SLST1"


def pack_state(steps: dict[str, tuple[str, Any, State]], meta: dict[str, Any]) -> bytes:
    """Steps' state and `meta` as bytes: a JSON header (scalars, frame sizes, checksum) then Arrow IPC frames."""
    header: dict[str, Any] = {"meta": meta, "steps": {}}
    blobs: list[bytes] = []
    for name, (kind, fingerprint, state) in steps.items():
        scalars, frames = {}, {}
        for key, value in state.items():
            if isinstance(value, DirectoryState):
                raise CheckpointError(f"step {name!r}: state kept on disk (RocksDB) cannot be checkpointed into Kafka "
                                      "yet; use the memory state backend with the Kafka runtime")
            if isinstance(value, pl.DataFrame | ChunkedFrame):
                buf = io.BytesIO()
                if isinstance(value, ChunkedFrame):  # read back as one DataFrame: the blob is whole anyway
                    import pyarrow.ipc

                    _write_chunks(buf, value, pyarrow.ipc.IpcWriteOptions(compression="lz4"))
                else:
                    value.write_ipc(buf, compression="lz4")
                frames[key] = [sum(len(b) for b in blobs), len(buf.getvalue())]  # offset, length in the body
                blobs.append(buf.getvalue())
            else:
                scalars[key] = value
        header["steps"][name] = {"kind": kind, "fingerprint": fingerprint, "scalars": scalars, "frames": frames}
    body = b"".join(blobs)
    header["sha256"] = hashlib.sha256(body).hexdigest()
    head = json.dumps(header, sort_keys=True).encode()
    return _MAGIC + len(head).to_bytes(4, "big") + head + body


def unpack_state(data: bytes) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(meta, step entries, load(step) → state) from `pack_state` bytes."""
    if not data.startswith(_MAGIC):
        raise CheckpointError("a state snapshot does not start with its marker; it was not written by Sluice")
    size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 4], "big")
    start = len(_MAGIC) + 4
    header = json.loads(data[start:start + size])
    body = memoryview(data)[start + size:]
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise CheckpointError("a state snapshot fails its checksum")
    states: dict[str, State] = {}
    for name, entry in header["steps"].items():
        state: State = dict(entry["scalars"])
        for key, (at, length) in entry["frames"].items():
            state[key] = pl.read_ipc(io.BytesIO(bytes(body[at:at + length])))
        states[name] = state
    return header["meta"], header["steps"], states.get
