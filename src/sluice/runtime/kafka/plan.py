"""Cutting a flow for the Kafka runtime: which steps a task runs, which stand-ins replace the sources
and Kafka sinks inside a task, and whether its state is keyed as the topics are partitioned."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sluice.connectors.api import SinkContext, SourceContext
from sluice.core.errors import PlanError
from sluice.core.plan import Plan, Read, Step, Write
from sluice.runtime.kafka.settings import KafkaRuntime


@dataclass(frozen=True)
class FeedSource:
    """Stands in for a Kafka source inside a task: the worker reads and decodes, then feeds the task."""

    topic: str

    def open(self, ctx: SourceContext) -> FeedReader:
        return FeedReader()


class FeedReader:
    def partitions(self) -> int:
        return 1

    def batches(self) -> Any:
        return iter(())

    def position(self) -> dict[str, Any]:
        return {}

    def seek(self, position: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class SharedSink:
    """Stands in for a Kafka sink inside a task: records go to the worker's transactional producer."""

    writer: Any  # KafkaWriter | RepartitionWriter

    def open(self, ctx: SinkContext) -> Any:
        return self.writer


def check_partitioning(plan: Plan, keys: set[str | None] | None = None) -> None:
    """Tasks see one partition each, so every keyed step must be keyed by what the topics are keyed by."""
    if keys is None:
        keys = {st.source.key for st in plan.steps if isinstance(st, Read)}
    for st in plan.steps:
        if isinstance(st, Read | Write) or not st.stateful:
            continue
        names = list(st.key_columns() or ())
        if not names:
            raise PlanError(f"step {st.name!r} keeps state over all records; under the Kafka runtime each partition "
                            "is processed on its own. Key the step (key_by) by the input topics' key")
        if len(keys) != 1 or None in keys or ",".join(names) != next(iter(keys)):
            declared = ", ".join(sorted(k or "none" for k in keys))
            raise PlanError(
                f"step {st.name!r} is keyed by {names} but the input topics are keyed by {declared}. Under the Kafka "
                "runtime a task sees one partition, so state must be keyed as the topic is partitioned: declare the "
                "topic's key (KafkaSource(..., key='field')), or first write the stream to a topic keyed by "
                f"{names[0]!r} (KafkaSink(..., key={names[0]!r})) and read that")


def resolve_topics(plan: Plan, rt: KafkaRuntime) -> Plan:
    """sl.Topic sources and sinks, on Kafka at rt.bootstrap."""
    from sluice.connectors.topic import Topic

    steps: list[Step] = []
    for st in plan.steps:
        spec = st.source if isinstance(st, Read) else st.sink if isinstance(st, Write) else None
        if isinstance(spec, Topic):
            if not rt.bootstrap:
                raise PlanError(f"step {st.name!r} uses sl.Topic({spec.name!r}); say which Kafka cluster: "
                                "KafkaRuntime(bootstrap=...) or sluice run --broker kafka://HOST:PORT")
            broker = f"kafka://{rt.bootstrap}"
            if isinstance(st, Read):
                st = replace(st, source=spec.source(broker))
            elif isinstance(st, Write):
                st = replace(st, sink=spec.sink(broker))
        steps.append(st)
    return Plan(plan.name, tuple(steps))
