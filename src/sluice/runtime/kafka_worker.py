"""The Kafka runtime's former module: everything now lives in the package sluice.runtime.kafka."""

from sluice.runtime.kafka import KafkaRuntime, Worker, WorkerResult, check_partitioning, run_worker

__all__ = ["KafkaRuntime", "Worker", "WorkerResult", "check_partitioning", "run_worker"]
