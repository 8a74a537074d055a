"""`sandboxd doctor` on this machine: everything passes; with bubblewrap hidden it fails, naming it
and how to install it."""

from __future__ import annotations

from pathlib import Path

from conftest import free_port, run_cli


def test_doctor_passes_on_this_host(tmp_path: Path) -> None:
    result = run_cli("doctor", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "all checks passed"
    names = [line.split()[1] for line in lines[:-1] if line[:4] in ("OK  ", "WARN", "FAIL", "SKIP")]
    for name in ("privileges", "bubblewrap", "cgroups", "seccomp", "rclone", "port", "sandbox"):
        assert name in names, result.stdout
    assert any(line.startswith("OK    sandbox") for line in lines), result.stdout
    assert not any(line.startswith("FAIL") for line in lines)


def test_doctor_fails_without_bubblewrap(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    result = run_cli(
        "doctor", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()),
        env={"PATH": str(empty)}, timeout=120,
    )
    assert result.returncode == 1, result.stdout
    lines = result.stdout.splitlines()
    failing = [i for i, line in enumerate(lines) if line.startswith("FAIL")]
    assert [lines[i].split()[1] for i in failing] == ["bubblewrap"], result.stdout
    assert "bwrap (bubblewrap) not found on PATH" in lines[failing[0]]
    assert "fix: install bubblewrap: apt-get install bubblewrap" in lines[failing[0] + 1]
    assert any(line.startswith("SKIP  sandbox") for line in lines)  # no sandbox tried without it
    assert lines[-1] == "1 check(s) failed: bubblewrap"


def test_doctor_fails_on_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("doctor", "--data-dir", str(tmp_path / "data"), "--port", str(port), timeout=120)
    assert result.returncode == 1
    port_line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["port"])
    assert port_line.startswith("FAIL") and f"127.0.0.1:{port}" in port_line
