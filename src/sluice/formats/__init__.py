"""Formats: bytes ↔ columns. JSON Lines today; Avro and JSON Schema come with the registry."""

from sluice.formats.json import Json

__all__ = ["Json"]
