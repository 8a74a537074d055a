"""Start-up recovery: executions a stopped server left unfinished end failed/interrupted.

Scoped to the node that ran them, so a server that restarts beside others on one database
touches none of their running executions. Rows that name no node (from before nodes were
recorded) are recovered by whichever node starts, as they always were.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from ..store import Store, utcnow
from .audit import AuditLog, ExecutionFacts


class Recovery(Protocol):
    async def recover(self) -> int:
        """End this node's unfinished executions; how many there were."""


class NodeRecovery:
    """Today's implementation: one pass over the database at start, before serving."""

    def __init__(self, store: Store, node_id: str, audit: AuditLog | None = None) -> None:
        self._store = store
        self._node_id = node_id
        self._audit = audit

    async def recover(self) -> int:
        audit = self._audit

        async def audited(conn: AsyncConnection, trace_id: str) -> None:
            assert audit is not None
            # Its code and client address went with the stopped server: the row says so (None).
            execution = await self._store.executions.get_in(conn, trace_id)
            await audit.execution(execution, ExecutionFacts(code=None), conn)

        return await self._store.executions.fail_unfinished(
            node_id=self._node_id, error="interrupted", at=utcnow(), then=audited if audit is not None else None
        )
