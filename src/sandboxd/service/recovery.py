"""Start-up recovery: executions a stopped server left unfinished end failed/interrupted.

Scoped to the node that ran them, so a server that restarts beside others on one database
touches none of their running executions. Rows that name no node (from before nodes were
recorded) are recovered by whichever node starts, as they always were.
"""

from __future__ import annotations

from typing import Protocol

from ..store import Store, utcnow


class Recovery(Protocol):
    async def recover(self) -> int:
        """End this node's unfinished executions; how many there were."""


class NodeRecovery:
    """Today's implementation: one pass over the database at start, before serving."""

    def __init__(self, store: Store, node_id: str) -> None:
        self._store = store
        self._node_id = node_id

    async def recover(self) -> int:
        return await self._store.executions.fail_unfinished(node_id=self._node_id, error="interrupted", at=utcnow())
