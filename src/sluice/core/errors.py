"""Every error Sluice raises, in one tree.

    SluiceError
    ├── PlanError              the pipeline as written cannot run (unknown step, bad argument, cycle)
    ├── StepError              a step failed on data; names the step, the record's position and the fix
    │   ├── DecodeError        bytes could not be decoded (malformed JSON, wrong type)
    │   ├── SchemaError        a required field is missing or null
    │   ├── MissingTimestampError  the event-time column is null for a record
    │   └── UserFunctionError  a user's map/flat_map function raised
    ├── LogError               the embedded log is damaged or misused
    │   └── CorruptSegmentError
    └── DiskFullError          no space left while writing output, state or a checkpoint
"""

from __future__ import annotations


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
    """A record has no event time."""


class UserFunctionError(StepError):
    """A user-supplied per-record function raised."""


class LogError(SluiceError):
    """The embedded log was misused or is damaged."""


class CorruptSegmentError(LogError):
    """A log segment failed its CRC check somewhere other than its tail."""


class DiskFullError(SluiceError):
    """The disk filled up. Whatever was committed before is intact; the run can resume."""


DEAD_LETTER_FIX = 'route bad records aside with on_error="dead_letter" and write the step\'s .dead_letters stream'
