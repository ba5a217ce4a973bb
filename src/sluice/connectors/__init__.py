"""Connectors: where records come from and go to. Each is independent of the others."""
