"""Every error Sluice raises, in one tree (public as `sluice.errors` and as `sl.<Name>`).

    SluiceError
    ├── PlanError              the pipeline as written cannot run (unknown step, bad argument, cycle)
    ├── StepError              a step failed on data; names the step, the record's position and the fix
    │   ├── DecodeError        bytes could not be decoded (malformed JSON, wrong type)
    │   ├── SchemaError        a required field is missing or null
    │   ├── MissingTimestampError  the event-time column is null, or out of range, for a record
    │   ├── UserFunctionError  a user's map/flat_map/process function raised or returned the wrong thing
    │   ├── EncodeError        a record does not fit the sink's format (e.g. its Avro schema)
    │   └── ConstraintError    a database refused a row (a constraint of the table); names the constraint
    ├── CheckpointError        a checkpoint cannot be written or used
    │   ├── IncompatibleCheckpointError  the flow changed in a way its checkpointed state cannot follow
    │   └── SinkAheadError     a sink applied epochs after the checkpoint recovery must use (a damaged newer one)
    ├── LogError               the embedded log is damaged or misused
    │   └── CorruptSegmentError  a log segment fails its CRC check somewhere other than its tail
    ├── KafkaError             Kafka refused or failed an operation
    ├── SinkError              a sink (Redis, Delta Lake, a user's sl.Sink, a file system) refused or failed
    ├── DatabaseError          a database (PostgreSQL) cannot be reached or refused an operation
    ├── CassandraError         Cassandra could not be reached, or refused or failed an operation
    ├── SchemaRegistryError    the schema registry refused a request or could not be reached
    │   └── IncompatibleSchemaError  a schema change breaks the subject's compatibility level
    └── DiskFullError          no space left while writing output, state or a checkpoint

Internal signals, raised and caught inside Sluice (never seen by a user), are defined here too and listed
in `INTERNAL`: RejectedRecord, FrameError, HeaderError, Unsupported, WrongJsonType.
"""

from __future__ import annotations

import re


class SluiceError(Exception):
    """Base of every error Sluice raises."""


class PlanError(SluiceError):
    """The pipeline, as written, cannot run."""


class StepError(SluiceError):
    """A step failed on a record. The message names the step, the record's position and the fix."""

    def __init__(self, step: str, position: str, detail: str, fix: str) -> None:
        self.step = step
        self.position = position
        self.detail = detail
        self.fix = fix
        super().__init__(f"step {step!r} failed at {position}: {detail}. Fix: {fix}")


class DecodeError(StepError):
    """Input bytes could not be decoded into the declared schema."""


class SchemaError(StepError):
    """A record lacks a required field or has it null."""


class MissingTimestampError(StepError):
    """A record has no usable event time: null, or beyond ±2^61 ms."""


class UserFunctionError(StepError):
    """A user-supplied per-record function raised."""


class EncodeError(StepError):
    """A record could not be encoded for its sink: it does not match the sink's schema."""


class ConstraintError(StepError):
    """A database refused a row: it violates a constraint of the table (`constraint` names it)."""

    def __init__(self, step: str, position: str, detail: str, fix: str, constraint: str | None = None) -> None:
        self.constraint = constraint
        super().__init__(step, position, detail, fix)


class RejectedRecord(SluiceError):
    """Raised by a format's encoder for the record at `index` of the frame it was given; the sink or the
    runtime turns it into an `EncodeError` that names the step and the record's position."""

    def __init__(self, index: int, detail: str) -> None:
        self.index = index
        self.detail = detail
        super().__init__(f"record {index} of the batch: {detail}")


class LogError(SluiceError):
    """The embedded log was misused or is damaged."""


class CorruptSegmentError(LogError):
    """A log segment failed its CRC check somewhere other than its tail."""


class DiskFullError(SluiceError):
    """The disk filled up. Whatever was committed before is intact; the run can resume."""


class CheckpointError(SluiceError):
    """A checkpoint cannot be written or used."""


class IncompatibleCheckpointError(CheckpointError):
    """The flow changed in a way its checkpointed state cannot follow."""


class SinkAheadError(CheckpointError):
    """A sink has applied an epoch newer than the checkpoint recovery chose, and cannot take it back."""

    def __init__(self, step: str, target: str, applied: int, recorded: int | None) -> None:
        since = f"epoch {recorded}" if recorded else "no epoch (it starts from the beginning)"
        super().__init__(
            f"write step {step!r}: {target} has already applied epoch {applied}, but the checkpoint being resumed "
            f"recorded {since}: the newer checkpoints are damaged or were deleted (see the warnings above), and this "
            f"sink cannot take back what it applied. Resuming would write epochs {(recorded or 0) + 1}-{applied} "
            f"again or skip different rows. Fix: restore the newer checkpoint(s) from a backup; or start afresh: "
            f"remove what this flow wrote to {target} (and its commit marker) and use a new checkpoint directory")
        self.step, self.applied, self.recorded = step, applied, recorded


class KafkaError(SluiceError):
    """Kafka refused or failed an operation."""


class SinkError(SluiceError):
    """A sink's target (Redis, a Delta table) refused or failed an operation; the message says which."""


class DatabaseError(SluiceError):
    """A database cannot be reached, or refused an operation (not a row: see ConstraintError)."""


class CassandraError(SluiceError):
    """Cassandra could not be reached, or refused or failed an operation (not one row's fault)."""


class SchemaRegistryError(SluiceError):
    """The schema registry refused a request or could not be reached."""


class IncompatibleSchemaError(SchemaRegistryError):
    """A schema change breaks the subject's compatibility level."""


# --- internal signals: raised and caught inside Sluice ------------------------------------------


class FrameError(Exception):
    """A log frame is incomplete or fails its CRC (the log store turns it into a LogError or a torn tail)."""


class HeaderError(ValueError):
    """A CSV header lacks a required declared column (position: line 1); the CSV source reports it."""


class Unsupported(Exception):
    """This Avro schema or block is not for the columnar decoder: the registry format falls back to fastavro."""


class WrongJsonType(Exception):
    """A JSON str field holds a number, boolean, object or array, which the fast reader turned into text; the
    JSON format finds the record and names the field."""


INTERNAL = (RejectedRecord, FrameError, HeaderError, Unsupported, WrongJsonType)


ENCODE_FIX = ("make the record fit the sink's schema before the sink (cast or fill the column with "
              ".with_columns), or filter such records out (.filter) or route them aside (.branch)")
DEAD_LETTER_FIX = 'route bad records aside with on_error="dead_letter" and write the step\'s .dead_letters stream'

_INTERNAL_NAME = re.compile(r'"__sl_\w+",\s*|,?\s*"__sl_\w+"')


def polars_detail(exc: BaseException) -> str:
    """A Polars error's first line, without the engine's internal column names (`__sl_*`)."""
    first = str(exc).strip().split("\n")[0]
    return _INTERNAL_NAME.sub("", first)
