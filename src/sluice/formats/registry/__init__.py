"""Schemas in a registry: Avro and JSON Schema values in the Confluent wire format.

    value = 0x00 | schema id (4 bytes, big-endian) | Avro binary datum, or UTF-8 JSON

`RegistryClient` talks to any Confluent-compatible registry (Confluent Schema Registry, Apicurio's
`/apis/ccompat/v7`, Redpanda, Karapace). `LocalRegistry` is the embedded default: subjects, versions
and compatibility levels in a JSON file, checked by the same rules, so a single-machine pipeline needs
no server. Both cache what they learn (ids, schemas), so the registry is asked once per schema.

A producer registers its schema when its sink opens, so a change that breaks the subject's
compatibility level (BACKWARD, FORWARD, FULL, each optionally _TRANSITIVE) fails at startup with the
reasons, not in production. Consumers resolve each record's writer schema by its id and read it into
their own (reader) schema, by Avro's resolution rules.

    client.py         RegistryClient (HTTP)
    local.py          LocalRegistry (a JSON file)
    compatibility.py  the levels and rules (Avro schema resolution, JSON Schema)
    wire.py           what both formats share: the wire format, subject names, registering at startup
    avro.py           sl.Avro and its codec
    jsonschema.py     sl.JsonSchema and its codec
"""

from sluice.core.errors import IncompatibleSchemaError, SchemaRegistryError
from sluice.formats.registry.avro import Avro, AvroCodec, avro_to_polars
from sluice.formats.registry.client import RegistryClient
from sluice.formats.registry.compatibility import (
    LEVELS,
    avro_can_read,
    canonical,
    compatibility_problems,
    json_schema_can_read,
)
from sluice.formats.registry.jsonschema import JsonSchema, JsonSchemaCodec
from sluice.formats.registry.local import LocalRegistry
from sluice.formats.registry.wire import MAGIC, Registry

__all__ = [
    "LEVELS",
    "MAGIC",
    "Avro",
    "AvroCodec",
    "IncompatibleSchemaError",
    "JsonSchema",
    "JsonSchemaCodec",
    "LocalRegistry",
    "Registry",
    "RegistryClient",
    "SchemaRegistryError",
    "avro_can_read",
    "avro_to_polars",
    "canonical",
    "compatibility_problems",
    "json_schema_can_read",
]
