"""`sl.Topic`: a named stream that lives on the embedded log or on Apache Kafka, chosen by one setting.

    events = flow.read("events", sl.Topic("events", key="user_id"), schema=...)
    ...write("out", sl.Topic("user-stats", key="user_id"))

The broker is the process's broker setting (`sluice.settings.broker()`: `sluice run --broker`,
`settings.set_broker(...)`, else `SLUICE_BROKER`): a directory for the embedded log (default
`.sluice/log`), or Kafka as `HOST:PORT[,HOST:PORT]` or `kafka://HOST:PORT`. A value that could be either
(a bare name, or an existing directory called like an address) is an error, not a guess. Nothing else in
the pipeline changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice import settings
from sluice.connectors.api import SinkContext, SourceContext
from sluice.core.errors import PlanError
from sluice.formats.api import Format
from sluice.formats.json import Json


def kafka_bootstrap(broker: str) -> str | None:
    """HOST:PORT[,HOST:PORT] when `broker` names Kafka, None when it names a directory of the embedded log."""
    from sluice.connectors.kafka import bootstrap_servers, is_host_port

    setting = f"the broker setting (sluice run --broker, or SLUICE_BROKER) {broker!r}"
    if broker.startswith("kafka://"):
        return bootstrap_servers(broker)
    if is_host_port(broker):
        if Path(broker).is_dir():
            raise PlanError(f"{setting} is a Kafka address and also a directory here; write kafka://{broker} "
                            f"for Kafka or ./{broker} for the embedded log")
        return bootstrap_servers(broker)
    path = Path(broker)
    if path.is_dir() or broker.startswith(".") or "/" in broker or os.sep in broker:
        if path.exists() and not path.is_dir():
            raise PlanError(f"{setting} is a file; the embedded log needs a directory")
        return None
    raise PlanError(f"{setting} is neither HOST:PORT nor an existing directory: for Kafka give the port "
                    f"({broker}:9092 or kafka://{broker}:9092), for the embedded log a path (./{broker})")


@dataclass(frozen=True)
class Topic:
    """A topic on whichever broker the run uses. `key` is the field records are partitioned by;
    `partitions` is used when the embedded log creates the topic (Kafka topics are created by you)."""

    name: str
    key: str | None = None
    partitions: int = 1
    format: Format = field(default_factory=Json)
    config: dict[str, Any] = field(default_factory=dict, repr=False)  # Kafka client settings (security)

    def source(self, broker: str | None = None) -> Any:
        broker = broker or settings.broker()
        bootstrap = kafka_bootstrap(broker)
        if bootstrap is not None:
            from sluice.connectors.kafka import KafkaSource

            return KafkaSource(self.name, bootstrap, config=self.config, format=self.format, key=self.key)
        from sluice.connectors.log import LogSource

        return LogSource(self.name, broker, format=self.format)

    def sink(self, broker: str | None = None) -> Any:
        broker = broker or settings.broker()
        bootstrap = kafka_bootstrap(broker)
        if bootstrap is not None:
            from sluice.connectors.kafka import KafkaSink

            return KafkaSink(self.name, bootstrap, key=self.key, config=self.config, format=self.format)
        from sluice.connectors.log import LogSink

        return LogSink(self.name, broker, partitions=self.partitions, key=self.key, format=self.format)

    def open(self, ctx: SourceContext | SinkContext) -> Any:
        spec = self.source() if isinstance(ctx, SourceContext) else self.sink()
        return spec.open(ctx)
