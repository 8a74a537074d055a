"""Execution events: the log every delivery mode reads (in-process; Redis Streams later)."""

from .log import Event, EventLog, EventType

__all__ = ["Event", "EventLog", "EventType"]
