"""Keyed state backends: in memory (default) and RocksDB (rocksdict) for state larger than memory."""

from sluice.state.backends import MemoryBackend, RocksDBBackend, StateBackend, make_backend

__all__ = ["MemoryBackend", "RocksDBBackend", "StateBackend", "make_backend"]
