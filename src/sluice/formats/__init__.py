"""Formats: bytes ↔ columns.

`api.py` is the seam (`Format`, `Codec`); `decode.py` the one path from decoded records to good rows and
dead letters; `json.py`, `csv.py` (files only) and `registry/` (Avro and JSON Schema in the Confluent wire
format) the formats; `records.py` the bisection that finds bad records in a block of text.
"""

from sluice.formats.api import Codec, Decoded, Format
from sluice.formats.json import Json

__all__ = ["Codec", "Decoded", "Format", "Json"]
