"""Volumes end to end: org-wide storage at /data/<name>/ for the keys bound to it, on real servers.

Volumes are created and bound with the real CLI (`volumes create`, `keys create --volume
NAME[:ro]`), used from real bubblewrap sandboxes through the API, and checked from the host
(btrfs subvolume, owners, modes). Read-write and read-only bindings, unbound keys, sharing
between keys and host uids, the quota, other organizations, deletion rules and persistence
across executions and server restarts are each exercised.

As in test_threads.py, servers run in data dirs of a private temporary directory.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _servers import EXECUTE, MIB, Pool, api, org_id, pool, storage_root, unique
from conftest import Server

__all__ = ["pool"]  # a fixture, imported so pytest finds it here

OTHER_ORG = "vol-other"


@dataclass(frozen=True)
class Key:
    secret: str
    id: str


def cli_ok(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    p = server.cli(*args)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def cli_key(server: Server, *args: str) -> Key:
    """`keys create ARGS`: the key is the only stdout line; its id is on stderr."""
    p = cli_ok(server, "keys", "create", *args)
    (secret,) = p.stdout.split()
    match = re.search(r"key id (key_\S+)", p.stderr)
    assert match, p.stderr
    return Key(secret, match.group(1))


def volumes(server: Server, *org: str) -> dict[str, dict[str, Any]]:
    lines = cli_ok(server, "volumes", "list", *org).stdout.splitlines()
    return {v["name"]: v for v in map(json.loads, lines)}


def volume_dir(server: Server, slug: str, org: str = "default") -> Path:
    return storage_root(server) / "volumes" / org_id(server, org) / slug


async def run(server: Server, key: Key | str, code: str, **fields: Any) -> dict[str, Any]:
    secret = key.secret if isinstance(key, Key) else key
    async with api(server, secret) as c:
        r = await c.post(EXECUTE, json={"code": code, "language": "bash", "timeout": 60, **fields})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def ok(server: Server, key: Key | str, code: str, **fields: Any) -> str:
    result = await run(server, key, code, **fields)
    assert result["success"] is True and result["error"] is None, result
    return result["stdout"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Setup:
    server: Server
    rw: Key
    rw2: Key
    ro: Key
    unbound: str


@pytest.fixture(scope="module")
async def vs(pool: Pool) -> Setup:
    """A server with volume `data` (50 MiB) and keys bound to it rw, rw (as :rw), ro, or not."""
    server = pool.start(auth_failures_allowed=100_000)
    created = json.loads(cli_ok(server, "volumes", "create", "data", "--quota", "50").stdout)
    assert (created["name"], created["quota_mib"]) == ("data", 50)
    assert created["id"].startswith("vol_")
    return Setup(
        server=server,
        rw=cli_key(server, "--volume", "data"),
        rw2=cli_key(server, "--volume", "data:rw"),
        ro=cli_key(server, "--volume", "data:ro"),
        unbound=await server.create_key(),
    )


# --- create, bind, see ------------------------------------------------------------------


def test_volume_is_a_group_shared_subvolume_on_the_host(vs: Setup) -> None:
    listed = volumes(vs.server)
    assert listed["data"]["quota_mib"] == 50
    path = volume_dir(vs.server, "data")
    st = path.stat()
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o2770, oct(st.st_mode)
    assert st.st_gid >= 1000  # the organization's own host group
    subvolumes = subprocess.run(
        ["btrfs", "subvolume", "list", str(storage_root(vs.server))],
        capture_output=True, text=True, check=True,
    ).stdout
    assert re.search(rf"path volumes/org_\w+/data$", subvolumes, re.M), subvolumes

    again = vs.server.cli("volumes", "create", "data")
    assert again.returncode != 0 and "already exists" in again.stderr
    bad = vs.server.cli("volumes", "create", "Bad/Name")
    assert bad.returncode != 0 and "volume name" in bad.stderr
    missing = vs.server.cli("keys", "create", "--volume", "nope")
    assert missing.returncode != 0 and "no volume" in missing.stderr


async def test_bound_key_sees_the_volume_and_writes_to_it(vs: Setup) -> None:
    name = unique("hello")
    out = await ok(
        vs.server, vs.rw,
        f"ls -A -I outputs /data; echo hello > /data/data/{name}; cat /data/data/{name}; "
        f"stat -c %a /data/data/{name}",
    )
    lines = out.splitlines()
    assert lines[0] == "data" and lines[1:] == ["hello", "664"], out
    # the next execution (a different sandbox) still has it
    assert await ok(vs.server, vs.rw, f"cat /data/data/{name}") == "hello\n"
    assert (volume_dir(vs.server, "data") / name).read_text() == "hello\n"


async def test_second_key_and_another_host_uid_read_and_append(vs: Setup) -> None:
    name = unique("shared")
    # the first key writes from a thread run: the file belongs to that thread's host uid
    await ok(vs.server, vs.rw, f"echo from-rw > /data/data/{name}", thread_id=unique("vol-thread"))
    # the second key, in a stateless run under a pool uid, reads it, appends, and adds a file
    code = (
        f"cat /data/data/{name}; echo from-rw2 >> /data/data/{name}; echo x > /data/data/{name}.2"
    )
    assert await ok(vs.server, vs.rw2, code) == "from-rw\n"
    assert await ok(vs.server, vs.rw, f"cat /data/data/{name}") == "from-rw\nfrom-rw2\n"

    host = volume_dir(vs.server, "data")
    first, second = (host / name).stat(), (host / f"{name}.2").stat()
    assert first.st_uid != second.st_uid, "expected two different host uids to share the files"
    assert first.st_gid == second.st_gid == host.stat().st_gid  # both in the organization's group
    assert stat.S_IMODE(first.st_mode) == stat.S_IMODE(second.st_mode) == 0o664


async def test_read_only_binding_reads_but_cannot_write(vs: Setup) -> None:
    name = unique("ro")
    await ok(vs.server, vs.rw, f"echo original > /data/data/{name}")
    result = await run(
        vs.server, vs.ro,
        f"cat /data/data/{name}; echo changed >> /data/data/{name}; touch /data/data/{name}.new; "
        f"rm /data/data/{name}; mkdir /data/data/{name}.d; exit 0",
    )
    assert result["stdout"] == "original\n", result
    assert result["stderr"].count("Read-only file system") == 4, result["stderr"]
    host = volume_dir(vs.server, "data")
    assert (host / name).read_text() == "original\n"
    assert not (host / f"{name}.new").exists() and not (host / f"{name}.d").exists()


async def test_unbound_key_sees_no_volume(vs: Setup) -> None:
    name = unique("hidden")
    await ok(vs.server, vs.rw, f"echo secret > /data/data/{name}")
    out = await ok(
        vs.server, vs.unbound,
        f"ls -A -I outputs /data; [ -e /data/data ] && echo present || echo absent; "
        f"find / -name '{name}' 2>/dev/null; cat {volume_dir(vs.server, 'data') / name} 2>&1; true",
    )
    assert out.startswith("absent\n"), out
    assert "secret" not in out and "No such file or directory" in out


async def test_volume_quota_inside_the_sandbox(vs: Setup) -> None:
    result = await run(
        vs.server, vs.rw,
        "dd if=/dev/zero of=/data/data/big bs=1M count=80 conv=fsync; "
        "stat -c %s /data/data/big; rm /data/data/big",
    )
    assert "Disk quota exceeded" in result["stderr"], result
    assert int(result["stdout"].split()[0]) <= 50 * MIB
    # the space is free again afterwards
    code = (
        "dd if=/dev/zero of=/data/data/ten bs=1M count=10 conv=fsync status=none; "
        "stat -c %s /data/data/ten; rm /data/data/ten"
    )
    assert await ok(vs.server, vs.rw, code) == f"{10 * MIB}\n"


# --- other organizations ------------------------------------------------------------------


async def test_other_org_cannot_see_it_and_gets_its_own(vs: Setup) -> None:
    server = vs.server
    other = await server.create_key(org=OTHER_ORG)
    name = unique("org-private")
    await ok(server, vs.rw, f"echo default-org > /data/data/{name}")

    out = await ok(
        server, other,
        f"ls -A -I outputs /data; [ -e /data/data ] && echo present || echo absent; "
        f"find / -name '{name}' 2>/dev/null; true",
    )
    assert out == "absent\n", out
    assert volumes(server, "--org", OTHER_ORG) == {}
    refused = server.cli("keys", "create", "--org", OTHER_ORG, "--volume", "data")
    assert refused.returncode != 0 and "no volume" in refused.stderr  # no binding across orgs

    created = json.loads(cli_ok(server, "volumes", "create", "data", "--org", OTHER_ORG).stdout)
    assert created["id"] != volumes(server)["data"]["id"]
    theirs = cli_key(server, "--org", OTHER_ORG, "--volume", "data")
    assert await ok(server, theirs, "ls -A /data/data; echo other-org > /data/data/mine") == ""
    probe_mine = "[ -e /data/data/mine ] && echo leaked || echo separate"
    assert await ok(server, vs.rw, probe_mine) == "separate\n"
    probe_theirs = f"cat /data/data/mine; [ -e /data/data/{name} ] && echo leaked || echo separate"
    assert await ok(server, theirs, probe_theirs) == "other-org\nseparate\n"

    mine_dir, their_dir = volume_dir(server, "data"), volume_dir(server, "data", OTHER_ORG)
    assert mine_dir != their_dir and mine_dir.stat().st_gid != their_dir.stat().st_gid
    # on the host, a uid in the other org's group cannot even traverse to the first org's volume
    probe = subprocess.run(
        ["cat", str(mine_dir / name)],
        user=(their_dir / "mine").stat().st_uid, group=their_dir.stat().st_gid, extra_groups=[],
        capture_output=True, text=True, timeout=30,
    )
    assert probe.returncode != 0 and "Permission denied" in probe.stderr


# --- lifecycle ----------------------------------------------------------------------------


async def test_delete_is_refused_while_an_active_key_is_bound(vs: Setup) -> None:
    server = vs.server
    slug = f"scratch-{uuid.uuid4().hex[:6]}"
    cli_ok(server, "volumes", "create", slug, "--quota", "10")
    rw, ro = cli_key(server, "--volume", slug), cli_key(server, "--volume", f"{slug}:ro")
    await ok(server, rw, f"echo bye > /data/{slug}/f")
    path = volume_dir(server, slug)
    assert (path / "f").exists()

    for revoke in (rw, ro):
        refused = server.cli("volumes", "delete", slug)
        assert refused.returncode != 0 and "bound to active API keys" in refused.stderr, refused
        assert slug in volumes(server) and (path / "f").exists()
        cli_ok(server, "keys", "revoke", revoke.id)

    assert cli_ok(server, "volumes", "delete", slug).stdout.strip() == f"deleted {slug}"
    assert slug not in volumes(server)
    assert not path.exists()
    async with api(server, rw.secret) as c:
        r = await c.post(EXECUTE, json={"code": "true", "language": "bash"})
    assert r.status_code == 401
    # the name is free again, and a new volume under it starts empty
    cli_ok(server, "volumes", "create", slug, "--quota", "10")
    fresh = cli_key(server, "--volume", slug)
    assert await ok(server, fresh, f"ls -A /data/{slug}") == ""


async def test_volume_files_persist_across_a_server_restart(pool: Pool) -> None:
    server = pool.start()
    cli_ok(server, "volumes", "create", "keep", "--quota", "20")
    key = cli_key(server, "--volume", "keep")
    marker = uuid.uuid4().hex
    await ok(server, key, f"mkdir -p /data/keep/dir && echo {marker} > /data/keep/dir/file")
    assert await ok(server, key, "cat /data/keep/dir/file") == f"{marker}\n"
    server.stop()
    assert server.proc.returncode is not None
    restarted = pool.restart(server.data_dir)
    code = "cat /data/keep/dir/file; echo more >> /data/keep/dir/file"
    assert await ok(restarted, key, code) == f"{marker}\n"
    assert await ok(restarted, key, "cat /data/keep/dir/file") == f"{marker}\nmore\n"
