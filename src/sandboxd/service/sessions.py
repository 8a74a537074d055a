"""Persistent sessions: a thread's interpreter kept alive between its executions.

(The session manager lands here next; the modes are defined once, here.)
"""

from __future__ import annotations

from typing import Literal

SessionMode = Literal["stateless", "persistent"]
#: A sandbox config's session modes: "persistent" keeps a thread's interpreter between runs.
SESSION_MODES: tuple[SessionMode, ...] = ("stateless", "persistent")
