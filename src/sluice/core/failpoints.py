"""Named places in the commit path where a test can make the process die, deterministically.

A crash test arms a failpoint in the process it starts (the `sluice` CLI arms what `SLUICE_FAILPOINTS`
names, e.g. `after_manifest` or `after_kafka_commit@3` for its third hit), then checks that a restart
ends with exactly the output one uninterrupted run writes. Unarmed, `failpoint()` costs one dict lookup.

The commit path's failpoints, in order:

    after_prepare         every sink has prepared (staged) the epoch; nothing durable records it yet
    during_chunked_state  sl.run: a chunk of a state backend's dump is written (fires after each chunk);
                          the checkpoint has no manifest yet
    after_manifest        sl.run: the checkpoint manifest is durable; no sink has committed the epoch
    after_kafka_commit    Kafka runtime: the Kafka transaction (output, state, offsets) has committed;
                          no other sink has committed the epoch
    after_sink_commit     a sink has committed the epoch (fires after each sink's commit)
    between_sink_commits  one sink has committed the epoch, the next has not
    after_commit          every sink has committed the epoch
    during_restore        a restore has begun re-committing the recovered epoch (one sink done)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable

POINTS = ("after_prepare", "during_chunked_state", "after_manifest", "after_kafka_commit", "after_sink_commit", "between_sink_commits",
          "after_commit", "during_restore")

_armed: dict[str, int] = {}  # name → hits left until it fires


def arm(spec: str | Iterable[str]) -> None:
    """Arm failpoints: "name" fires at the first hit, "name@N" at the N-th; several comma-separated."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, nth = item.partition("@")
        if name not in POINTS:
            raise ValueError(f"unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        hits = int(nth) if nth else 1
        if hits < 1:
            raise ValueError(f"failpoint {item!r}: the hit to fire at must be at least 1")
        _armed[name] = hits


def disarm() -> None:
    _armed.clear()


def failpoint(name: str) -> None:
    """Die here (SIGKILL, as a crash would) if this failpoint is armed and its hit count is reached."""
    if not _armed or name not in _armed:
        return
    _armed[name] -= 1
    if _armed[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
