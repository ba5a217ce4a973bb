"""Every error Sluice raises, in one tree (drawn in sluice/core/errors.py); each is also `sl.<Name>`.

    try:
        sl.run(flow)
    except sl.errors.StepError as exc:  # or sl.StepError
        print(exc.step, exc.position, exc.fix)
"""

from sluice.core.errors import (
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

__all__ = [
    "CassandraError",
    "CheckpointError",
    "ConstraintError",
    "CorruptSegmentError",
    "DatabaseError",
    "DecodeError",
    "DiskFullError",
    "EncodeError",
    "IncompatibleCheckpointError",
    "IncompatibleSchemaError",
    "KafkaError",
    "LogError",
    "MissingTimestampError",
    "PlanError",
    "SchemaError",
    "SchemaRegistryError",
    "SinkAheadError",
    "SinkError",
    "SluiceError",
    "StepError",
    "UserFunctionError",
]
