"""Checkpoints: every source position, operator state and sink transaction, under one atomic manifest."""

from sluice.checkpoint.store import Checkpoint, CheckpointStore

__all__ = ["Checkpoint", "CheckpointStore"]
