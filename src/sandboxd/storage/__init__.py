"""Persistent storage for threads (and volumes): btrfs subvolumes with quotas and snapshots."""

from .btrfs import Btrfs, available, is_mounted
from .threads import ThreadStore
from .volumes import VolumeStore

__all__ = ["Btrfs", "available", "ThreadStore", "VolumeStore", "is_mounted"]
