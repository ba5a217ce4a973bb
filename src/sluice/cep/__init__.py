"""Complex event processing: patterns over keyed streams in event-time order."""

from sluice.cep.pattern import Pattern

__all__ = ["Pattern"]
