"""rclone FUSE mounts against real S3 (SeaweedFS), Azure (Azurite) and GCS (emulator) servers
on loopback: what a mount shows and writes is checked through the provider's own API."""

# ruff: noqa: F811  (the fixtures imported from _buckets are redefined as parameters)

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from _buckets import (  # noqa: F401  (fixtures)
    BucketRig,
    azure_rig,
    bucket_rig,
    gcs_rig,
    s3_rig,
    stopped_endpoint,
)

from sandboxd.buckets import MountFailed, RcloneMount, Remote, check, mount, unmount_stale
from sandboxd.buckets.rclone import FUSE_TYPE, _mountinfo, _rclone_mount_processes

GID = 23456  # the organization's group in these tests; another gid is another tenant


@pytest.fixture
def root() -> Iterator[Path]:
    """Where mounts and their private dirs go (0755 up to /tmp: an unprivileged uid can reach
    the mountpoints); checked free of mounts and rclone processes afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sandboxd-rclone-test-"))
    path.chmod(0o755)
    yield path
    leftovers = _leftovers(path)
    if leftovers:
        unmount_stale(path)
    else:
        shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, leftovers


def _leftovers(root: Path) -> list[str]:
    found = [f"mount {p}" for p, fstype in _mountinfo() if fstype == FUSE_TYPE and root in p.parents]
    found += [f"rclone pid {pid} at {p}" for pid, p in _rclone_mount_processes() if root in p.parents]
    return found


@contextlib.asynccontextmanager
async def mounted(remote: Remote, path: str, root: Path, *, read_only: bool = False,
                  name: str = "m") -> AsyncIterator[RcloneMount]:
    mountpoint = root / name
    mountpoint.mkdir()
    m = await mount(remote, path, mountpoint, read_only=read_only, gid=GID, cache_dir=root / f"{name}.private")
    try:
        yield m
    finally:
        await m.unmount()
    assert not (root / f"{name}.private").exists()


def as_user(gid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run argv as an unprivileged uid with only `gid`: how a sandbox's process meets the mount."""
    return subprocess.run(["setpriv", "--reuid", "61000", "--regid", str(gid), "--clear-groups", "--", *argv],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})


