"""`sandboxd doctor`: check that this host can run sandboxd, and say what to fix.

Each check gives OK, WARN (sandboxd runs, with less) or FAIL (`sandboxd serve` would refuse
to start, or a part would not work), and a fix for anything not OK. The last check runs a
real sandbox, as the server does before it serves; it takes a lease of its own
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .config import Settings
from .errors import SandboxSetupError
from .runtime import INTERPRETERS, available_languages, check_sandbox
from .runtime.cgroups import detect as detect_cgroups
from .runtime.lease import live_leases
from .runtime.seccomp import compile_bpf
from .storage import available as btrfs_available

Status = Literal["OK", "WARN", "FAIL", "SKIP"]

_GIB = 1024**3
_MIN_FREE_BYTES = 1 * _GIB
_INSTALL = {
    "bubblewrap": "install bubblewrap: apt-get install bubblewrap (Debian/Ubuntu) or dnf install bubblewrap (Fedora/RHEL)",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _ok(name: str, detail: str) -> Check:
    return Check(name, "OK", detail)


def check_privileges() -> Check:
    if os.geteuid() == 0:
        return _ok("privileges", "running as root")
    return Check(
        "privileges", "FAIL", f"running as uid {os.geteuid()}",
        "run as root (sudo sandboxd doctor; the systemd unit in deploy/ runs as root): sandboxd "
        "creates cgroups, mounts thread storage and starts each sandbox as its own unprivileged uid",
    )


def check_bubblewrap() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check("bubblewrap", "FAIL", "bwrap (bubblewrap) not found on PATH", _INSTALL["bubblewrap"])
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("bubblewrap", "FAIL", f"{bwrap} does not run: {exc}", _INSTALL["bubblewrap"])
    if os.stat(bwrap).st_mode & 0o4000:
        return Check(
            "bubblewrap", "WARN", f"{bwrap} is setuid root ({version.stdout.strip()})",
            "sandboxd needs no setuid bwrap (it uses user namespaces), and NoNewPrivileges=yes in the "
            "systemd unit stops a setuid bwrap: chmod u-s it or install a distribution build without it",
        )
    return _ok("bubblewrap", f"{bwrap} ({version.stdout.strip()})")


def _sysctl(name: str) -> str | None:
    path = Path("/proc/sys") / name.replace(".", "/")
    try:
        return path.read_text().strip()
    except OSError:
        return None


def check_user_namespaces() -> Check:
    if _sysctl("user.max_user_namespaces") == "0":
        return Check(
            "user namespaces", "FAIL", "disabled (user.max_user_namespaces = 0)",
            "sysctl -w user.max_user_namespaces=15000 (and set it in /etc/sysctl.d/ to keep it)",
        )
    if _sysctl("kernel.unprivileged_userns_clone") == "0":
        return Check(
            "user namespaces", "FAIL", "unprivileged user namespaces are off (kernel.unprivileged_userns_clone = 0)",
            "sysctl -w kernel.unprivileged_userns_clone=1 (and in /etc/sysctl.d/): bubblewrap runs as "
            "an unprivileged uid and creates the sandbox's user namespace",
        )
    if _sysctl("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return Check(
            "user namespaces", "WARN", "AppArmor restricts unprivileged user namespaces",
            "if the sandbox check below fails: sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, "
            "or give bwrap an AppArmor profile that allows userns",
        )
    return _ok("user namespaces", f"enabled (max {_sysctl('user.max_user_namespaces') or 'unknown'})")


def check_cgroups() -> Check:
    try:
        driver = detect_cgroups("doctor")
    except SandboxSetupError as exc:
        return Check(
            "cgroups", "FAIL", exc.message,
            "mount cgroup v2 at /sys/fs/cgroup with memory, cpu and pids enabled (or cgroup v1 with "
            "memory, pids, cpu, cpuacct, freezer); under systemd use the unit in deploy/ (Delegate=yes)",
        )
    return _ok("cgroups", f"cgroup v{driver.version}, with the controllers sandboxd uses")


def check_seccomp() -> Check:
    status = Path("/proc/self/status").read_text()
    if "Seccomp:" not in status:
        return Check("seccomp", "FAIL", "the kernel has no seccomp", "use a kernel built with CONFIG_SECCOMP_FILTER")
    try:
        size = len(compile_bpf())
    except Exception as exc:  # libseccomp missing or too old shows up as any error here
        return Check("seccomp", "FAIL", f"cannot compile the filter: {exc}", "apt-get install libseccomp2")
    return _ok("seccomp", f"filter compiles ({size // 8} BPF instructions)")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_data_dir(settings: Settings) -> Check:
    target = settings.data_dir
    nearest = _existing(target)
    if not os.access(nearest, os.W_OK | os.X_OK):
        return Check("data dir", "FAIL", f"{nearest} is not writable", f"create {target} as root, or set --data-dir")
    return _ok("data dir", f"{target}" + ("" if target.exists() else " (created on first start)"))


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
    return _ok("disk space", f"{free} for {settings.data_dir}")


def check_btrfs() -> Check:
    if btrfs_available():
        return _ok("btrfs-progs", "threads and volumes available")
    return Check(
        "btrfs-progs", "WARN", "not installed: threads and volumes are refused (503)",
        "apt-get install btrfs-progs",
    )


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
    return _ok("languages", ", ".join(INTERPRETERS))


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
            return _ok(name, f"{host}:{port}: a sandboxd server is running there ({server})")
        return Check(
            name, "FAIL", f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            f"stop what uses it (ss -ltnp 'sport = :{port}') or choose another with {setting}",
        )
    return _ok(name, f"{host}:{port} is free")


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
    return _ok("sandbox", "a real sandbox ran: uid 1000 inside, no capabilities, no_new_privs, seccomp, read-only /usr")


#: The checks the sandbox probe needs to pass first.
_PREREQUISITES = ("privileges", "bubblewrap", "user namespaces", "cgroups", "seccomp")


async def run_checks(settings: Settings) -> list[Check]:
    static: list[Callable[[], Check]] = [
        check_privileges, check_bubblewrap, check_user_namespaces, check_cgroups, check_seccomp,
        lambda: check_data_dir(settings), lambda: check_disk_space(settings), check_btrfs, check_languages,
    ]
    checks = [check() for check in static] + check_ports(settings)
    blocked = [c.name for c in checks if c.name in _PREREQUISITES and c.status == "FAIL"]
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
