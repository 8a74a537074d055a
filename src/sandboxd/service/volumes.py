"""Volumes: named, org-wide persistent storage, mounted at /data/<slug>/ for the keys bound to it.

A key is bound to a volume read-write or read-only. Inside the sandbox a read-only binding is
a read-only bind mount. Files in a volume belong to the organization's host group (setgid
directory, sandboxes run with umask 002), so every sandbox of the org can share them while
other organizations' sandboxes cannot even traverse to them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..store import Volume


@dataclass(frozen=True)
class VolumeAccess:
    """What a principal may do with one volume: where its files are, and whether read-only."""

    volume: Volume
    path: Path
    read_only: bool
