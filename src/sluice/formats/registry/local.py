"""`LocalRegistry`: the embedded schema registry. Subjects, versions and compatibility levels live in one
JSON file, locked while it changes (several processes may share it), and changes are checked by the same
rules as a server's (`compatibility.py`), so a single-machine pipeline needs no registry server."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sluice import settings
from sluice.core.errors import IncompatibleSchemaError, SchemaRegistryError
from sluice.formats.registry.compatibility import canonical, check_level, compatibility_problems


class LocalRegistry:
    """The embedded registry: subjects in one JSON file (locked while changed), the same rules."""

    def __init__(self, path: str | Path | None = None) -> None:
        """`path`: the JSON file; None: `sluice.settings.registry_path()` (SLUICE_REGISTRY, else .sluice/registry.json)."""
        self.path = Path(path) if path else settings.registry_path()
        self.shown = str(self.path)
        self._schemas: dict[int, tuple[str, str]] = {}

    def __repr__(self) -> str:
        return f"LocalRegistry({self.shown!r})"

    @contextlib.contextmanager
    def _state(self, write: bool) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            state = json.loads(self.path.read_text()) if self.path.exists() else {"schemas": {}, "subjects": {}}
            yield state
            if write:
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
                os.replace(tmp, self.path)

    def register(self, subject: str, schema: Any, schema_type: str = "AVRO") -> int:
        text = canonical(schema)
        with self._state(write=True) as st:
            for sid, entry in st["schemas"].items():
                if entry["schema"] == text and entry["type"] == schema_type and int(sid) in st["subjects"].get(
                        subject, {}).get("versions", []):
                    return int(sid)
            subj = st["subjects"].setdefault(subject, {"versions": [], "compatibility": None})
            level = subj["compatibility"] or st.get("compatibility") or "BACKWARD"
            old = [st["schemas"][str(i)]["schema"] for i in subj["versions"]]
            problems = compatibility_problems(level, text, old, schema_type)
            if problems:
                raise IncompatibleSchemaError(f"subject {subject!r} ({level}) in {self.shown}: the new schema is "
                                              f"incompatible: {'; '.join(problems)}")
            sid = next((int(i) for i, e in st["schemas"].items() if e["schema"] == text and e["type"] == schema_type),
                       len(st["schemas"]) + 1)
            st["schemas"][str(sid)] = {"schema": text, "type": schema_type}
            subj["versions"].append(sid)
            return sid

    def lookup(self, subject: str, schema: Any, schema_type: str = "AVRO") -> int | None:
        text = canonical(schema)
        with self._state(write=False) as st:
            for sid in st["subjects"].get(subject, {}).get("versions", []):
                if st["schemas"][str(sid)]["schema"] == text:
                    return int(sid)
        return None

    def schema(self, schema_id: int) -> tuple[str, str]:
        if schema_id not in self._schemas:
            with self._state(write=False) as st:
                entry = st["schemas"].get(str(schema_id))
            if entry is None:
                raise SchemaRegistryError(f"the local registry {self.shown} has no schema with id {schema_id}")
            self._schemas[schema_id] = (entry["type"], entry["schema"])
        return self._schemas[schema_id]

    def versions(self, subject: str) -> list[str]:
        with self._state(write=False) as st:
            return [st["schemas"][str(i)]["schema"] for i in st["subjects"].get(subject, {}).get("versions", [])]

    def set_compatibility(self, subject: str, level: str) -> None:
        check_level(level)
        with self._state(write=True) as st:
            st["subjects"].setdefault(subject, {"versions": [], "compatibility": None})["compatibility"] = level

    def compatibility(self, subject: str) -> str:
        with self._state(write=False) as st:
            return str(st["subjects"].get(subject, {}).get("compatibility") or st.get("compatibility") or "BACKWARD")

    def check(self, subject: str, schema: Any, schema_type: str = "AVRO") -> list[str]:
        return compatibility_problems(self.compatibility(subject), canonical(schema), self.versions(subject),
                                      schema_type)
