"""Checkpoints on disk.

    <dir>/chk-000042/manifest.json    written last, through a temporary name, fsync'ed, then renamed
    <dir>/chk-000042/<step>.<key>.arrow   DataFrames of a step's state (Arrow IPC)

The manifest holds each stateful step's kind and fingerprint (a JSON object of the parameters its state
depends on, see docs/design/plan.md), its scalar state, the names and SHA-256 of
its frame files, and each sink's pending transaction. A checkpoint exists only once its manifest does; a
manifest whose files fail their checksums is reported and skipped in favour of the one before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from sluice.core.errors import CheckpointError as CheckpointError  # also importable from here, as before
from sluice.core.errors import IncompatibleCheckpointError as IncompatibleCheckpointError

log = logging.getLogger("sluice.checkpoint")

State = dict[str, Any]  # scalars (JSON), polars DataFrames, and DirectoryState


@dataclass(frozen=True)
class DirectoryState:
    """State that writes itself as a directory (a RocksDB checkpoint): `create(path)` makes `path`."""

    create: Any  # Callable[[Path], None]


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
            out[key] = pl.read_ipc(io.BytesIO((self.path / meta["file"]).read_bytes()))
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

    def write(self, cid: int, flow: str, steps: dict[str, tuple[str, Any, State]], sinks: dict[str, Any]) -> Checkpoint:
        """steps: name → (kind, fingerprint (JSON), state). Returns once the manifest is durable."""
        path = self.dir / f"chk-{cid:06d}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        manifest: dict[str, Any] = {"id": cid, "flow": flow, "steps": {}, "sinks": sinks}
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
                else:
                    scalars[key] = value
            manifest["steps"][name] = {"kind": kind, "fingerprint": fingerprint, "scalars": scalars, "frames": frames,
                                       "dirs": dirs}
        tmp = path / "manifest.json.tmp"
        with open(tmp, "w") as f:  # an OSError (a full disk) reaches the runtime, which says what to do
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path / "manifest.json")
        _fsync(path)
        return Checkpoint(cid, path, manifest)

    def load(self, cid: int) -> Checkpoint:
        path = self.dir / f"chk-{cid:06d}"
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {cid} at {path} has an unreadable manifest: {exc}") from exc
        for step in manifest["steps"].values():
            for meta in step["frames"].values():
                file = path / meta["file"]
                try:
                    digest = hashlib.sha256(file.read_bytes()).hexdigest()
                except OSError as exc:
                    raise CheckpointError(f"checkpoint {cid}: {file} is missing: {exc}") from exc
                if digest != meta["sha256"]:
                    raise CheckpointError(f"checkpoint {cid}: {file} fails its checksum")
        return Checkpoint(cid, path, manifest)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that is whole; a damaged newer one is reported and skipped."""
        for cid in reversed(self.ids()):
            try:
                return self.load(cid)
            except CheckpointError as exc:
                log.warning("%s; recovering from the checkpoint before it", exc)
        return None

    def prune(self, keep: int | None = None) -> list[int]:
        keep = self.keep if keep is None else keep
        ids = self.ids()
        dropped = ids[:-keep] if keep > 0 else ids
        for cid in dropped:
            shutil.rmtree(self.dir / f"chk-{cid:06d}", ignore_errors=True)
        for stray in self.dir.glob("chk-*"):  # directories a crash left without a manifest
            if not (stray / "manifest.json").exists() and (not ids or int(stray.name[4:] or 0) > ids[-1] or int(stray.name[4:] or 0) < ids[0]):
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
            if isinstance(value, pl.DataFrame):
                buf = io.BytesIO()
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
