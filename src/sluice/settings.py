"""Process-wide settings a pipeline does not spell out, and the only module outside `sluice.cli` that
reads environment variables.

    broker    where `sl.Topic` streams live: a directory of the embedded log (default `.sluice/log`), or
              Kafka as HOST:PORT[,HOST:PORT] or kafka://HOST:PORT                     (SLUICE_BROKER)
    registry  the JSON file of `sl.LocalRegistry()` given no path, which is the registry of `sl.Avro`
              and `sl.JsonSchema` given none (default `.sluice/registry.json`)         (SLUICE_REGISTRY)

Each is resolved when it is used, first found: what `set_broker` / `set_registry` set in this process
(`sluice run --broker` sets the broker), the environment variable, the default.

Why the library reads the environment at all: the variables are the documented way to point a script's
`sl.Topic` streams and default registry somewhere else without editing it (`SLUICE_BROKER=kafka://…
python pipeline.py`, and the worker processes `sluice run --workers N` starts inherit the setting). Code
that should not depend on the environment says what it means: `set_broker(...)` / `set_registry(...)`
once, or per use `sl.Topic(...).source(broker=...)`, `KafkaRuntime(bootstrap=...)`, `sl.LocalRegistry(path)`,
`sl.Avro(schema, registry=...)`.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_BROKER = ".sluice/log"
DEFAULT_REGISTRY = ".sluice/registry.json"

_broker: str | None = None
_registry: Path | None = None


def set_broker(broker: str | None) -> None:
    """The broker of `sl.Topic` in this process; None: SLUICE_BROKER again, else the embedded log."""
    global _broker
    _broker = broker or None


def set_registry(path: str | Path | None) -> None:
    """The file of `sl.LocalRegistry()` in this process; None: SLUICE_REGISTRY again, else the default."""
    global _registry
    _registry = Path(path) if path else None


def broker() -> str:
    return _broker or os.environ.get("SLUICE_BROKER") or DEFAULT_BROKER


def registry_path() -> Path:
    return _registry or Path(os.environ.get("SLUICE_REGISTRY") or DEFAULT_REGISTRY)
