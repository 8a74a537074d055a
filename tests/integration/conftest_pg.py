"""A throwaway PostgreSQL server for tests, from the machine's own server binaries.

`pg_server` (session) runs `initdb` in a temp dir owned by the `postgres` OS user (via
`runuser` when we are root: PostgreSQL refuses to run as root), listens on 127.0.0.1 only, at
a free port, with its unix socket in that temp dir and trust auth, and is stopped and deleted
at teardown. `pg_database_url` (function) is a fresh, empty database on it for each test.

Missing binaries FAIL the test, they never skip it: CI installs them (Debian 12:
`apt-get install postgresql-15`, which brings `postgresql-client-15` and the `postgres` user).

Import the fixtures into a test module: `from conftest_pg import pg_database_url, pg_server`.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

PG_USER = "postgres"  # the OS user that owns the cluster, and its superuser role
REQUIRED = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = "install them, e.g. on Debian 12: apt-get install -y postgresql-15"


def root_conftest() -> ModuleType:
    """tests/conftest.py as a module, for its helpers (`start_server`, `run_cli`, `Server`).

    Not `from conftest import ...`: pytest keeps only the last loaded rootless `conftest` in
    sys.modules, so that import breaks as soon as tests/integration/conftest.py exists.
    """
    path = (Path(__file__).resolve().parent.parent / "conftest.py").resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    name = "_sandboxd_tests_root_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/N/bin with initdb, pg_ctl and postgres; else /usr/local/bin, PATH."""

    def version(path: str) -> tuple[int, ...]:
        m = re.search(r"/postgresql/(\d+)(?:\.(\d+))?/bin$", path)
        return tuple(int(g) for g in m.groups() if g) if m else (0,)

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates.append("/usr/local/bin")
    which = shutil.which("initdb")
    if which:
        candidates.append(str(Path(which).parent))
    for candidate in candidates:
        if all(os.access(os.path.join(candidate, b), os.X_OK) for b in REQUIRED):
            return Path(candidate)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private event loop in a worker thread.

    Keeps asyncpg off pytest-asyncio's session loop, so sync fixtures and sync tests can use it.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc

    thread = threading.Thread(target=target, name="pg-helper")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]  # type: ignore[no-any-return]


@dataclass
class PgServer:
    bindir: Path
    root: Path  # temp dir: data/, the unix socket, the log
    port: int
    host: str = "127.0.0.1"
    user: str = PG_USER

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL for sandboxd (asyncpg driver, TCP on loopback, trust auth)."""
        return f"postgresql+asyncpg://{self.user}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        """Plain libpq/asyncpg DSN for asyncpg.connect."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def fetch(self, database: str, query: str, *args: object) -> list[dict[str, Any]]:
        """Rows of one query, straight from PostgreSQL (not through sandboxd)."""

        async def go() -> list[dict[str, Any]]:
            import asyncpg

            conn = await asyncpg.connect(self.dsn(database))
            try:
                return [dict(r) for r in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return run_in_thread(go)

    def execute(self, database: str, statement: str) -> None:
        async def go() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.dsn(database))
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        run_in_thread(go)

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"bad database name {name!r}")
        self.execute("postgres", f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
        return self.url(name)


def _as_pg_user() -> list[str]:
    """Command prefix that runs a PostgreSQL binary as the postgres OS user (only needed as root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser") or "/sbin/runuser"
    if not os.access(runuser, os.X_OK):
        pytest.fail(
            "running as root, but `runuser` (util-linux) is missing: cannot drop to the postgres user",
            pytrace=False,
        )
    return [runuser, "-u", PG_USER, "--"]


def _run(cmd: list[str], what: str, timeout: float = 120) -> None:
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")


def start_pg() -> PgServer:
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in /usr/lib/postgresql/*/bin, "
            f"/usr/local/bin or PATH: {INSTALL_HINT}",
            pytrace=False,
        )
    prefix = _as_pg_user()
    owner = None
    if prefix:
        try:
            owner = pwd.getpwnam(PG_USER)
        except KeyError:
            pytest.fail(
                f"running as root, but there is no `{PG_USER}` OS user to own the cluster: {INSTALL_HINT}",
                pytrace=False,
            )
    # /tmp, not $TMPDIR: the postgres user must reach it, and a unix socket path is capped at 107 bytes.
    base = "/tmp" if os.path.isdir("/tmp") else None
    root = Path(tempfile.mkdtemp(prefix="sandboxd-pg-", dir=base))
    try:
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        os.chmod(root, 0o700)
        datadir = root / "data"
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ],
            "initdb",
        )
        last_error: Exception | None = None
        for _ in range(3):  # a free port can be taken between choosing and binding it
            server = PgServer(bindir=bindir, root=root, port=free_port())
            settings = {
                "listen_addresses": "'127.0.0.1'",
                "port": str(server.port),
                "unix_socket_directories": f"'{root}'",
                "max_connections": "50",
                "fsync": "off",  # throwaway data: no need to survive a power cut
                "synchronous_commit": "off",
                "full_page_writes": "off",
                # not UTC on purpose: sandboxd must not depend on the server's zone
                "timezone": "'Asia/Kathmandu'",
                "log_timezone": "'UTC'",
            }
            (datadir / "postgresql.auto.conf").write_text(
                "".join(f"{k} = {v}\n" for k, v in settings.items())
            )
            try:
                _run(
                    [
                        *prefix,
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(datadir),
                        "-l",
                        str(server.logfile),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    "pg_ctl start",
                )
            except RuntimeError as exc:
                last_error = RuntimeError(f"{exc}\n--- postgres log ---\n{server.log_tail()}")
                stop_pg(server, delete=False)
                continue
            server.create_database("sandboxd")
            return server
        raise last_error or RuntimeError("PostgreSQL did not start")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def stop_pg(server: PgServer, *, delete: bool = True) -> None:
    """Stop the postmaster we started (fast, then by its pid) and delete its temp dir."""
    try:
        if (server.datadir / "postmaster.pid").exists():
            try:
                _run(
                    [
                        *_as_pg_user(),
                        str(server.bindir / "pg_ctl"),
                        "-D",
                        str(server.datadir),
                        "-w",
                        "-t",
                        "30",
                        "-m",
                        "fast",
                        "stop",
                    ],
                    "pg_ctl stop",
                    timeout=60,
                )
            except (RuntimeError, subprocess.TimeoutExpired):
                _kill_postmaster(server.datadir)
    finally:
        if delete:
            shutil.rmtree(server.root, ignore_errors=True)


def _kill_postmaster(datadir: Path) -> None:
    try:
        pid = int((datadir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return
    try:  # only the postmaster of this data dir: never a pid that a stale file names
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(datadir).encode() not in cmdline:
        return
    for sig, wait_s in (
        (signal.SIGQUIT, 10.0),
        (signal.SIGKILL, 10.0),
    ):  # immediate shutdown, then kill
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server = start_pg()
    try:
        yield server
    finally:
        stop_pg(server)


_counter = iter(range(1, 1_000_000))


@pytest.fixture
def pg_database_url(pg_server: PgServer) -> str:
    """A new empty database on the throwaway server, as a sandboxd database URL."""
    return pg_server.create_database(f"sandboxd_t{os.getpid()}_{next(_counter)}")
