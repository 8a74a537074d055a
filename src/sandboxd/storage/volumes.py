"""Volume storage: one btrfs subvolume per volume, with its quota.

    <root>/volumes/<org_id>/<slug>    owner root, group: the org's host gid, mode 2770

The setgid bit keeps every new file in the organization's group; sandboxes run with that
group and umask 002, so all of an organization's sandboxes share the files and no other
organization's sandbox can traverse to them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .btrfs import Btrfs
from .orgs import OrgQuotas


class VolumeStore:
    """Volumes count against their organization's cap with its threads (orgs.py)."""

    def __init__(self, fs: Btrfs, orgs: OrgQuotas) -> None:
        self._fs = fs
        self.orgs = orgs

    def path(self, org_id: str, slug: str) -> Path:
        return self._fs.root / "volumes" / org_id / slug

    def create(self, org_id: str, slug: str, quota_bytes: int, gid: int) -> Path:
        self._fs.mount()
        self.orgs.check_room(org_id)  # the service has made room
        path = self.path(org_id, slug)
        for parent in (self._fs.root, self._fs.root / "volumes", path.parent):
            parent.mkdir(exist_ok=True)
            os.chmod(parent, 0o711)
        self._fs.create(path, quota_bytes, self.orgs.group(org_id))
        os.chown(path, 0, gid)
        os.chmod(path, 0o2770)
        return path

    def ready(self, org_id: str, slug: str) -> Path | None:
        """The volume's directory, mounting the filesystem if needed; None if it is gone."""
        if not self._fs.image.exists():
            return None
        self._fs.mount()
        path = self.path(org_id, slug)
        return path if path.is_dir() else None

    def delete(self, org_id: str, slug: str) -> None:
        path = self.ready(org_id, slug)
        if path is not None:
            self._fs.delete(path)
