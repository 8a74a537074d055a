"""deploy/sandboxd.service: systemd accepts it, and it keeps what the drain and bubblewrap need."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandboxd.config import Settings

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "sandboxd.service"

#: Directives that would give the service its own mount namespace, take its devices or cgroup
#: writes, or add seccomp filters every sandbox would inherit (docs/operations.md says why).
FORBIDDEN = {
    "ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths",
    "TemporaryFileSystem", "BindPaths", "PrivateDevices", "ProtectControlGroups", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectProc", "ProtectHostname", "ProtectClock",
    "RestrictNamespaces", "PrivateUsers", "PrivateNetwork", "SystemCallFilter", "SystemCallArchitectures",
    "MemoryDenyWriteExecute", "LockPersonality", "RestrictRealtime", "RestrictSUIDSGID",
    "RestrictAddressFamilies", "DynamicUser",
}


def parse(text: str) -> dict[str, dict[str, str]]:
    """Sections of a unit file; a directive given twice would be a mistake here, so it fails."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        name, sep, value = line.partition("=")
        assert sep, f"not a directive: {line}"
        assert name not in current, f"{name} given twice"
        current[name] = value
    return sections


def test_unit_keeps_what_the_drain_and_bubblewrap_need() -> None:
    unit = parse(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["ExecStart"].endswith("/sandboxd serve")
    assert service["User"] == "root"
    assert service["KillMode"] == "mixed"  # SIGTERM to the server only: sandboxes finish in the grace
    assert service["Delegate"] == "yes"
    assert service["NoNewPrivileges"] == "yes"
    assert service["TasksMax"] == "infinity"
    assert int(service["TimeoutStopSec"].removesuffix("s")) > 2 * Settings.model_fields["shutdown_grace_s"].default + 30
    caps = set(service["CapabilityBoundingSet"].split())
    assert {"CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_FSETID", "CAP_KILL"} <= caps
    assert not FORBIDDEN & set(service), FORBIDDEN & set(service)
    assert unit["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """With ExecStart pointed at this checkout's sandboxd (verify checks that it exists)."""
    sandboxd = Path(sys.executable).parent / "sandboxd"
    assert sandboxd.exists()
    copy = tmp_path / "sandboxd.service"
    copy.write_text(UNIT.read_text().replace("/opt/sandboxd/.venv/bin/sandboxd", str(sandboxd)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "sandboxd.service" not in result.stderr, result.stderr  # no warning about the unit
