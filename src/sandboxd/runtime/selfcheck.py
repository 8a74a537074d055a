"""Refuse to serve unless a real sandbox works here. There is no unsandboxed fallback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import SandboxSetupError
from .interface import Runner
from .spec import ExecStatus, Limits, SandboxSpec


def check_prerequisites() -> str:
    """Static checks before any sandbox starts; returns the bwrap path."""
    if os.geteuid() != 0:
        raise SandboxSetupError(
            "privileges",
            "sandboxd must start as root: it creates cgroups and drops each sandbox to its own "
            "unprivileged uid (sandboxes never run as root)",
        )
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxSetupError("bubblewrap", "bwrap not found on PATH (apt-get install bubblewrap)")
    max_userns = Path("/proc/sys/user/max_user_namespaces")
    if max_userns.exists() and max_userns.read_text().strip() == "0":
        raise SandboxSetupError("user namespaces", "disabled (user.max_user_namespaces = 0)")
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
