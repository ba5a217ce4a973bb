"""Lookup tables for enrichment joins: an external store asked for the keys a batch needs.

A lookup is by processing time (the store's current value), as in Flink's lookup joins: use a
temporal join over a changelog when results must be reproducible in event time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sluice.core.errors import PlanError


def redact(url: str) -> str:
    """The URL without its password: secrets never reach messages or logs."""
    return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


@dataclass(frozen=True)
class RedisLookup:
    """Redis hashes: key `prefix + <join key>`, the given `fields` become columns (strings, or null)."""

    url: str
    fields: tuple[str, ...]
    prefix: str = ""
    timeout_s: float = 5.0
    options: dict[str, Any] = field(default_factory=dict)

    def connect(self) -> _RedisClient:
        if not self.fields:
            raise PlanError("RedisLookup needs the hash fields to fetch, e.g. fields=('name', 'tier')")
        return _RedisClient(self)

    def describe(self) -> str:
        return f"redis {redact(self.url)}"


class _RedisClient:
    def __init__(self, spec: RedisLookup) -> None:
        import redis

        self.spec = spec
        self.client = redis.Redis.from_url(spec.url, socket_timeout=spec.timeout_s,
                                           socket_connect_timeout=spec.timeout_s, decode_responses=True, **spec.options)

    def fetch(self, keys: list[str]) -> list[list[str | None]]:
        """One round trip for all keys: a pipeline of HMGETs."""
        pipe = self.client.pipeline(transaction=False)
        for k in keys:
            pipe.hmget(self.spec.prefix + k, list(self.spec.fields))
        return list(pipe.execute())

    def close(self) -> None:
        self.client.close()
