"""Sluice: stream processing for Python — columnar, event-time, exactly-once.

    import sluice as sl
    flow = sl.Flow("demo")
    ...
    sl.run(flow)
"""

from polars import col, lit

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
