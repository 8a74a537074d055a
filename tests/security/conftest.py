"""Security suite fixtures: one real `BwrapRunner` for the session, and helpers to run code in it.

Every test here runs untrusted-looking code in a *real* sandbox (bubblewrap, seccomp, cgroup v1,
rlimits, an unprivileged host uid) and then looks at the host from the outside (hostprobe.py):
which processes run under the sandbox uids, which cgroup directories exist, which fds the test
process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import pytest

from _debian import DEBIAN_TAG, debian_layout

from sandboxd.images import oci
from sandboxd.images.inroot import ensure_mount_points, find_command
from sandboxd.images.unpack import UnpackLimits, Usage, apply_layer
from sandboxd.runtime import (
    INTERPRETERS,
    BwrapRunner,
    ExecResult,
    Limits,
    PooledRunner,
    PoolSettings,
    RootImage,
    SandboxSpec,
    create_runner,
)
from sandboxd.runtime.bwrap import IMAGE_MOUNT_DIRS, IMAGE_MOUNT_FILES
from sandboxd.runtime.pool import key_of

from .hostprobe import SLOTS, TEST_TIMEOUT_S, UID_BASE, Host, instance_hash, remove_instance_parents

SECRET = "sandboxd-sec-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def secret() -> str:
    """A value that exists only on the host; finding it in a sandbox's output is a breach."""
    return SECRET


@pytest.fixture(scope="session")
def data_dir(secret: str) -> Iterator[Path]:
    """Stands in for the server's data dir (it is also the runner's instance_key).

    World-readable on purpose: a non-root host uid could read it, so if a sandbox cannot, the
    mount namespace hid it, not file permissions.
    """
    d = Path(tempfile.mkdtemp(prefix="sandboxd-sec-data-"))
    d.chmod(0o755)
    for name in ("secret.key", "sandboxd.db"):
        (d / name).write_text(secret + "\n")
        (d / name).chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def runner(data_dir: Path) -> Iterator[BwrapRunner]:
    # /data/outputs as a server has it (runtime/outputs.py): every attack also runs beside it.
    outputs = Path("/run/sandboxd") / f"sec-{instance_hash(str(data_dir))}" / "outputs"
    r = create_runner(instance_key=str(data_dir), uid_base=UID_BASE, slots=SLOTS, outputs_dir=outputs)
    yield r
    if r.sandboxes.outputs is not None:
        r.sandboxes.outputs.close()
        with contextlib.suppress(OSError):
            outputs.parent.rmdir()
    remove_instance_parents(instance_hash(str(data_dir)))


#: The escape suite's image: each of its languages, from Debian's packages.
ESCAPE_IMAGE_PACKAGES = ("python3", "nodejs", "bash")


@pytest.fixture(scope="session")
def escape_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RootImage]:
    """A Debian image unpacked as the image store does (layer by layer, in-root, mount points
    made), built once per session: the escape suite runs on it as well as on `host`."""
    layout = debian_layout(ESCAPE_IMAGE_PACKAGES, tmp_path_factory)
    work = Path(tempfile.mkdtemp(prefix="sandboxd-sec-image-"))
    work.chmod(0o711)  # bubblewrap runs as the sandbox's host uid: it must reach the root
    root = work / "root"
    image = oci.read_image(layout, DEBIAN_TAG)
    root.mkdir()
    root.chmod(0o755)  # whatever the umask (the integration tests' open_admin sets 077)
    usage = Usage()
    for layer, diff_id in zip(image.layers, image.diff_ids):
        with open(oci.blob_path(layout, layer.digest), "rb") as blob:
            apply_layer(blob, root, media_type=layer.media_type, digest=layer.digest, diff_id=diff_id,
                        limits=UnpackLimits(8 << 30, 1_000_000), usage=usage)
    ensure_mount_points(root, IMAGE_MOUNT_DIRS, IMAGE_MOUNT_FILES)
    binaries = {lang: find_command(root, image.path, i.command) for lang, i in INTERPRETERS.items()}
    assert all(binaries.values()), binaries
    yield RootImage("escape", image.manifest_digest, str(root),
                    tuple((lang, path) for lang, path in binaries.items() if path), tuple(image.env.items()))
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
async def host(runner: BwrapRunner, data_dir: Path) -> Host:
    h = Host(runner, instance_hash(str(data_dir)))
    # Warm up: the first run sets up asyncio's child watcher; fd baselines start after it.
    warm = await runner.run(
        SandboxSpec(language="bash", code=b"true", limits=Limits(timeout_s=TEST_TIMEOUT_S))
    )
    assert warm.exit_code == 0, warm
    await h.assert_no_processes()
    return h


