"""What the two registry formats (`Avro`, `JsonSchema`) share: the Confluent wire format, the registry
they talk to, how a subject is named, and registering the writer schema when a sink opens.

    value = 0x00 | schema id (4 bytes, big-endian) | Avro binary datum, or UTF-8 JSON

Subject names: strategy "topic" (TOPIC-value, the default), "record" (the record's full name) or
"topic_record" (TOPIC-FULLNAME), as Confluent's TopicNameStrategy, RecordNameStrategy and
TopicRecordNameStrategy.
"""

from __future__ import annotations

from typing import Any, Protocol

import polars as pl

from sluice.core.errors import IncompatibleSchemaError, SchemaRegistryError
from sluice.core.schema import Optional
from sluice.formats.registry.client import RegistryClient
from sluice.formats.registry.local import LocalRegistry

MAGIC = b"\x00"
NOT_WIRE_FORMAT = "not in the Confluent wire format (no magic byte 0 and schema id)"


class Registry(Protocol):
    """What a format asks of a registry; `RegistryClient` and `LocalRegistry` both answer it."""

    shown: str  # how messages name it (no credentials)

    def register(self, subject: str, schema: Any, schema_type: str = "AVRO") -> int: ...

    def lookup(self, subject: str, schema: Any, schema_type: str = "AVRO") -> int | None: ...

    def schema(self, schema_id: int) -> tuple[str, str]: ...

    def versions(self, subject: str) -> list[str]: ...

    def set_compatibility(self, subject: str, level: str) -> None: ...

    def compatibility(self, subject: str) -> str: ...

    def check(self, subject: str, schema: Any, schema_type: str = "AVRO") -> list[str]: ...


def is_framed(value: bytes) -> bool:
    """Whether `value` starts like the wire format (magic byte and a schema id)."""
    return len(value) >= 5 and value[0] == 0


def header(schema_id: int) -> bytes:
    return MAGIC + schema_id.to_bytes(4, "big")


def subject_name(strategy: str, topic: str, record: str | None, is_key: bool) -> str:
    suffix = "key" if is_key else "value"
    if strategy == "topic":
        return f"{topic}-{suffix}"
    if record is None:
        raise SchemaRegistryError(f"subject strategy {strategy!r} needs a named record schema")
    if strategy == "record":
        return record
    if strategy == "topic_record":
        return f"{topic}-{record}"
    raise SchemaRegistryError(f"unknown subject strategy {strategy!r}; choose topic, record or topic_record")


class Registered:
    """What Avro and JsonSchema share: the registry, the subject, registering at startup."""

    registry: Registry | None
    subject: str | None
    strategy: str
    compatibility: str | None
    auto_register: bool
    is_key: bool
    schema_type: str

    def _registry(self) -> Registry:
        return self.registry if self.registry is not None else LocalRegistry()

    def _record_name(self) -> str | None:
        return None

    def writer_id(self, topic: str) -> int:
        """Register (or look up) the schema under its subject; raises at once if it breaks compatibility."""
        reg = self._registry()
        subject = self.subject or subject_name(self.strategy, topic, self._record_name(), self.is_key)
        schema = self._schema_obj()
        if self.compatibility:
            reg.set_compatibility(subject, self.compatibility)
        if self.auto_register:
            if isinstance(reg, RegistryClient):  # a server refuses with less detail than its check gives
                problems = reg.check(subject, schema, self.schema_type)
                if problems:
                    raise IncompatibleSchemaError(f"subject {subject!r} at {reg.shown}: the schema is incompatible: "
                                                  f"{'; '.join(problems)}")
            return int(reg.register(subject, schema, self.schema_type))
        found = reg.lookup(subject, schema, self.schema_type)
        if found is None:
            raise SchemaRegistryError(f"the schema is not registered under subject {subject!r} at {reg.shown}, and "
                                      "auto_register is off; register it first")
        return int(found)

    def _schema_obj(self) -> Any:
        raise NotImplementedError


def plain(t: Any) -> Any:
    """A declared type without Optional, nested fields as a Struct (inside a struct, every field may be null)."""
    if isinstance(t, Optional):
        return plain(t.dtype)
    if isinstance(t, dict):
        return pl.Struct({k: plain(v) for k, v in t.items()})
    return t
