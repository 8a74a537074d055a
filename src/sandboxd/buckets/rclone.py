"""PLACEHOLDER until helper A's module lands (replaced at merge)."""

from __future__ import annotations

from pathlib import Path

from .providers import Remote


class MountFailed(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RcloneMount:
    path: Path

    def alive(self) -> bool:
        return False

    async def unmount(self) -> None:
        return None


async def mount(
    remote: Remote, path_in_bucket: str, mountpoint: Path, *, read_only: bool, gid: int, cache_dir: Path
) -> RcloneMount:
    raise MountFailed("not available yet")


async def check(remote: Remote, path_in_bucket: str, *, work_dir: Path) -> None:
    raise MountFailed("not available yet")


def unmount_stale(root: Path) -> int:
    return 0