class Run(Protocol):
    def __call__(
        self,
        code: str | bytes,
        language: str = "python",
        *,
        env: dict[str, str] | None = None,
        cancel: asyncio.Event | None = None,
        sink: Callable[[str, bytes], Awaitable[None]] | None = None,
        artifacts_dir: str | None = None,
        **limit_overrides: Any,
    ) -> Awaitable[ExecResult]: ...


def make_spec(
    code: str | bytes, language: str, env: dict[str, str] | None, image: RootImage | None = None,
    **limit_overrides: Any,
) -> SandboxSpec:
    if isinstance(code, str):
        code = textwrap.dedent(code).encode()
    limits = Limits(**{"timeout_s": TEST_TIMEOUT_S, **limit_overrides})
    spec = SandboxSpec(language=language, code=code, limits=limits, env=dict(env or {}))  # type: ignore[arg-type]
    return spec if image is None else replace(spec, image=image)


# `test_escape.py` parametrizes `run` itself: cold, pooled and "image" (cold, on `escape_image`).
@pytest.fixture(scope="session", params=["cold", "pooled"])
def run(request: pytest.FixtureRequest, runner: BwrapRunner, host: Host) -> Run:
    """`await run(code, language='python', **limit_overrides)` -> ExecResult, in a real sandbox.

    Every attack runs twice: in a sandbox started for it (cold), and in a pre-spawned one
    whose stub receives the code at use time (pooled: the fast path, `runtime/pool.py`). The
    escape suite runs a third time on an imported image ("image", `escape_image`).
    """
    pooled = PooledRunner(runner, PoolSettings()) if request.param == "pooled" else None
    image = request.getfixturevalue("escape_image") if request.param == "image" else None

    async def _run(
        code: str | bytes,
        language: str = "python",
        *,
        env: dict[str, str] | None = None,
        cancel: asyncio.Event | None = None,
        sink: Callable[[str, bytes], Awaitable[None]] | None = None,
        artifacts_dir: str | None = None,
        **limit_overrides: Any,
    ) -> ExecResult:
        spec = replace(make_spec(code, language, env, image, **limit_overrides), artifacts_dir=artifacts_dir)
        if pooled is not None and key_of(spec) is not None:
            entry = await pooled.pool.spawn_ready(spec)
            return await pooled.serve(entry, spec, sink=sink, cancel=cancel)
        return await runner.run(spec, sink=sink, cancel=cancel)

    return _run  # type: ignore[return-value]


@dataclass
class Background:
    """A sandbox that printed its ready marker and is still running."""

    task: asyncio.Task[ExecResult]
    cancel: asyncio.Event
    stdout: bytearray = field(default_factory=bytearray)
    result: ExecResult | None = None

    async def finish(self, *, cancel: bool = True) -> ExecResult:
        if cancel:
            self.cancel.set()
        self.result = await asyncio.wait_for(self.task, TEST_TIMEOUT_S + 15)
        return self.result


BackgroundFactory = Callable[..., contextlib.AbstractAsyncContextManager[Background]]


@pytest.fixture(scope="session")
def background(run: Run) -> BackgroundFactory:
    """`async with background(code, ...) as bg:` runs code until it prints `ready` on stdout.

    On exit the execution is cancelled (if still running) and its result is in `bg.result`.
    """

    @contextlib.asynccontextmanager
    async def _background(
        code: str | bytes, language: str = "python", *, ready: bytes = b"ready", **kwargs: Any
    ) -> AsyncIterator[Background]:
        cancel = asyncio.Event()
        seen = asyncio.Event()
        bg: Background

        async def sink(stream: str, chunk: bytes) -> None:
            if stream == "stdout":
                bg.stdout.extend(chunk)
                if ready in bg.stdout:
                    seen.set()

        task = asyncio.ensure_future(run(code, language, cancel=cancel, sink=sink, **kwargs))
        bg = Background(task=task, cancel=cancel)
        waiter = asyncio.ensure_future(seen.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
            if not seen.is_set():
                result = await bg.finish()
                raise AssertionError(f"sandbox never printed {ready!r}: {result}")
            yield bg
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
            if bg.result is None:
                await bg.finish()

    return _background
