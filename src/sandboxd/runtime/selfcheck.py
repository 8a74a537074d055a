"""Refuse to serve unless a real sandbox works here. There is no unsandboxed fallback.

The host's prerequisites are checks that say what they found and how to fix it: start-up
(`check_prerequisites`) refuses on the first that fails, `sandboxd doctor` prints them all.
Then `check_sandbox` starts a real sandbox, at start-up and in the doctor alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import SandboxSetupError
from .cgroups import detect as detect_cgroups
from .interface import Runner
from .seccomp import compile_bpf
from .spec import ExecStatus, Limits, SandboxSpec

Status = Literal["OK", "WARN", "FAIL", "SKIP"]

_NO_BWRAP = "bwrap not found on PATH (apt-get install bubblewrap)"
_INSTALL_BWRAP = (
    "install bubblewrap: apt-get install bubblewrap (Debian/Ubuntu) or dnf install bubblewrap (Fedora/RHEL)"
)


@dataclass(frozen=True)
class Check:
    """OK, WARN (sandboxd runs, with less), FAIL (it would refuse, or a part would not work) or
    SKIP, what was found, and a fix for anything not OK."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    #: What start-up refuses with when this check fails (default: the name and the detail).
    refusal: SandboxSetupError | None = None

    @classmethod
    def ok(cls, name: str, detail: str) -> Check:
        return cls(name, "OK", detail)


def check_privileges() -> Check:
    if os.geteuid() == 0:
        return Check.ok("privileges", "running as root")
    return Check(
        "privileges", "FAIL", f"running as uid {os.geteuid()}",
        "run as root (sudo sandboxd doctor; the systemd unit in deploy/ runs as root): sandboxd "
        "creates cgroups, mounts thread storage and starts each sandbox as its own unprivileged uid",
        refusal=SandboxSetupError(
            "privileges",
            "sandboxd must start as root: it creates cgroups and drops each sandbox to its own "
            "unprivileged uid (sandboxes never run as root)",
        ),
    )


def check_bubblewrap() -> Check:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check(
            "bubblewrap", "FAIL", "bwrap (bubblewrap) not found on PATH", _INSTALL_BWRAP,
            refusal=SandboxSetupError("bubblewrap", _NO_BWRAP),
        )
    try:
        version = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("bubblewrap", "FAIL", f"{bwrap} does not run: {exc}", _INSTALL_BWRAP)
    if os.stat(bwrap).st_mode & 0o4000:
        return Check(
            "bubblewrap", "WARN", f"{bwrap} is setuid root ({version.stdout.strip()})",
            "sandboxd needs no setuid bwrap (it uses user namespaces), and NoNewPrivileges=yes in the "
            "systemd unit stops a setuid bwrap: chmod u-s it or install a distribution build without it",
        )
    return Check.ok("bubblewrap", f"{bwrap} ({version.stdout.strip()})")


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
    return Check.ok("user namespaces", f"enabled (max {_sysctl('user.max_user_namespaces') or 'unknown'})")


def check_cgroups() -> Check:
    try:
        driver = detect_cgroups("doctor")
    except SandboxSetupError as exc:
        return Check(
            "cgroups", "FAIL", exc.message,
            "mount cgroup v2 at /sys/fs/cgroup with memory, cpu and pids enabled (or cgroup v1 with "
            "memory, pids, cpu, cpuacct, freezer); under systemd use the unit in deploy/ (Delegate=yes)",
            refusal=exc,
        )
    return Check.ok("cgroups", f"cgroup v{driver.version}, with the controllers sandboxd uses")


def check_seccomp() -> Check:
    status = Path("/proc/self/status").read_text()
    if "Seccomp:" not in status:
        return Check("seccomp", "FAIL", "the kernel has no seccomp", "use a kernel built with CONFIG_SECCOMP_FILTER")
    try:
        size = len(compile_bpf())
    except Exception as exc:  # libseccomp missing or too old shows up as any error here
        return Check("seccomp", "FAIL", f"cannot compile the filter: {exc}", "apt-get install libseccomp2")
    return Check.ok("seccomp", f"filter compiles ({size // 8} BPF instructions)")


#: What a sandbox needs of the host, in the order they are checked; the probe sandbox runs after.
PREREQUISITES: tuple[Callable[[], Check], ...] = (
    check_privileges, check_bubblewrap, check_user_namespaces, check_cgroups, check_seccomp,
)


def check_prerequisites() -> str:
    """Refuse (SandboxSetupError) on the first prerequisite that fails; returns the bwrap path."""
    for check in PREREQUISITES:
        result = check()
        if result.status == "FAIL":
            raise result.refusal or SandboxSetupError(result.name, result.detail)
    bwrap = shutil.which("bwrap")
    if bwrap is None:  # removed since its check a moment ago
        raise SandboxSetupError("bubblewrap", _NO_BWRAP)
    return bwrap


async def check_sandbox(runner: Runner) -> None:
    """Start a real sandbox and check what the code inside sees. Give it the cold runner: the
    check is of the host as it is now, not of a sandbox pre-spawned earlier."""
    probe = (
        b"set -e\n"
        b'test "$(id -u)" = 1000\n'
        b"grep -q '^CapEff:\\s*0000000000000000' /proc/self/status\n"
        b"grep -q '^NoNewPrivs:\\s*1' /proc/self/status\n"
        b"grep -q '^Seccomp:\\s*2' /proc/self/status\n"
        b"! touch /usr/probe 2>/dev/null\n"
        b"echo sandbox-ok\n"
    )
    spec = SandboxSpec(language="bash", code=probe, limits=Limits(timeout_s=20, memory_mib=256))
    result = await runner.run(spec)
    if result.status is not ExecStatus.SUCCESS or result.stdout.strip() != b"sandbox-ok":
        raise SandboxSetupError(
            "self-check",
            f"probe sandbox failed (status {result.status.value}, exit {result.exit_code}): "
            + result.stderr.decode(errors="replace")[-500:],
        )
