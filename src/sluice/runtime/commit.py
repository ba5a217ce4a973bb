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

import logging
from collections.abc import Mapping
from typing import Any

from sluice.connectors.api import SinkWriter
from sluice.core.failpoints import failpoint

log = logging.getLogger("sluice.runtime")
Txns = dict[str, dict[str, Any]]


class EpochCommit:
    """Two-phase commit of one epoch across a fixed set of participants (in plan order)."""

    def __init__(self, writers: Mapping[str, SinkWriter]) -> None:
        self.writers = dict(writers)

    def prepare(self, epoch: int) -> Txns:
        """Every participant stages the epoch durably. If one fails, those already prepared are aborted."""
        txns: Txns = {}
        try:
            for name, writer in self.writers.items():
                txns[name] = writer.prepare(epoch)
        except BaseException:
            self.abort(txns)
            raise
        failpoint("after_prepare")
        return txns

    def commit(self, txns: Mapping[str, dict[str, Any]]) -> None:
        """Publish a recorded epoch. Call only after the record of `txns` is durable."""
        for i, (name, writer) in enumerate(self.writers.items()):
            if i:
                failpoint("between_sink_commits")
            writer.commit(txns.get(name) or {})
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
            writer.recover((txns or {}).get(name))
            if i == 0:
                failpoint("during_restore")
