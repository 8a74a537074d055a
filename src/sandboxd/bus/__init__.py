"""Execution events: the log every delivery mode reads (in-process; Redis Streams later)."""

from .interface import ExecutionLog
from .log import Event, EventLog, EventType, Writer
from .output import OutputEvents

__all__ = ["Event", "EventLog", "EventType", "ExecutionLog", "OutputEvents", "Writer"]
