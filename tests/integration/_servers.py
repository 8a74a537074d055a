"""Real servers for the thread and volume tests: a module's pool of them, and small helpers.

`pool` (module) starts `sandboxd serve` processes in data dirs of a private (0700) temporary
directory named after the test module (sandboxd-threads-..., sandboxd-volumes-...); at the end
it stops them, unmounts their btrfs storage (under /run, left mounted by a killed server) and
deletes the directory.

Import what a test module needs: `from _servers import pool, ...` (the fixture too, as with
conftest_pg).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import Server, start_server, stop_all, uid_bases, unmount_below, unmount_run_dir

from sandboxd.app import Admin, open_admin
from sandboxd.config import Settings

T = TypeVar("T")
EXECUTE = "/v1/sandbox/execute"
MIB = 1024 * 1024
HTTP_TIMEOUT = 180


def admin_call(server: Server, fn: Callable[[Admin], Awaitable[T]]) -> T:
    """The service layer the CLI calls, in-process: a CLI process costs a second or more to
    start, and each CLI command is tested in its own tests."""

    async def go() -> T:
        admin = await open_admin(server.settings)
        try:
            return await fn(admin)
        finally:
            await admin.close()

    return asyncio.run(go())


def storage_root(server: Server) -> Path:
    """Where the server mounts its btrfs storage (thread homes and volumes)."""
    return Settings(data_dir=server.data_dir).storage_mount_point


class Pool:
    """Real servers in data dirs of a private (0700) directory; stopped and unmounted at the end.

    A server killed by a test leaves its storage mounted (under /run), so each data dir's mount
    point is unmounted here too.
    """

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.servers: list[Server] = []
        self._count = 0
        self._uid_bases: dict[Path, dict[str, int]] = {}

    def start(self, **settings: object) -> Server:
        self._count += 1
        return self.restart(self.root / f"data{self._count}", **settings)

    def restart(self, data_dir: Path, **settings: object) -> Server:
        """A server on `data_dir` (new or left by a stopped or killed one).

        Each data dir keeps the host uid bases it was first given (conftest.uid_bases): two
        servers never share a uid (a server refuses a clash), so a test that looks for a
        thread's processes finds only its own, and a restart finds its threads' uids again.
        """
        bases = self._uid_bases.setdefault(data_dir, uid_bases())
        server = start_server(data_dir, **{**bases, **settings})
        self.servers.append(server)
        return server

    def close(self) -> None:
        stop_all(self.servers)
        for data_dir in {s.data_dir for s in self.servers}:
            unmount_run_dir(Settings(data_dir=data_dir))
        unmount_below(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pool(request: pytest.FixtureRequest) -> Iterator[Pool]:
    """The module's Pool, in a temp dir named after it: test_threads -> sandboxd-threads-*."""
    p = Pool(prefix=f"sandboxd-{request.path.stem.removeprefix('test_')}-")
    try:
        yield p
    finally:
        p.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def api(server: Server, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=HTTP_TIMEOUT
    ) as c:
        yield c


def db(server: Server, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(server.data_dir / "sandboxd.db", timeout=30)) as conn:
        with conn:
            return conn.execute(query, args).fetchall()


def org_id(server: Server, name: str = "default") -> str:
    rows = db(server, "SELECT id FROM orgs WHERE name = ?", name)
    assert len(rows) == 1, rows
    return rows[0][0]  # type: ignore[no-any-return]


def processes_of(uid: int) -> list[int]:
    """Live processes of `uid`. Zombies are dead: a killed server's are adopted by this test
    process when an in-process runner (the security suite's) made it a subreaper."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith(("Z", "X")):
                pids.append(int(entry.name))
    return pids
