"""Failpoints: named places where a test can make the process die on purpose, at an exact moment.

    from sluice.core import failpoints
    failpoints.arm(["after_prepare@3"])  # the 3rd time a checkpoint has prepared its sinks: os._exit(137)

A crash test runs a flow in a subprocess that arms one failpoint, lets it die there (no cleanup, no
flush, like kill -9), runs it again and checks the output. Nothing is armed unless a caller arms it;
nothing here reads the environment (DESIGN §7), so the subprocess arms its failpoints itself.

The places, in the order a checkpoint passes them (runtime/executor.py `_checkpoint`):
  after_prepare      sinks have staged and made durable their epoch; no manifest yet
  after_manifest     the checkpoint's manifest is durable; no sink has published yet
  after_sink_commit  a sink has published its epoch (fires once per sink)
"""

from __future__ import annotations

import os
from collections.abc import Iterable

NAMES = frozenset({"after_prepare", "after_manifest", "after_sink_commit"})
EXIT_CODE = 137  # what a shell reports for a process killed by SIGKILL

_armed: dict[str, int] = {}  # name → hits left until it fires


def arm(specs: Iterable[str]) -> None:
    """Arm failpoints: `name` fires at its first hit, `name@N` at its N-th."""
    for spec in specs:
        name, _, nth = spec.partition("@")
        if name not in NAMES:
            raise ValueError(f"unknown failpoint {name!r}; the failpoints are {', '.join(sorted(NAMES))}")
        hits = int(nth) if nth else 1
        if hits < 1:
            raise ValueError(f"failpoint {spec!r}: the hit number must be at least 1")
        _armed[name] = hits


def disarm() -> None:
    _armed.clear()


def failpoint(name: str) -> None:
    """End the process at once if `name` is armed and this is the hit it waits for."""
    left = _armed.get(name)
    if left is None:
        return
    if left > 1:
        _armed[name] = left - 1
        return
    os._exit(EXIT_CODE)
