"""A real `sandboxd serve` attacked from its own sandboxes: its data dir, database, secret,
storage, other threads' homes and its environment must all be out of reach.

(test_escape.py does the same against a bare runner; here the paths are the real server's,
and thread homes live on its real btrfs storage.)
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .probes import PROBE_FUNCTION

Server = Any  # tests/conftest.py's Server: a real `sandboxd serve` process

EXECUTE = "/v1/sandbox/execute"
ENV_MARKER = "SANDBOXD_SEC_SERVER_ENV_" + secrets.token_hex(4).upper()
ENV_SECRET = "server-env-" + secrets.token_hex(12)

PROBE = PROBE_FUNCTION.replace("MAX", "200") + """
paths = json.loads(os.environ["PROBE"])
environ = {}
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        environ[pid] = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        pass
print(json.dumps({
    "paths": {p: probe(p) for p in paths},
    "mountinfo": open("/proc/self/mountinfo").read() + open("/proc/1/mountinfo").read(),
    "env": dict(os.environ),
    "environ": environ,
}))
"""


@pytest.fixture(scope="module")
def server(server_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A server whose own environment holds a secret marker (as a real deployment's would)."""
    os.environ[ENV_MARKER] = ENV_SECRET
    try:
        yield server_factory()
    finally:
        os.environ.pop(ENV_MARKER, None)


@pytest.fixture(scope="module")
async def client(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    key = await server.create_key()
    async with httpx.AsyncClient(
        base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as c:
        yield c


async def execute(client: httpx.AsyncClient, code: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(EXECUTE, json={"code": code, "language": "python", **fields})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["success"] is True, result
    return result  # type: ignore[no-any-return]


def thread_home(server: Server, thread_id: str) -> Path:
    shown = server.cli("threads", "show", thread_id)
    assert shown.returncode == 0, shown.stderr
    return Path(json.loads(shown.stdout)["home"])


def server_paths(server: Server) -> list[str]:
    data = server.data_dir
    storage = server.settings.storage_mount_point
    return [
        str(data), str(data / "sandboxd.db"), str(data / "server.secret"), str(data / "storage.img"),
        str(storage), str(storage / "threads"), str(storage.parent),
        f"/proc/1/root{data}", f"/proc/1/cwd{data}",
    ]


@pytest.fixture(scope="module")
async def victim(server: Server, client: httpx.AsyncClient) -> Path:
    """The host path of another thread's home, holding a private file."""
    code = "open('/home/baponi/private', 'w').write('victim-data')"
    await execute(client, code, thread_id="boundary-victim")
    home = thread_home(server, "boundary-victim")
    assert (home / "private").read_text() == "victim-data"  # precondition: the host path is right
    return home


@pytest.mark.parametrize("thread", [None, "boundary-probe"], ids=["stateless", "thread"])
async def test_server_files_and_other_threads_homes_out_of_reach(
    server: Server, client: httpx.AsyncClient, victim: Path, thread: str | None
) -> None:
    for name in ("sandboxd.db", "server.secret", "storage.img"):
        assert (server.data_dir / name).exists(), f"precondition: {name} exists"
    paths = [*server_paths(server), str(victim), str(victim / "private"), str(victim.parent)]
    fields = {"thread_id": thread} if thread else {}
    result = await execute(client, PROBE, env_vars={"PROBE": json.dumps(paths)}, **fields)
    seen = json.loads(result["stdout"])
    assert seen["paths"] == {p: "ENOENT" for p in paths}  # mount namespace: not in view at all
    # The sandbox's own mount table names no host path of the server (thread homes are binds
    # of btrfs subvolumes: their root is shown relative to that filesystem).
    for host_path in (str(server.data_dir), str(server.settings.storage_mount_point), str(victim)):
        assert host_path not in seen["mountinfo"], host_path


async def test_server_environment_never_reaches_the_code(client: httpx.AsyncClient) -> None:
    result = await execute(client, PROBE, env_vars={"PROBE": "[]"})
    seen = json.loads(result["stdout"])
    assert ENV_MARKER not in seen["env"] and ENV_SECRET not in result["stdout"]
    assert not any(k.startswith("SANDBOXD_") for k in seen["env"]), seen["env"]
    assert seen["environ"] and all(ENV_MARKER not in e for e in seen["environ"].values())
