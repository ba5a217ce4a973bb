"""What a Kafka runtime is told (KafkaRuntime) and what a worker reports (WorkerResult)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sluice.connectors.kafka import bootstrap_servers
from sluice.runtime.commit import SINK_COMMIT_ATTEMPTS, SINK_COMMIT_BACKOFF_S
from sluice.runtime.executor import DEFAULT_BATCH_SIZE


@dataclass(frozen=True)
class KafkaRuntime:
    """How a flow runs over Kafka. Workers with the same `app_id` share the work."""

    app_id: str
    bootstrap: str | None = None  # default: the sources' bootstrap
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # security settings etc.; never shown
    commit_interval_s: float = 1.0
    transaction_timeout_ms: int = 10_000
    session_timeout_ms: int = 10_000
    until_end: bool = False  # stop once every input partition is committed at its end offset (as of start)
    instance: str | None = None  # this worker's name (its transactional.id suffix); default random
    max_failed_commits: int = 8  # consecutive failed commits (each retried after a growing pause) before giving up
    batch_size: int = DEFAULT_BATCH_SIZE
    # a task's own sink (files, databases …) whose commit fails is tried this often, pausing
    # sink_commit_backoff_s, then twice as long …, before the worker stops (runtime/commit.py)
    sink_commit_attempts: int = SINK_COMMIT_ATTEMPTS
    sink_commit_backoff_s: float = SINK_COMMIT_BACKOFF_S
    poll_records: int = 20_000

    def __post_init__(self) -> None:
        if self.bootstrap is not None:  # kafka://HOST:PORT or HOST:PORT[,HOST:PORT]
            object.__setattr__(self, "bootstrap", bootstrap_servers(self.bootstrap))


@dataclass
class WorkerResult:
    records: int = 0
    seconds: float = 0.0
    commits: int = 0
    rewinds: int = 0
    producer_restarts: int = 0
    sweeps: int = 0  # transactions made only to end records a broker restart left unmarked (transactions.py)
    tasks_started: int = 0
    produced: int = 0  # records sent to output and dead-letter topics (committed or rewound)
    first_assigned: float = 0.0  # wall clock (time.time()) of the first assignment
    finished: float = 0.0  # wall clock when the work was done (before closing the clients)
    late: dict[str, int] = field(default_factory=dict)  # step → rows put on its late stream (committed work)
    dead_letters: dict[str, int] = field(default_factory=dict)  # step → records dead-lettered (committed work)
