"""The embedded default: a durable, partitioned, CRC-checked local log, and its source and sink."""

from sluice.connectors.log.connector import LogSink, LogSource
from sluice.connectors.log.segment import RecordBatch
from sluice.connectors.log.store import Log, Partition

__all__ = ["Log", "LogSink", "LogSource", "Partition", "RecordBatch"]