async def eventually(probe: Callable[[], bool], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if probe():
            return True
        await asyncio.sleep(0.1)
    return probe()


def _in_thread(fn: Callable[[], object]) -> object:
    return fn()


async def test_write_in_mount_reads_back_through_provider_api(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    bucket_rig.put(bucket, "team/a/existing.txt", b"from the api")
    async with mounted(bucket_rig.remote(bucket), "team/a", root) as m:
        point = m.mountpoint
        assert (await asyncio.to_thread((point / "existing.txt").read_bytes)) == b"from the api"

        def write() -> None:
            (point / "out").mkdir()
            with open(point / "out" / "result.csv", "w") as f:
                f.write("x,y\n")
                f.seek(0)  # a rewrite, which a streaming (cache-off) mount could not do
                f.write("a,b\n1,2\n")

        await asyncio.to_thread(write)
        # Uploaded after close, while the mount stays: `flush` waits for it.
        assert await m.flush(timeout_s=30) == 0
        assert "team/a/out/result.csv" in bucket_rig.keys(bucket, "team/a/")
        assert bucket_rig.get(bucket, "team/a/out/result.csv") == b"a,b\n1,2\n"
        # And the other way: an object put through the API shows in the mount within about a second.
        bucket_rig.put(bucket, "team/a/later.txt", b"later")
        assert await eventually(lambda: (point / "later.txt").exists(), 5)
    assert bucket_rig.keys(bucket, "team/") == ["team/a/existing.txt", "team/a/later.txt", "team/a/out/result.csv"]


async def test_flush_and_unmount_wait_for_pending_uploads(s3_rig: BucketRig, root: Path) -> None:
    bucket = s3_rig.new_bucket()
    payload = os.urandom(32 * 1024 * 1024)
    async with mounted(s3_rig.remote(bucket), "", root) as m:
        await asyncio.to_thread((m.mountpoint / "flushed.bin").write_bytes, payload)
        assert await m.flush() == 0
        assert s3_rig.get(bucket, "flushed.bin") == payload
        await asyncio.to_thread((m.mountpoint / "unmounted.bin").write_bytes, payload[::-1])
    assert s3_rig.get(bucket, "unmounted.bin") == payload[::-1]
    with pytest.raises(MountFailed, match="mount is gone"):
        await m.flush(timeout_s=1)


async def test_read_only_mount_refuses_writes(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    bucket_rig.put(bucket, "r/file.txt", b"data")
    async with mounted(bucket_rig.remote(bucket), "r", root, read_only=True) as m:
        assert (m.mountpoint / "file.txt").read_bytes() == b"data"
        for attempt in (lambda: (m.mountpoint / "new.txt").write_bytes(b"x"),
                        lambda: (m.mountpoint / "file.txt").write_bytes(b"x"),
                        lambda: (m.mountpoint / "d").mkdir(),
                        lambda: (m.mountpoint / "file.txt").unlink()):
            with pytest.raises(OSError):
                await asyncio.to_thread(attempt)
    assert bucket_rig.keys(bucket) == ["r/file.txt"]
    assert bucket_rig.get(bucket, "r/file.txt") == b"data"


async def test_only_the_organizations_gid_gets_in(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    bucket_rig.put(bucket, "f.txt", b"mine")
    async with mounted(bucket_rig.remote(bucket), "", root) as m:
        own = await asyncio.to_thread(as_user, GID, "cat", str(m.mountpoint / "f.txt"))
        assert own.returncode == 0 and own.stdout == "mine", own.stderr
        wrote = await asyncio.to_thread(as_user, GID, "sh", "-c", f"echo hi > {m.mountpoint}/w.txt")
        assert wrote.returncode == 0, wrote.stderr
        for argv in (["cat", str(m.mountpoint / "f.txt")], ["ls", str(m.mountpoint)],
                     ["sh", "-c", f"echo no > {m.mountpoint}/x.txt"]):
            other = await asyncio.to_thread(as_user, GID + 1, *argv)
            assert other.returncode != 0 and "Permission denied" in other.stderr, (argv, other)
        assert not await asyncio.to_thread((m.mountpoint / "x.txt").exists)


async def test_prefix_shows_exactly_its_subtree(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    inside = {"scope/in.txt": b"in", "scope/deep/er.txt": b"deeper",
              "scope/link.rclonelink": b"../outside.txt"}
    outside = {"outside.txt": b"OUTSIDE-1", "scopex/sibling.txt": b"OUTSIDE-2", "other/scope/in.txt": b"OUTSIDE-3"}
    # (An empty segment, `scope//x`, is kept by Azurite and makes rclone fail the listing with EIO:
    # the mount then fails closed; SeaweedFS normalises it. Not part of this test.)
    tricky = {"scope/../escape.txt": b"OUTSIDE-4", "scope/./dot.txt": b"dot", "scope/x/../../escape2.txt": b"OUTSIDE-5"}
    for key, data in {**inside, **outside}.items():
        bucket_rig.put(bucket, key, data)
    stored_tricky = []
    for key, data in tricky.items():
        with contextlib.suppress(Exception):  # a provider may refuse or normalise such names
            bucket_rig.put(bucket, key, data)
            stored_tricky.append(key)
    async with mounted(bucket_rig.remote(bucket), "scope", root) as m:

        def walk() -> dict[str, bytes]:
            seen = {}
            for dirpath, dirnames, filenames in os.walk(m.mountpoint):
                for name in dirnames + filenames:
                    path = Path(dirpath) / name
                    assert not path.is_symlink(), path
                    if path.is_file():
                        seen[str(path.relative_to(m.mountpoint))] = path.read_bytes()
            return seen

        seen = await asyncio.to_thread(walk)
        assert {"in.txt": b"in", "deep/er.txt": b"deeper", "link.rclonelink": b"../outside.txt"}.items() <= seen.items()
        assert not [name for name, data in seen.items() if data.startswith(b"OUTSIDE")], seen
        # `..` of the mount is the host directory it sits in, never the bucket's level above.
        assert sorted(os.listdir(m.mountpoint / "..")) == sorted(p.name for p in root.iterdir())
        # A symlink cannot be made in the mount (no --links): nothing to follow, ever.
        with pytest.raises(OSError):
            await asyncio.to_thread(os.symlink, "/etc/passwd", m.mountpoint / "ln")


async def test_bad_credentials_fail_with_words_and_no_secret(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    bad = bucket_rig.bad_remote(bucket)
    (root / "m").mkdir()
    with pytest.raises(MountFailed) as failed:
        await mount(bad, "", root / "m", read_only=False, gid=GID, cache_dir=root / "private")
    assert failed.value.reason == "credentials", failed.value.message
    assert "credentials were refused" in failed.value.message
    _assert_no_secret(failed.value.message, bad.secrets() + bucket_rig.secrets)
    assert not (root / "private").exists()


async def test_missing_bucket_fails_with_words(bucket_rig: BucketRig, root: Path) -> None:
    with pytest.raises(MountFailed) as failed:
        await check(bucket_rig.remote("no-such-bucket-here"), "a/b", work_dir=root / "work")
    assert failed.value.reason == "bucket", failed.value.message
    assert "does not exist" in failed.value.message and "no-such-bucket-here" in failed.value.message
    assert os.listdir(root / "work") == []


async def test_stopped_server_fails_as_unreachable(bucket_rig: BucketRig, root: Path, stopped_endpoint: str) -> None:
    good = bucket_rig.remote("some-bucket")
    remote = Remote(good.kind, good.bucket, good.credentials, endpoint=stopped_endpoint)
    started = time.monotonic()
    with pytest.raises(MountFailed) as failed:
        await check(remote, "", work_dir=root / "work", timeout_s=20)
    assert failed.value.reason in ("unreachable", "timeout"), failed.value.message
    assert "could not be reached" in failed.value.message or "did not answer" in failed.value.message
    _assert_no_secret(failed.value.message, remote.secrets())
    assert os.listdir(root / "work") == []
    print(f"\n{bucket_rig.kind}: unreachable reported in {time.monotonic() - started:.2f} s")


async def test_check_lists_and_leaves_nothing(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    bucket_rig.put(bucket, "p/x.txt", b"x")
    await check(bucket_rig.remote(bucket), "p", work_dir=root / "work")
    assert os.listdir(root / "work") == []


async def test_credentials_absent_from_rclone_process_and_mountinfo(bucket_rig: BucketRig, root: Path) -> None:
    bucket = bucket_rig.new_bucket()
    remote = bucket_rig.remote(bucket)
    secrets = remote.secrets()
    assert secrets
    async with mounted(remote, "", root) as m:
        cmdline = Path(f"/proc/{m.pid}/cmdline").read_bytes().decode(errors="replace")
        environ = Path(f"/proc/{m.pid}/environ").read_bytes().decode(errors="replace")
        assert "rclone" in cmdline and "mount" in cmdline
        _assert_no_secret(cmdline + environ, secrets)
        assert "AWS_" not in environ and "GOOGLE_" not in environ
        assert set(k.split("=", 1)[0] for k in environ.split("\0") if k) == {"PATH", "HOME", "TMPDIR"}
        line = next(ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if f" {m.mountpoint} " in ln)
        _assert_no_secret(line, secrets)
        assert bucket not in line  # `--devname sandboxd`: a sandbox's mountinfo names no bucket
        # Nothing written to disk holds them either: the private dir has only the VFS cache.
        for dirpath, _, files in os.walk(m.private_dir):
            for name in files:
                if (Path(dirpath) / name).is_file():  # not rc.sock
                    _assert_no_secret((Path(dirpath) / name).read_bytes().decode(errors="replace"), secrets)
        _assert_no_secret("\n".join(m.log_lines()), secrets)


async def test_unmount_stale_after_rclone_is_killed(s3_rig: BucketRig, root: Path) -> None:
    bucket = s3_rig.new_bucket()
    s3_rig.put(bucket, "f", b"1")
    cache_root = root / "private"
    cache_root.mkdir()
    (root / "m").mkdir()
    m = await mount(s3_rig.remote(bucket), "", root / "m", read_only=False, gid=GID, cache_dir=cache_root / "m")
    os.kill(m.pid, signal.SIGKILL)
    await m.proc.wait()
    with pytest.raises(OSError):  # the dead mount: ENOTCONN until detached
        os.listdir(root / "m")
    assert unmount_stale(root, cache_root=cache_root) == 1
    assert _leftovers(root) == []
    assert os.listdir(root / "m") == [] and os.listdir(cache_root) == []


async def test_unmount_stale_kills_a_live_orphan(s3_rig: BucketRig, root: Path) -> None:
    bucket = s3_rig.new_bucket()
    (root / "m").mkdir()
    m = await mount(s3_rig.remote(bucket), "", root / "m", read_only=False, gid=GID, cache_dir=root / "m.private")
    assert unmount_stale(root) == 1
    await asyncio.wait_for(m.proc.wait(), 10)
    assert _leftovers(root) == []
    await m.unmount()  # the server's own later unmount of it is harmless
    assert not (root / "m.private").exists()


async def test_mount_start_up_time(bucket_rig: BucketRig, root: Path) -> None:
    """Not a timed test: prints the median of 5 start-ups (probe + mount + first listing)."""
    bucket = bucket_rig.new_bucket()
    bucket_rig.put(bucket, "p/x.txt", b"x")
    times = []
    for i in range(5):
        started = time.monotonic()
        async with mounted(bucket_rig.remote(bucket), "p", root, name=f"m{i}"):
            times.append(time.monotonic() - started)
    print(f"\n{bucket_rig.kind}: mount start-up median {statistics.median(times) * 1000:.0f} ms "
          f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f})")
    assert statistics.median(times) < 5


def _assert_no_secret(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, "a credential value leaked"


async def test_a_sandbox_uses_a_bind_of_a_sub_directory(s3_rig: BucketRig, root: Path) -> None:
    """How the runtime will use a mount: bubblewrap, started as a sandbox host uid with the
    organization's gid, in its own user namespace, bind-mounts one sub-directory at /data/<slug>.
    It reads and writes there, sees no credentials in its mountinfo, and nothing of the
    bucket above the sub-directory; a sandbox with another gid cannot even reach the source."""
    bucket = s3_rig.new_bucket()
    s3_rig.put(bucket, "p/sub/f.txt", b"hello\n")
    s3_rig.put(bucket, "p/top.txt", b"TOP\n")
    remote = s3_rig.remote(bucket)
    async with mounted(remote, "p", root) as m:
        await asyncio.to_thread((m.mountpoint / "sub" / "made" / "here").mkdir, parents=True)  # a sub_path created
        script = ("cat /data/b/f.txt; echo written > /data/b/made/here/w.txt && echo WROTE; "
                  "ls /data/b/..; grep ' /data/b' /proc/self/mountinfo")

        def sandbox(gid: int) -> subprocess.CompletedProcess[str]:
            return as_user(gid, "bwrap", "--unshare-all", "--uid", "1000", "--gid", "1000",
                           "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
                           "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/data",
                           "--bind", str(m.mountpoint / "sub"), "/data/b", "--", "sh", "-c", script)

        own = await asyncio.to_thread(sandbox, GID)
        assert own.returncode == 0, own.stderr
        assert own.stdout.startswith("hello\nWROTE\nb\n"), own.stdout
        assert "fuse.rclone sandboxd " in own.stdout and bucket not in own.stdout
        _assert_no_secret(own.stdout, remote.secrets())
        other = await asyncio.to_thread(sandbox, GID + 1)
        assert other.returncode != 0 and "Permission denied" in other.stderr, other
        assert "hello" not in other.stdout
        assert await m.flush() == 0
    assert s3_rig.get(bucket, "p/sub/made/here/w.txt") == b"written\n"
