"""Platform failures (issue #12, item 2) without a sandbox: the messages name the layer and no
path, the counters, and /ready's not-ready spell that only a passing self-check ends."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from sandboxd import errors
from sandboxd.api.errors import STATUS, _HTTP_CODES, response_for
from sandboxd.observability import Metrics
from sandboxd.runtime.cgroups.base import write
from sandboxd.service import health
from sandboxd.service.health import (
    PlatformHealth,
    runtime_failure,
    setup_failure,
    thread_failure,
    data_mount_failure,
)


def _cgroup_write_error(tmp_path: Path) -> errors.SandboxSetupError:
    with pytest.raises(errors.SandboxSetupError) as caught:
        write(tmp_path / "no-such-group" / "cpu.cfs_quota_us", "100000", step="cgroup cpu quota")
    return caught.value


def test_a_setup_failure_names_its_layer_and_step_but_no_path(tmp_path: Path) -> None:
    exc = _cgroup_write_error(tmp_path)
    assert str(tmp_path) in exc.message  # the server log gets the path ...
    failure = setup_failure(exc)
    assert failure.code == "sandbox_error" and failure.layer == "cgroup" and failure.runtime
    assert failure.message == (
        "platform error in the cgroup layer (cgroup cpu quota: No such file or directory); "
        "the program did not run"
    )
    assert str(tmp_path) not in failure.message  # ... the client does not


@pytest.mark.parametrize(
    ("step", "layer"),
    [("uid pool", "uids"), ("network", "network"), ("home slot", "home_slot"),
     ("interpreter", "interpreter"), ("cgroup kill", "cgroup"), ("subvolume snapshot", "storage"),
     ("self-check", "sandbox")],
)
def test_each_step_maps_to_a_layer_of_a_fixed_set(step: str, layer: str) -> None:
    failure = setup_failure(errors.SandboxSetupError(step, "/some/host/path: detail"))
    assert failure.layer == layer and layer in health.LAYERS
    assert "/some/host/path" not in failure.message and step in failure.message


def test_runtime_volume_and_thread_failures() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/usr/bin/bwrap")
    runtime = runtime_failure(missing)
    assert (runtime.code, runtime.layer, runtime.runtime) == ("internal_error", "runtime", True)
    assert "FileNotFoundError: No such file or directory" in runtime.message
    assert "/usr/bin/bwrap" not in runtime.message
    volume = data_mount_failure("volume_mount_error", "volume 'v': No space left on device")
    assert (volume.code, volume.layer, volume.runtime) == ("volume_mount_error", "volume", False)
    assert volume.message.endswith("the program did not run")
    bucket = data_mount_failure("storage_mount_error", "storage connection 'b' could not be mounted")
    assert (bucket.code, bucket.layer, bucket.runtime) == ("storage_mount_error", "storage", False)
    saved = thread_failure(errors.SandboxSetupError("subvolume switch", "renameat2(/a, /b): EIO"), saving=True)
    assert saved.code == "thread_mount_error" and saved.layer == "thread_home"
    assert "subvolume switch" in saved.message and "were not kept" in saved.message
    assert "/a" not in saved.message


class Check:
    """A self-check that fails until `fixed` is set."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls = 0
        self.passed = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if not self.fixed:
            raise errors.SandboxSetupError("self-check", "probe sandbox failed")
        self.passed.set()


async def test_repeated_runtime_failures_turn_ready_off_until_a_self_check_passes() -> None:
    metrics, check = Metrics(), Check()
    h = PlatformHealth(metrics, check, threshold=2, window_s=60, recheck_s=0.01)
    failure = setup_failure(errors.SandboxSetupError("cgroup v1", "cannot create x"))
    h.failed(failure)
    assert h.unready_reason is None
    h.ran()  # a sandbox ran in between: the streak is broken
    h.failed(failure)
    assert h.unready_reason is None
    h.failed(failure)
    assert h.unready_reason is not None and "2 platform errors in a row" in h.unready_reason
    assert failure.message in h.unready_reason
    assert metrics.platform_unready._value.get() == 1
    while check.calls < 3:  # failing self-checks keep it not ready
        await asyncio.sleep(0.01)
    h.ran()  # a run that happens to work (e.g. elsewhere in the pool) is not a self-check
    assert h.unready_reason is not None
    check.fixed = True
    await asyncio.wait_for(check.passed.wait(), 10)
    await asyncio.sleep(0)
    assert h.unready_reason is None
    assert metrics.platform_unready._value.get() == 0
    assert metrics.platform_errors.labels("cgroup")._value.get() == 3
    await h.close()


async def test_failures_outside_the_window_or_of_storage_do_not_count(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(health.time, "monotonic", lambda: now[0])
    metrics = Metrics()
    h = PlatformHealth(metrics, Check(), threshold=2, window_s=60, recheck_s=60)
    h.failed(runtime_failure(RuntimeError("x")))
    now[0] += 61
    h.failed(runtime_failure(RuntimeError("x")))
    assert h.unready_reason is None, "the first one is out of the window"
    h.failed(thread_failure(OSError(5, "EIO"), saving=False))
    h.failed(data_mount_failure("volume_mount_error", "volume 'v': EIO"))
    assert h.unready_reason is None, "storage failures are counted, not a runtime fault"
    assert metrics.platform_errors.labels("thread_home")._value.get() == 1
    assert metrics.platform_errors.labels("runtime")._value.get() == 2
    h.failed(runtime_failure(RuntimeError("x")))
    assert h.unready_reason is not None
    await h.close()


def test_unavailable_is_logged_as_a_warning_and_a_setup_failure_as_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sandboxd.api")
    assert response_for(errors.Unavailable("the server is shutting down; retry shortly")).status_code == 503
    assert response_for(errors.SandboxSetupError("thread storage mount", "mount failed")).status_code == 500
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "sandboxd.api"]
    assert levels == [
        (logging.WARNING, "request refused: the server is shutting down; retry shortly"),
        (logging.ERROR, "request failed: sandbox setup failed at thread storage mount: mount failed"),
    ]


def test_the_readme_lists_every_error_code_and_status() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    paragraph = readme[readme.index("- Every API error is"):]
    paragraph = paragraph[: paragraph.index("\n- ")]
    listed = set(re.findall(r"`(\d{3}) ([a-z_]+)`", paragraph))
    codes = {(str(STATUS[cls]), cls.code) for cls in STATUS}
    # the codes Starlette's own errors are answered with (api/errors.py), that a route can meet
    codes |= {(str(s), _HTTP_CODES[s]) for s in (400, 401, 404, 405, 413, 429)}
    codes.add(("500", "internal_error"))
    assert codes <= listed, sorted(codes - listed)
