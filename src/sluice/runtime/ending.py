"""How a process that has run its flows ends.

At exit the interpreter runs the cyclic garbage collector over every object still alive (three full
collections). After `import polars` that is ~30,000 objects, nearly all Polars' own, and it costs 80–275 ms
of CPU on this project's benchmark machine: a quarter of a 1M-event job. The `sluice` command and the
benchmark runner skip that walk once their flows have ended: every sink is committed and closed by then.
Reference cycles still unreachable at exit are left for the operating system instead of being finalized,
so a process that keeps its own files open in such cycles should not call this.
"""

from __future__ import annotations


def skip_exit_collections() -> None:
    """Let the interpreter's collections at exit skip every object alive when it exits (`gc.freeze`)."""
    import atexit
    import gc

    atexit.register(gc.freeze)
