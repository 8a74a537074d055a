"""Shared fixtures: real sandboxd servers on loopback, each in its own data directory.

A server is the real `sandboxd serve` process (real bubblewrap sandboxes, real SQLite), on a
free 127.0.0.1 port. Keys are created in-process against the same database, which is what
`sandboxd keys create` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from sandboxd.app import open_admin
from sandboxd.config import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return Settings(data_dir=self.data_dir)

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr (its log lines) go."""
        return self.data_dir.parent / f"server-{self.url.rsplit(':', 1)[1]}.log"

    async def create_key(self, *, org: str = "default", sandbox: str = "default", **sandbox_config: object) -> str:
        """A new key; with `sandbox_config`, bound to a new sandbox config of that name."""
        from sandboxd.service import SandboxConfig

        admin = await open_admin(self.settings)
        try:
            the_org = await admin.tenancy.ensure_org(org)
            if sandbox_config:
                the_sandbox = await admin.tenancy.create_sandbox(the_org, SandboxConfig(name=sandbox, **sandbox_config))  # type: ignore[arg-type]
            else:
                the_sandbox = await admin.tenancy.sandbox(the_org, sandbox)
            created = await admin.keys.create(org=the_org, sandbox=the_sandbox, name="test")
            return created.secret
        finally:
            await admin.close()

    def cli(self, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--data-dir", str(self.data_dir), input=input, timeout=timeout)

    def stop(self) -> None:
        stop_all([self])


def stop_all(servers: list[Server]) -> None:
    """Stop servers (killed after 15 s), all at once: each drains and closes in its own time."""
    running = [s for s in servers if s.proc.poll() is None]
    for server in running:
        server.proc.terminate()
    deadline = time.monotonic() + 15
    for server in running:
        try:
            server.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def run_cli(*args: str, input: str | None = None, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandboxd", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


#: Test servers' host uids: slot k has sandbox uids from 50,000,000 + 1,000 k and thread uids from
#: 100,000,000 + 1,000,000 k (app.THREAD_UIDS), apart from the security suite's and the defaults.
_UID_SLOTS = 1000
#: Where live sandboxd processes keep their leases (sandboxd.runtime.lease.LEASES).
LEASES = Path("/run/sandboxd/leases")
_taken_slots: set[int] = set()


def uid_bases() -> dict[str, int]:
    """Host uid bases no live sandboxd instance on this machine uses (a server refuses a clash:
    runtime/lease.py), so that the many servers the suite runs at once never share a uid."""
    used: list[int] = []
    for path in LEASES.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.append(json.loads(path.read_text())["sandbox_uids"][0])
    free = [k for k in range(_UID_SLOTS) if k not in _taken_slots
            and not any(50_000_000 + 1000 * k <= u < 50_000_000 + 1000 * (k + 1) for u in used)]
    k = random.choice(free)
    _taken_slots.add(k)
    return {"sandbox_uid_base": 50_000_000 + 1000 * k, "thread_uid_base": 100_000_000 + 1_000_000 * k}


def start_server(data_dir: Path, wrap: tuple[str, ...] = (), **settings: object) -> Server:
    """`wrap`: a command that execs the rest (e.g. to give the server a private /etc/hosts).

    Unless `settings` give them, the server gets host uid bases of its own (`uid_bases`)."""
    for attempt in range(3):
        try:
            return _start_server(data_dir, wrap, **{**uid_bases(), **settings})
        except RuntimeError as exc:  # another test process took the same uids meanwhile: again
            if "host uids" not in str(exc) or attempt == 2 or "sandbox_uid_base" in settings:
                raise
    raise AssertionError("unreachable")


def _start_server(data_dir: Path, wrap: tuple[str, ...] = (), **settings: object) -> Server:
    port = free_port()
    env = {**os.environ, **{f"SANDBOXD_{k.upper()}": str(v) for k, v in settings.items()}}
    with open(data_dir.parent / f"server-{port}.log", "wb") as log:
        proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "sandboxd", "serve", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(url=f"http://127.0.0.1:{port}", data_dir=data_dir, proc=proc, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(data_dir.parent / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError("server did not become ready")


@pytest.fixture(scope="session")
def server_factory() -> Iterator[object]:
    """Start extra servers with settings of their own: `server_factory(max_concurrent=1)`."""
    servers: list[Server] = []
    root = Path(tempfile.mkdtemp(prefix="sandboxd-test-"))

    def make(**settings: object) -> Server:
        data_dir = root / f"data{len(servers)}"
        server = start_server(data_dir, **settings)
        servers.append(server)
        return server

    yield make
    stop_all(servers)
    for s in servers:
        unmount_run_dir(s.settings)
    shutil.rmtree(root, ignore_errors=True)


def unmount_below(root: Path) -> None:
    """Unmount anything mounted under `root` (a test's own temp tree)."""
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
    for point in sorted(points, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def unmount_run_dir(settings: Settings) -> None:
    """Unmount what a server killed by a test left mounted under its run dir (the thread and
    volume storage, its thread sandboxes' home slots) and remove the emptied directories."""
    run_dir = settings.run_dir
    if not run_dir.exists():
        return
    unmount_below(run_dir)
    for path in sorted(run_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()
    with contextlib.suppress(OSError):
        run_dir.rmdir()


@pytest.fixture(scope="session")
def server(server_factory) -> Server:  # type: ignore[no-untyped-def]
    """The shared server. Lockout is effectively off here; tests of it start their own server."""
    return server_factory(auth_failures_allowed=100_000)  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
async def api_key(server: Server) -> str:
    return await server.create_key()


@pytest.fixture
async def client(server: Server, api_key: str) -> object:
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120
    ) as c:
        yield c

