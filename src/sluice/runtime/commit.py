"""The epoch commit: one protocol for every sink, under `sl.run` and under the Kafka runtime.

An epoch is the work between two commits. Every sink writer is a participant (connectors/api.py
`SinkWriter`): it stages the epoch's rows, `prepare` makes them durable and returns a transaction (JSON),
and the runtime writes those transactions into its one durable record of the epoch:

    sl.run          the checkpoint manifest (positions + state + transactions, one atomic rename)
    Kafka runtime   each task's snapshot, inside the Kafka transaction that also holds the task's Kafka
                    output and its input offsets

Only once that record is durable are the participants committed. A crash before the record leaves
nothing visible (the staged rows are dropped by `recover`); a crash after it is repaired by `recover`,
which commits the recorded transaction again (commit is idempotent). See docs/design/commit.md.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from sluice.connectors.api import SinkWriter
from sluice.core.errors import CassandraError, DatabaseError, SinkError, SluiceError
from sluice.core.failpoints import failpoint

log = logging.getLogger("sluice.runtime")
Txns = dict[str, dict[str, Any]]
T = TypeVar("T")
SINK_COMMIT_ATTEMPTS = 3  # tries of one sink's commit before the run stops (commit is idempotent)
SINK_COMMIT_BACKOFF_S = 2.0  # the pause after the first failed try; doubled after each (2 s, 4 s: ~6 s)
_FILE_SYSTEM = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}


def sink_call(step: str, writer: object, doing: str, fn: Callable[[], T], after: str = "") -> T:
    """Call into a sink; an exception that is not already Sluice's own (a user's sl.Sink that raises, a
    file system that refuses) becomes a SinkError naming the step, the sink and what it was doing. A full
    disk stays an OSError: the runtime reports it with what to do."""
    try:
        return fn()
    except SluiceError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc):
            raise
        if exc.errno not in _FILE_SYSTEM and exc.filename is None:  # a connection reset, a timeout
            raise SinkError(f"write step {step!r} ({type(writer).__name__}): {doing} failed: "
                            f"{type(exc).__name__}: {exc}.{after}") from exc
        where = f" ({exc.filename})" if exc.filename else ""
        raise SinkError(f"write step {step!r} ({type(writer).__name__}): {doing} failed{where}: "
                        f"{exc.strerror or exc}.{after} Fix: make the output writable and run again") from exc
    except Exception as exc:
        raise SinkError(f"write step {step!r} ({type(writer).__name__}): {doing} failed: "
                        f"{type(exc).__name__}: {exc}.{after}") from exc


def transient(exc: BaseException) -> bool:
    """A sink's failure worth trying again: a connection reset, a timeout, a user's sink that raised, a
    database out of reach; not Sluice's own verdict on the rows or the target (rows that do not fit a table's
    schema, a sink ahead of the checkpoint, staged rows gone), not a full disk."""
    if isinstance(exc, DatabaseError | CassandraError):
        return True
    if isinstance(exc, SluiceError) or not isinstance(exc, Exception):
        return False
    return not (isinstance(exc, OSError) and (exc.errno in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(exc)))


class EpochCommit:
    """Two-phase commit of one epoch across a fixed set of participants (in plan order)."""

    def __init__(self, writers: Mapping[str, SinkWriter], attempts: int = SINK_COMMIT_ATTEMPTS,
                 backoff_s: float = SINK_COMMIT_BACKOFF_S) -> None:
        if attempts < 1:
            raise ValueError(f"sink_commit_attempts must be at least 1, got {attempts}")
        if backoff_s < 0:
            raise ValueError(f"the sink commit backoff must be 0 or more seconds, got {backoff_s}")
        self.writers = dict(writers)
        self.attempts = attempts
        self.backoff_s = backoff_s

    def prepare(self, epoch: int) -> Txns:
        """Every participant stages the epoch durably. If one fails, those already prepared are aborted."""
        txns: Txns = {}
        try:
            for name, writer in self.writers.items():
                txns[name] = sink_call(name, writer, f"preparing epoch {epoch}",
                                       lambda w=writer: w.prepare(epoch))  # type: ignore[misc]
        except BaseException:
            self.abort(txns)
            raise
        failpoint("after_prepare")
        return txns

    def commit(self, txns: Mapping[str, dict[str, Any]]) -> None:
        """Publish a recorded epoch. Call only after the record of `txns` is durable.

        A sink whose commit fails is tried again (`attempts` in all, pausing `backoff_s`, then twice as long
        …): its commit is idempotent and the epoch is recorded, so a transient failure (a connection reset,
        a database restarting) leaves every sink level within the run. If it still fails, the SinkError
        names the sinks that published the epoch and those that did not."""
        done: list[str] = []
        names = list(self.writers)
        for i, (name, writer) in enumerate(self.writers.items()):
            if i:
                failpoint("between_sink_commits")
            txn = txns.get(name) or {}
            pause = self.backoff_s
            for attempt in range(1, self.attempts + 1):
                tries = f" (tried {attempt} times)" if attempt > 1 else ""
                waiting = names[i + 1:]
                after = (f"{tries} {', '.join(map(repr, done))} published this epoch already"
                         + (f", {', '.join(map(repr, waiting))} did not" if waiting else "")
                         + "; the epoch is recorded, so running again with the same checkpoint directory (under "
                         "Kafka: restarting the worker) publishes it here too (recovery repeats the commit of every "
                         "sink) and brings the sinks level." if done else
                         f"{tries} The epoch is recorded: running again with the same checkpoint directory (under "
                         "Kafka: restarting the worker) publishes it.")
                raised: list[BaseException] = []

                def publish(w: SinkWriter = writer, t: dict[str, Any] = txn, seen: list[BaseException] = raised) -> None:
                    try:
                        w.commit(t)
                    except BaseException as exc:
                        seen.append(exc)  # what the sink raised, before sink_call words it
                        raise

                try:
                    sink_call(name, writer, "publishing (commit)", publish, after)
                    break
                except Exception:
                    if attempt >= self.attempts or not raised or not transient(raised[-1]):
                        raise
                    log.warning("write step %r: publishing the epoch failed (%s); trying again in %.1f s (%d of %d)",
                                name, raised[-1], pause, attempt + 1, self.attempts)
                    time.sleep(pause)
                    pause *= 2
            done.append(name)
            failpoint("after_sink_commit")
        failpoint("after_commit")

    def abort(self, txns: Mapping[str, dict[str, Any]]) -> None:
        """Drop prepared transactions whose record failed; an abort that fails is logged, not raised (the
        next `recover` drops the leftovers too)."""
        for name, txn in txns.items():
            writer = self.writers.get(name)
            if writer is None:
                continue
            try:
                writer.abort(txn)
            except Exception as exc:
                log.warning("sink %r: aborting its prepared transaction failed (%s); recovery drops it", name, exc)

    def recover(self, txns: Mapping[str, dict[str, Any] | None] | None) -> None:
        """After a restart (or when a task moves): commit the recorded epoch again, drop anything later."""
        for i, (name, writer) in enumerate(self.writers.items()):
            txn = (txns or {}).get(name)
            sink_call(name, writer, "recovering", lambda w=writer, t=txn: w.recover(t))  # type: ignore[misc]
            if i == 0:
                failpoint("during_restore")
