"""Each organization's cap on all its storage: a btrfs level-1 qgroup over its subvolumes.

Per-thread and per-volume quotas (level-0 qgroups) bound one subvolume; without more, 1,000
threads × 1 GiB of one organization outgrow the shared image (issue #12). So every thread
home, every execution's working copy and every volume of an organization is a member of one
level-1 qgroup, `1/<n>`, limited to `org_storage_quota_mib`: the kernel counts shared extents
once there (a working copy costs only what it changes), and a write beyond the cap fails with
EDQUOT inside the sandbox. A working copy joins the group in its snapshot ioctl (qgroup
inherit), so it is never outside the cap.

    <root>/orgs/<org_id>    an empty subvolume; its id is the organization's <n>

Taking the number from a subvolume id keeps it unique, stable across restarts and shared by
every process on the data dir (server and CLI) with no table to keep.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from ..errors import SandboxSetupError
from .btrfs import Btrfs, StorageFull

_MIB = 1024 * 1024
#: At most this long a write waits for deleted subvolumes' space (a reclaim takes up to ~40 s
#: for a big subvolume; a run rather starts and may get EDQUOT/ENOSPC than stall).
RECLAIM_WAIT_S = 5.0


class OrgQuotaReached(Exception):
    """The organization uses all of its storage cap; the service refuses new threads and volumes."""

    def __init__(self, used_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"your organization has used {used_bytes // _MIB} MiB of its {limit_bytes // _MIB} MiB "
            "storage quota (all threads and volumes); delete files, threads or volumes first"
        )


class OrgQuotas:
    def __init__(self, fs: Btrfs, limit_bytes: int) -> None:
        self._fs = fs
        self.limit_bytes = limit_bytes
        self._groups: dict[str, int] = {}
        self._lock = threading.Lock()

    def group(self, org_id: str) -> int:
        """The organization's qgroup number; its anchor and group are made on first use."""
        if (n := self._groups.get(org_id)) is not None:
            return n
        with self._lock:
            if (n := self._groups.get(org_id)) is not None:
                return n
            self._fs.mount()
            anchor = self._fs.root / "orgs" / org_id
            for parent in (self._fs.root, anchor.parent):
                parent.mkdir(exist_ok=True)
                os.chmod(parent, 0o711)
            if not anchor.is_dir():
                try:
                    self._fs.create(anchor, None)
                except SandboxSetupError:
                    if not anchor.is_dir():  # not made by another process meanwhile
                        raise
            n = self._fs.subvolume_id(anchor)
            self._fs.group(n, self.limit_bytes)
            self._groups[org_id] = n
            return n

    def apply_limit(self) -> None:
        """Set every organization's cap to `limit_bytes` (on server start: the setting may have
        changed). Only then: a CLI command run with other settings must not move the caps."""
        orgs = self._fs.root / "orgs"
        for anchor in orgs.iterdir() if orgs.is_dir() else ():
            self._fs.group_limit(self.group(anchor.name), self.limit_bytes)

    def check_room(self, org_id: str) -> None:
        """Refuse a new thread or volume when the organization's cap is (all but) used
        (`make_room` first)."""
        used, limit = self._fs.group_usage(self.group(org_id))
        limit = limit or self.limit_bytes
        if limit - used < self._all_but_used(limit):
            raise OrgQuotaReached(used, limit)

    async def make_room(self, org_id: str, want_bytes: int) -> None:
        """Before a write of up to `want_bytes`: wait for deleted subvolumes to give their space
        back if the write cannot go ahead otherwise (`_short`); refuse on a full filesystem.

        On the event loop: the wait holds no thread of the loop's executor, which every
        organization's thread opens and file calls share.
        """
        if await asyncio.to_thread(self._short, org_id, want_bytes):
            await self._fs.reclaimer.wait_async(RECLAIM_WAIT_S)
        await asyncio.to_thread(self._require_free)

    def _short(self, org_id: str, want_bytes: int) -> bool:
        """Whether a reclaim in flight is worth waiting for: only when the filesystem has no
        room for a write of `want_bytes`, or the organization has all but used its cap.

        Not whenever the organization is within `want_bytes` of its cap: nearly every commit
        deletes a subvolume, so a reclaim is nearly always pending under load, and such an
        organization (every one whose cap is below a thread's quota) would wait on every run
        although its run may well fit. A run that then outgrows the cap gets EDQUOT.
        """
        self.group(org_id)  # mounts the filesystem
        if not self._fs.reclaimer.pending:
            return False
        if self._fs.free_bytes() < want_bytes + self.full_below:
            return True
        used, limit = self._fs.group_usage(self.group(org_id))
        limit = limit or self.limit_bytes
        return limit - used < self._all_but_used(limit)

    @staticmethod
    def _all_but_used(limit: int) -> int:
        """Below this much room an organization's cap counts as used: a new thread or volume is
        refused, and a run first waits for a reclaim in flight."""
        return max(4 * _MIB, limit // 50)

    def _require_free(self) -> None:
        if self._fs.free_bytes() < self.full_below:
            raise StorageFull(
                "the storage filesystem is full (storage_size_gib); free space by deleting threads "
                "or volumes, or give the server a bigger image"
            )

    @property
    def full_below(self) -> int:
        """Below this much free space the filesystem counts as full (1% of it, at least 8 MiB)."""
        return max(8 * _MIB, self._fs.size_gib * 1024 * _MIB // 100)

    def adopt(self, org_id: str, subvolumes: list[Path], parents: dict[int, int]) -> bool:
        """Make subvolumes of an organization made before org quotas members of its group;
        True if any was added (then quotas need one rescan)."""
        n = self.group(org_id)
        added = False
        for path in subvolumes:
            subvolume = self._fs.subvolume_id(path)
            if parents.get(subvolume) != n:
                self._fs.assign(subvolume, n)
                added = True
        return added
