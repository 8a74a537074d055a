"""The host checks (runtime/selfcheck.py) that start-up refuses on and `sandboxd doctor` prints:
one list, and each failure keeps start-up's own wording."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxd import doctor
from sandboxd.config import Settings
from sandboxd.errors import SandboxSetupError
from sandboxd.runtime import selfcheck


def test_start_up_refuses_on_the_first_failing_check_in_its_own_words(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck.shutil, "which", lambda _: None)
    check = selfcheck.check_bubblewrap()
    assert (check.status, check.detail) == ("FAIL", "bwrap (bubblewrap) not found on PATH")
    assert check.fix.startswith("install bubblewrap: apt-get install bubblewrap")
    with pytest.raises(SandboxSetupError, match="at bubblewrap: bwrap not found on PATH"):
        selfcheck.check_prerequisites()


def test_start_up_must_be_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(selfcheck.os, "geteuid", lambda: 1000)
    assert selfcheck.check_privileges().detail == "running as uid 1000"
    with pytest.raises(SandboxSetupError, match="sandboxd must start as root"):
        selfcheck.check_prerequisites()


def test_a_failure_without_words_of_its_own_refuses_with_its_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    failing = selfcheck.Check("seccomp", "FAIL", "cannot compile the filter: boom", "apt-get install libseccomp2")
    monkeypatch.setattr(selfcheck, "PREREQUISITES", (lambda: selfcheck.Check.ok("privileges", "root"), lambda: failing))
    with pytest.raises(SandboxSetupError) as refused:
        selfcheck.check_prerequisites()
    assert refused.value.message == "sandbox setup failed at seccomp: cannot compile the filter: boom"


async def test_the_doctor_prints_the_start_up_checks_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def failing(name: str) -> Callable[[], selfcheck.Check]:
        return lambda: selfcheck.Check(name, "FAIL", "no")

    monkeypatch.setattr(doctor, "PREREQUISITES", (failing("one"), failing("two")))
    monkeypatch.setattr(doctor, "check_ports", lambda _: [])
    checks = await doctor.run_checks(Settings(data_dir=tmp_path))
    assert [c.name for c in checks[:2]] == ["one", "two"]
    assert (checks[-1].name, checks[-1].status, checks[-1].detail) == ("sandbox", "SKIP", "not tried: one, two failed")
