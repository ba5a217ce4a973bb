"""Sluice: stream processing for Python — columnar, event-time, exactly-once.

    import sluice as sl
    flow = sl.Flow("demo")
    ...
    sl.run(flow)
"""

import importlib as _importlib
from typing import TYPE_CHECKING

from polars import col, lit

# Everything else loads when first used (PEP 562): `import sluice` costs Polars (not numpy or pyarrow), not
# the Kafka, Cassandra, PostgreSQL, Redis, Delta or schema-registry code a flow may never touch.
_LAZY = {
    "Avro": "sluice.formats.registry",
    "BoundedOutOfOrderness": "sluice.time.watermark",
    "CassandraError": "sluice.errors",
    "CassandraSink": "sluice.connectors.cassandra",
    "CheckpointError": "sluice.errors",
    "CollectSink": "sluice.connectors.memory",
    "ConsoleSink": "sluice.connectors.console",
    "ConstraintError": "sluice.errors",
    "CorruptSegmentError": "sluice.errors",
    "CsvSink": "sluice.connectors.files",
    "CsvSource": "sluice.connectors.files",
    "DatabaseError": "sluice.errors",
    "DeadLetterTopic": "sluice.connectors.kafka",
    "DecodeError": "sluice.errors",
    "DeltaMerge": "sluice.connectors.delta",
    "DeltaSink": "sluice.connectors.delta",
    "DeltaSource": "sluice.connectors.delta",
    "DiskFullError": "sluice.errors",
    "Emit": "sluice.time.windows",
    "EncodeError": "sluice.errors",
    "Flow": "sluice.flow",
    "ForeachBatch": "sluice.connectors.foreach",
    "GeneratorSource": "sluice.connectors.generator",
    "IncompatibleCheckpointError": "sluice.errors",
    "IncompatibleSchemaError": "sluice.errors",
    "Json": "sluice.formats.json",
    "JsonLinesSink": "sluice.connectors.files",
    "JsonLinesSource": "sluice.connectors.files",
    "JsonSchema": "sluice.formats.registry",
    "JsonValue": "sluice.core.schema",
    "KafkaError": "sluice.errors",
    "KafkaRuntime": "sluice.runtime.kafka",
    "KafkaSink": "sluice.connectors.kafka",
    "KafkaSource": "sluice.connectors.kafka",
    "KeyedProcessFunction": "sluice.operators.process",
    "LocalRegistry": "sluice.formats.registry",
    "LogError": "sluice.errors",
    "LogSink": "sluice.connectors.log",
    "LogSource": "sluice.connectors.log",
    "Map": "sluice.core.schema",
    "MemorySource": "sluice.connectors.memory",
    "MissingTimestampError": "sluice.errors",
    "Optional": "sluice.core.schema",
    "ParquetSink": "sluice.connectors.files",
    "ParquetSource": "sluice.connectors.files",
    "Pattern": "sluice.cep.pattern",
    "PlanError": "sluice.errors",
    "PostgresLookup": "sluice.connectors.lookup",
    "PostgresSink": "sluice.connectors.postgres",
    "ProcessContext": "sluice.operators.process",
    "RedisLookup": "sluice.connectors.lookup",
    "RedisSink": "sluice.connectors.redis",
    "RegistryClient": "sluice.formats.registry",
    "RunResult": "sluice.runtime.executor",
    "SchemaError": "sluice.errors",
    "SchemaRegistryError": "sluice.errors",
    "Session": "sluice.time.windows",
    "Sink": "sluice.connectors.api",
    "SinkAheadError": "sluice.errors",
    "SinkContext": "sluice.connectors.api",
    "SinkError": "sluice.errors",
    "SinkWriter": "sluice.connectors.api",
    "Sliding": "sluice.time.windows",
    "SluiceError": "sluice.errors",
    "StateContext": "sluice.operators.process",
    "StepError": "sluice.errors",
    "Stream": "sluice.flow",
    "Topic": "sluice.connectors.topic",
    "Tumbling": "sluice.time.windows",
    "UserFunctionError": "sluice.errors",
    "agg": "sluice.agg",
    "changelog": "sluice.core.changelog",
    "errors": "sluice.errors",
    "run": "sluice.runtime.executor",
    "run_worker": "sluice.runtime.kafka",
}

