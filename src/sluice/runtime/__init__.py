"""Compile a plan into operators and run it."""

from sluice.runtime.executor import RunResult, run

__all__ = ["RunResult", "run"]
