"""Usage per organization per month: executions, CPU-seconds, GiB-seconds.

Metered as each execution's final record is written, in the same transaction (service/job.py
`usage_of`, store/plans.py `add_usage`): CPU-seconds are what the sandbox's cgroup counted,
GiB-seconds the sandbox config's memory (GiB) times the run's wall time.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from ..errors import InvalidRequest
from ..store import Org, Store, Usage

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def this_month() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m")


def check_month(month: str) -> str:
    if not _MONTH.fullmatch(month):
        raise InvalidRequest(f"month must be YYYY-MM, not {month!r}")
    return month


class UsageService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def usage(self, org: Org, month: str | None = None) -> Usage:
        """What `org` used in `month` ("YYYY-MM", UTC; default: this month); zeros if nothing."""
        return await self._store.plans.usage(org.id, check_month(month or this_month()))

    async def all(self, month: str | None = None) -> list[Usage]:
        """Every organization's usage in `month` (those that ran anything)."""
        return await self._store.plans.usage_months(month=check_month(month or this_month()))