if TYPE_CHECKING:
    from sluice import agg, errors
    from sluice.cep.pattern import Pattern
    from sluice.connectors.api import Sink, SinkContext, SinkWriter
    from sluice.connectors.cassandra import CassandraSink
    from sluice.connectors.console import ConsoleSink
    from sluice.connectors.delta import DeltaMerge, DeltaSink, DeltaSource
    from sluice.connectors.files import (
        CsvSink,
        CsvSource,
        JsonLinesSink,
        JsonLinesSource,
        ParquetSink,
        ParquetSource,
    )
    from sluice.connectors.foreach import ForeachBatch
    from sluice.connectors.generator import GeneratorSource
    from sluice.connectors.kafka import DeadLetterTopic, KafkaSink, KafkaSource
    from sluice.connectors.log import LogSink, LogSource
    from sluice.connectors.lookup import PostgresLookup, RedisLookup
    from sluice.connectors.memory import CollectSink, MemorySource
    from sluice.connectors.postgres import PostgresSink
    from sluice.connectors.redis import RedisSink
    from sluice.connectors.topic import Topic
    from sluice.core import changelog
    from sluice.core.schema import JsonValue, Map, Optional
    from sluice.errors import (
        CassandraError,
        CheckpointError,
        ConstraintError,
        CorruptSegmentError,
        DatabaseError,
        DecodeError,
        DiskFullError,
        EncodeError,
        IncompatibleCheckpointError,
        IncompatibleSchemaError,
        KafkaError,
        LogError,
        MissingTimestampError,
        PlanError,
        SchemaError,
        SchemaRegistryError,
        SinkAheadError,
        SinkError,
        SluiceError,
        StepError,
        UserFunctionError,
    )
    from sluice.flow import Flow, Stream
    from sluice.formats.json import Json
    from sluice.formats.registry import Avro, JsonSchema, LocalRegistry, RegistryClient
    from sluice.operators.process import KeyedProcessFunction, ProcessContext, StateContext
    from sluice.runtime.executor import RunResult, run
    from sluice.runtime.kafka import KafkaRuntime, run_worker
    from sluice.time.watermark import BoundedOutOfOrderness
    from sluice.time.windows import Emit, Session, Sliding, Tumbling


def __getattr__(name: str) -> object:
    home = _LAZY.get(name)
    if home is None:
        raise AttributeError(f"module 'sluice' has no attribute {name!r}")
    module = _importlib.import_module(home)
    value = module if home.endswith(f".{name}") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(n for n in globals() if n.startswith("_"))})


__version__ = "0.1.0"

__all__ = [
    "Avro",
    "BoundedOutOfOrderness",
    "CassandraError",
    "CassandraSink",
    "CheckpointError",
    "CollectSink",
    "ConsoleSink",
    "ConstraintError",
    "CorruptSegmentError",
    "CsvSink",
    "CsvSource",
    "DatabaseError",
    "DeadLetterTopic",
    "DecodeError",
    "DeltaMerge",
    "DeltaSink",
    "DeltaSource",
    "DiskFullError",
    "Emit",
    "EncodeError",
    "Flow",
    "ForeachBatch",
    "GeneratorSource",
    "IncompatibleCheckpointError",
    "IncompatibleSchemaError",
    "Json",
    "JsonLinesSink",
    "JsonLinesSource",
    "JsonSchema",
    "JsonValue",
    "KafkaError",
    "KafkaRuntime",
    "KafkaSink",
    "KafkaSource",
    "KeyedProcessFunction",
    "LocalRegistry",
    "LogError",
    "LogSink",
    "LogSource",
    "Map",
    "MemorySource",
    "MissingTimestampError",
    "Optional",
    "ParquetSink",
    "ParquetSource",
    "Pattern",
    "PlanError",
    "PostgresLookup",
    "PostgresSink",
    "ProcessContext",
    "RedisLookup",
    "RedisSink",
    "RegistryClient",
    "RunResult",
    "SchemaError",
    "SchemaRegistryError",
    "Session",
    "Sink",
    "SinkAheadError",
    "SinkContext",
    "SinkError",
    "SinkWriter",
    "Sliding",
    "SluiceError",
    "StateContext",
    "StepError",
    "Stream",
    "Topic",
    "Tumbling",
    "UserFunctionError",
    "agg",
    "changelog",
    "col",
    "errors",
    "lit",
    "run",
    "run_worker",
]
