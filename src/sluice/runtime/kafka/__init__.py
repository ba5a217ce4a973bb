"""The Kafka runtime (a package by concern: settings, plan cutting, admin, the state topic, transactions,
tasks, the worker loop): one flow, many worker processes, partitions assigned by a consumer group.

Each input partition is a *task* (as in Kafka Streams): its own operators, state and watermark, fed
only by that partition (and the same partition of every other, co-partitioned, input topic). A worker
runs the tasks the group gives it. Every `commit_interval_s` it commits, in one Kafka transaction:

    the output its tasks produced  +  each task's state (to the compacted topic <app_id>-state,
    partition = task)  +  the input offsets (sendOffsetsToTransaction, with the group's metadata)

so the output, the state and the positions move together or not at all. On assignment a task reads its
newest committed state and starts at the committed offsets (which are the ones saved with that state);
a worker that dies leaves an open transaction that the broker aborts after `transaction_timeout_ms`,
and its partitions resume elsewhere from the last commit. Consumers of the output must read with
isolation.level=read_committed.

A failed commit is handled as librdkafka asks: retriable errors are retried, abortable ones abort and
rewind the tasks to the last commit, and anything else, a timeout included (librdkafka lacks KIP-890),
is fatal for the producer: a new one is made with the same transactional.id (which fences the old one)
and the tasks rewind. A commit counts as done once its markers are written (the last stable offset of each
partition passes its records); after a rollback, records a restarted broker left unmarked are swept, and
what cannot be repaired stops the worker with an error (transactions.py).
"""

from sluice.runtime.kafka.plan import check_partitioning
from sluice.runtime.kafka.settings import KafkaRuntime, WorkerResult
from sluice.runtime.kafka.worker import Worker, run_worker

__all__ = ["KafkaRuntime", "Worker", "WorkerResult", "check_partitioning", "run_worker"]
