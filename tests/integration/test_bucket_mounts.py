"""The server's mount manager (buckets/mounts.py) against a real S3 server: reuse, idle
release, where the cache lives, and the failure paths a security review found.
"""

# ruff: noqa: F811  (the fixtures imported from _buckets are redefined as parameters)

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from _buckets import BucketRig, s3_rig  # noqa: F401  (fixture)

from sandboxd.buckets import Remote, rclone, unmount_stale
from sandboxd.buckets.mounts import BucketMounts, Lease, MountKey
from sandboxd.buckets.rclone import FUSE_TYPE, _mountinfo

GID = 23457


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path]]:
    base = Path(tempfile.mkdtemp(prefix="sandboxd-mounts-test-"))
    run, cache = base / "run" / "buckets", base / "cache"
    yield run, cache
    left = [p for p, fstype in _mountinfo() if fstype == FUSE_TYPE and base in p.parents]
    unmount_stale(run, cache_root=cache)
    shutil.rmtree(base, ignore_errors=True)
    assert not left, left


def _remote(rig: BucketRig, bucket: str) -> Remote:
    return rig.remote(bucket)


async def test_one_mount_per_key_cache_on_disk_then_released_when_idle(
    s3_rig: BucketRig, dirs: tuple[Path, Path]
) -> None:
    run, cache = dirs
    bucket = s3_rig.new_bucket()
    mounts = BucketMounts(run, cache, idle_s=0.5)
    mounts.recover()
    key = MountKey("stc_1", "", False, GID)

    async def remote() -> Remote:
        return _remote(s3_rig, bucket)

    first = await mounts.acquire(key, remote, writable=True)
    second = await mounts.acquire(key, remote, writable=True)
    try:
        assert first.path == second.path and mounts.mounted == 1  # shared
        await asyncio.to_thread((first.path / "f.txt").write_bytes, b"x" * 1000)
        token = first.path.parent.name
        assert (cache / token).is_dir()  # rclone's cache of written files: on disk, not in run/
        assert sorted(p.name for p in first.path.parent.iterdir()) == ["mnt", "private"]
        await first.settle()
        assert s3_rig.get(bucket, "f.txt") == b"x" * 1000  # settled: in the bucket
    finally:
        first.release()
        second.release()
    deadline = asyncio.get_running_loop().time() + 15
    while (run / token).exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    assert mounts.mounted == 0
    assert not (run / token).exists() and not (cache / token).exists()
    await mounts.close()


async def test_a_failed_unmount_never_deletes_the_buckets_files(
    s3_rig: BucketRig, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If unmounting fails (fusermount could not start: fds or processes exhausted), the
    mount's directory is left as it is: a recursive delete would walk into the live mount."""
    run, cache = dirs
    bucket = s3_rig.new_bucket()
    for name in ("keep/a.txt", "b.txt"):
        s3_rig.put(bucket, name, b"precious")
    mounts = BucketMounts(run, cache, idle_s=600)
    mounts.recover()

    async def remote() -> Remote:
        return _remote(s3_rig, bucket)

    lease = await mounts.acquire(MountKey("stc_2", "", False, GID), remote, writable=True)
    mountpoint, live = lease.path, lease._mount
    lease.release()
    real_unmount = rclone.RcloneMount.unmount

    async def failing(self: rclone.RcloneMount, **_: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(rclone.RcloneMount, "unmount", failing)
    await mounts.close()
    assert s3_rig.keys(bucket) == ["b.txt", "keep/a.txt"]  # nothing deleted through the mount
    assert mountpoint.is_dir() and any(p == mountpoint for p, _ in _mountinfo())
    monkeypatch.setattr(rclone.RcloneMount, "unmount", real_unmount)
    await live.unmount()  # what an operator's retry does
    assert not any(p == mountpoint for p, _ in _mountinfo())
    assert s3_rig.keys(bucket) == ["b.txt", "keep/a.txt"]


async def test_a_read_only_lease_settles_at_once_whatever_the_mount_uploads() -> None:
    class Stuck:
        async def flush(self, **_: object) -> int:
            raise AssertionError("a read-only lease must not wait for uploads")

    released: list[bool] = []
    lease = Lease(Path("/nonexistent"), Stuck(), None, lambda: released.append(True))  # type: ignore[arg-type]
    await asyncio.wait_for(lease.settle(), 1)
    lease.release()
    lease.release()
    assert released == [True]  # once
