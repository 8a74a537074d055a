"""Persistent storage for threads (and volumes): btrfs subvolumes with quotas and snapshots."""

from .btrfs import Btrfs, StorageFull, available, is_mounted
from .orgs import OrgQuotaReached, OrgQuotas
from .threads import ThreadStore
from .volumes import VolumeStore

__all__ = [
    "Btrfs", "available", "OrgQuotaReached", "OrgQuotas", "StorageFull", "ThreadStore", "VolumeStore",
    "is_mounted",
]
