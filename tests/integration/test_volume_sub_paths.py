"""`sub_paths` on volumes, end to end: the official `baponi` SDK against the shared real server.

A key of its own organization is bound to two volumes (`a` read-write, `b` read-only). With
`sub_paths` the sandbox sees only the listed directories (service/scoping.py); a missing one is
made for a writable binding and refused for a read-only one; an entry of no mount of the key
is a 400. The attack: a sandbox plants symbolic links in its volume (to /etc, to another
organization's volume) and asks for them by `sub_paths`; the server opens each component
without following a link (runtime/beneath.py) and refuses, before anything runs.

Storage connections are made and bound with the real CLI (`storage create`, `keys create
--storage`); a bucket is never reached here (no rclone needed): a key bound to one fails with
`storage_mount_error` unless `sub_paths` leaves the bucket out.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import baponi
import httpx
import pytest
from _servers import api, db, storage_root
from conftest import Server
from test_volumes import Key, cli_key, cli_ok, volume_dir

from sandboxd.app import open_admin
from sandboxd.store import Org, Volume

ORG = f"subp-{uuid.uuid4().hex[:8]}"
OTHER_ORG = f"subp-other-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Setup:
    server: Server
    key: Key  # a (rw) and b (ro)
    a: Path  # the volumes on the host
    b: Path
    theirs: Path  # another organization's volume
    sdk: baponi.Baponi


@pytest.fixture(scope="module")
async def sp(server: Server) -> AsyncIterator[Setup]:
    """Made in-process, as `sandboxd volumes create` and `keys create --volume` do (the CLI
    itself is exercised in test_volumes.py and below): a CLI call costs seconds."""
    admin = await open_admin(server.settings)
    try:
        mine, other = await admin.tenancy.ensure_org(ORG), await admin.tenancy.ensure_org(OTHER_ORG)
        a, b = [await admin.volumes.create(mine, slug, 20) for slug in ("a", "b")]
        theirs = await admin.volumes.create(other, "a", 20)

        async def key(org: Org, *volumes: tuple[Volume, bool]) -> Key:
            sandbox = await admin.tenancy.sandbox(org, "default")
            created = await admin.keys.create(org=org, sandbox=sandbox, name="t", volumes=list(volumes))
            return Key(created.secret, created.record.id)

        rw_ro = await key(mine, (a, False), (b, True))
        writer_b = await key(mine, (b, False))
        theirs_key = await key(other, (theirs, False))
    finally:
        await admin.close()
    # some of everything in the volumes: what a narrowed run must not see
    for k, code in (
        (rw_ro, "mkdir -p /data/a/x/inner /data/a/y && echo top > /data/a/top && echo in-x > /data/a/x/f"),
        (writer_b, "mkdir -p /data/b/y/z /data/b/other && echo in-b > /data/b/y/f && echo top > /data/b/top"),
        (theirs_key, "mkdir -p /data/a/private && echo their-secret > /data/a/private/s"),
    ):
        with _sdk(server, k) as client:
            result = client.execute(code, language="bash")
        assert result.success, result
    with _sdk(server, rw_ro) as sdk:
        yield Setup(
            server, rw_ro, volume_dir(server, "a", ORG), volume_dir(server, "b", ORG),
            volume_dir(server, "a", OTHER_ORG), sdk,
        )


def _sdk(server: Server, key: Key) -> baponi.Baponi:
    return baponi.Baponi(api_key=key.secret, base_url=server.url, max_retries=0)


def bash(sp: Setup, code: str, sub_paths: list[str] | None = None, **kw: Any) -> baponi.SandboxResult:
    return sp.sdk.execute(code, language="bash", timeout=60, sub_paths=sub_paths, **kw)


async def raw(sp: Setup, code: str, sub_paths: list[str] | None) -> dict[str, Any]:
    """The API's own answer (the SDK's result has no trace_id, no error_message)."""
    async with api(sp.server, sp.key.secret) as c:
        r = await c.post("/v1/sandbox/execute", json={"code": code, "language": "bash", "sub_paths": sub_paths})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def record(sp: Setup, trace_id: str) -> dict[str, Any]:
    async with api(sp.server, sp.key.secret) as c:
        r = await c.get(f"/v1/executions/{trace_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def refused(result: baponi.SandboxResult, code: str) -> None:
    assert result.success is False and result.error == code and result.exit_code == -1, result
    assert result.stdout == "" and result.stderr == "", result  # the program never ran


# --- what a narrowed run sees ------------------------------------------------------------


def test_only_the_listed_directory_is_shown(sp: Setup) -> None:
    result = bash(sp, "ls -A -I outputs /data; echo --; ls -A /data/a; echo --; ls -A /data/a/x; cat /data/a/x/f", ["/data/a/x"])
    assert result.success, result
    assert result.stdout == "a\n--\nx\n--\nf\ninner\nin-x\n", result.stdout
    # b, a's other files and directories: not there at all
    probe = "for p in /data/b /data/a/y /data/a/top; do [ -e $p ] && echo $p present; done; true"
    assert bash(sp, probe, ["/data/a/x"]).stdout == ""
    # without sub_paths, the whole of both
    assert bash(sp, "ls -A -I outputs /data; ls -A /data/a").stdout == "a\nb\ntop\nx\ny\n"


def test_writes_land_in_the_listed_directory_of_the_volume(sp: Setup) -> None:
    name = f"w-{uuid.uuid4().hex[:8]}"
    result = bash(sp, f"echo hello > /data/a/x/{name}; cat /data/a/x/{name}", ["/data/a/x"])
    assert result.success and result.stdout == "hello\n", result
    assert (sp.a / "x" / name).read_text() == "hello\n"
    assert (sp.a / "x" / name).stat().st_gid == sp.a.stat().st_gid  # the organization's group
    # the directories above it in the sandbox are not the volume's: nothing written there lands
    bash(sp, f"touch /data/a/{name}.above /data/{name}.top 2>/dev/null; true", ["/data/a/x"])
    assert not (sp.a / f"{name}.above").exists()


def test_a_thread_run_is_narrowed_the_same_way(sp: Setup) -> None:
    thread = f"subp-{uuid.uuid4().hex[:8]}"
    code = "ls -A -I outputs /data /data/a; cp /data/a/x/f /home/baponi/copied; cat /home/baponi/copied"
    result = bash(sp, code, ["/data/a/x"], thread_id=thread)
    assert result.success and result.stdout == "/data:\na\n\n/data/a:\nx\nin-x\n", result
    again = bash(sp, "cat /home/baponi/copied; ls -A -I outputs /data", ["/data/b/y"], thread_id=thread)
    assert again.stdout == "in-x\nb\n", again


def test_a_read_only_binding_stays_read_only_when_narrowed(sp: Setup) -> None:
    result = bash(sp, "cat /data/b/y/f; touch /data/b/y/new", ["/data/b/y"])
    assert result.stdout == "in-b\n" and "Read-only file system" in result.stderr, result
    assert not (sp.b / "y" / "new").exists()


def test_two_mounts_and_nested_entries(sp: Setup) -> None:
    result = bash(
        sp, "ls -A -I outputs /data; ls -A /data/a; ls -A /data/b; cat /data/a/x/f; ls -A /data/b/y",
        ["/data/b/y/z", "/data/a/x/inner", "/data/a/x", "/data/b/y"],
    )
    assert result.success, result
    assert result.stdout == "a\nb\nx\ny\nin-x\nf\nz\n", result.stdout  # nested ones: the outermost


def test_the_whole_mount_by_sub_paths(sp: Setup) -> None:
    """`/data/a` names all of `a`; `b`, not named, is not mounted."""
    assert bash(sp, "ls -A -I outputs /data; ls -A /data/a", ["/data/a"]).stdout == "a\ntop\nx\ny\n"


def test_entries_at_the_request_limits_are_accepted(sp: Setup) -> None:
    """10 entries; an entry of 512 characters; '.' components and dotted names."""
    long_entry = "/data/a/long/" + "l" * 245 + "/" + "m" * 253
    assert len(long_entry) == 512
    ten = [f"/data/a/ten/{i}" for i in range(9)] + ["/data/b/y/./z/"]
    assert bash(sp, "ls -A /data/a/ten | wc -l; ls -A /data/b/y", ten).stdout == "9\nz\n"
    dotted = bash(sp, "ls -d /data/a/.hidden.d/x.y", ["/data/a/./.hidden.d/x.y"])
    assert dotted.stdout == "/data/a/.hidden.d/x.y\n", dotted
    assert bash(sp, f"ls -d {long_entry}", [long_entry]).stdout == long_entry + "\n"
    assert (sp.a / "long" / ("l" * 245) / ("m" * 253)).is_dir()
    assert (sp.a / ".hidden.d" / "x.y").is_dir()


def test_a_missing_directory_is_made_for_a_writable_binding(sp: Setup) -> None:
    name = f"new-{uuid.uuid4().hex[:8]}"
    result = bash(sp, f"ls -A /data/a/{name}/deeper; echo made > /data/a/{name}/deeper/f", [f"/data/a/{name}/deeper"])
    assert result.success and result.stdout == "", result
    for made in (sp.a / name, sp.a / name / "deeper"):
        st = made.stat()
        assert stat.S_IMODE(st.st_mode) == 0o2770, (made, oct(st.st_mode))
        assert st.st_gid == sp.a.stat().st_gid
    assert (sp.a / name / "deeper" / "f").read_text() == "made\n"


async def test_a_missing_directory_is_refused_for_a_read_only_binding(sp: Setup) -> None:
    name = f"absent-{uuid.uuid4().hex[:8]}"
    refused(bash(sp, "echo ran", [f"/data/b/{name}"]), "volume_mount_error")
    answer = await raw(sp, "echo ran", ["/data/a/x", f"/data/b/{name}/deeper"])
    assert answer["error"] == "volume_mount_error" and answer["exit_code"] == -1 and not answer["success"]
    message = answer["error_message"]
    assert f"'/data/b/{name}/deeper' does not exist and the binding is read-only" in message, message
    assert str(storage_root(sp.server)) not in message  # no host path
    assert not (sp.b / name).exists()


@pytest.mark.parametrize("entry", ["/data/nope/x", "/data/ab", "/data/a-b/x", "/data//a/x"])
def test_an_entry_of_no_mount_of_the_key_is_a_400_naming_it(sp: Setup, entry: str) -> None:
    with pytest.raises(baponi.APIValidationError) as info:
        sp.sdk.execute("echo ran", language="bash", sub_paths=["/data/a/x", entry])
    assert info.value.status_code == 400 and info.value.error_type == "validation_error"
    assert f"sub_paths entry {entry!r} is not inside a mount of this API key" in info.value.message
    assert "/data/a/, /data/b/" in info.value.message, info.value.message


async def test_a_traversal_the_sdk_lets_through_is_a_400(sp: Setup) -> None:
    """The SDK refuses '..' itself; sent as it is, the server refuses it too, naming it."""
    for entry in ("/data/nope/../a", "/data/a/x/../../b"):
        answer = await _post(sp, {"code": "echo ran", "language": "bash", "sub_paths": [entry]})
        assert answer.status_code == 400 and answer.json()["error"] == "validation_error", answer.text
        assert repr(entry) in answer.json()["message"]


async def _post(sp: Setup, body: dict[str, Any]) -> httpx.Response:
    async with api(sp.server, sp.key.secret) as c:
        content = json.dumps(body)  # ensure_ascii: a lone surrogate goes as \ud800, as JSON allows
        return await c.post("/v1/sandbox/execute", content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "entry",
    ["/data/a/x\n", "/data/a/\x1b[2J", "/data/a/" + "n" * 256, "/data/a/\ud800"],
    ids=["newline", "escape", "long-name", "lone-surrogate"],
)
async def test_names_no_directory_may_have_are_a_400(sp: Setup, entry: str) -> None:
    r = await _post(sp, {"code": "echo ran", "language": "bash", "sub_paths": [entry]})
    assert r.status_code == 400 and r.json()["error"] == "validation_error", r.text
    assert "sub_paths" in r.json()["message"]
    assert [p.name for p in sp.a.iterdir() if p.name.startswith(("x\n", "n" * 10, "\x1b"))] == []


# --- the attack: links planted by a sandbox --------------------------------------------------


async def test_a_planted_link_is_refused_not_followed(sp: Setup) -> None:
    tag = uuid.uuid4().hex[:8]
    plant = (
        f"ln -s /etc /data/a/evil-{tag}; ln -s {sp.theirs} /data/a/cross-{tag}; "
        f"ln -s {sp.theirs}/private /data/a/x/deep-{tag}; ln -s ../../.. /data/a/up-{tag}; "
        f"ln -s x /data/a/inside-{tag}; echo not-a-dir > /data/a/file-{tag}; ls -A /data/a"
    )
    assert bash(sp, plant).success
    assert os.readlink(sp.a / f"evil-{tag}") == "/etc"  # the links are there, on the host
    entries = [
        f"/data/a/evil-{tag}",
        f"/data/a/evil-{tag}/ssl",
        f"/data/a/cross-{tag}",
        f"/data/a/cross-{tag}/private",
        f"/data/a/cross-{tag}/made-{tag}",  # would be made in their volume if the link were followed
        f"/data/a/x/deep-{tag}",
        f"/data/a/up-{tag}",
        f"/data/a/inside-{tag}",  # even a link within the volume
        f"/data/a/file-{tag}",
        f"/data/a/file-{tag}/below",
    ]
    for entry in entries:
        result = bash(sp, "ls -la /data/a; cat /data/a/*/passwd /data/a/*/private/s; echo ran", [entry])
        refused(result, "volume_mount_error")
        answer = await raw(sp, "cat /data/a/*/passwd; echo ran", ["/data/b/y", entry])
        assert answer["error"] == "volume_mount_error" and answer["stdout"] == "", answer
        message = answer["error_message"]
        assert f"{entry!r} is not a directory (a file or a symbolic link is in the way)" in message, message
        assert "root:" not in json.dumps(answer) and "their-secret" not in json.dumps(answer)
    assert sorted(p.name for p in sp.theirs.iterdir()) == ["private"]
    assert (sp.theirs / "private" / "s").read_text() == "their-secret\n"
    # a sandbox follows its own link inside its own mount namespace: to its own /etc, not the host's
    seen = bash(sp, f"readlink /data/a/evil-{tag}; cat /data/a/cross-{tag}/private/s 2>&1; true").stdout
    assert seen.startswith("/etc\n") and "No such file or directory" in seen and "their-secret" not in seen


async def test_a_link_swapped_in_after_a_run_is_refused_on_the_next(sp: Setup) -> None:
    """A directory shown by one run, replaced by a link by another, is refused the next time."""
    tag = uuid.uuid4().hex[:8]
    assert bash(sp, f"echo ok > /data/a/swap-{tag}/ok", [f"/data/a/swap-{tag}"]).success  # made
    assert (sp.a / f"swap-{tag}" / "ok").read_text() == "ok\n"
    assert bash(sp, f"rm -r /data/a/swap-{tag} && ln -s /etc /data/a/swap-{tag}").success
    refused(bash(sp, "ls /data/a", [f"/data/a/swap-{tag}"]), "volume_mount_error")


# --- the record and what is left -------------------------------------------------------------


async def test_the_execution_records_what_it_showed(sp: Setup) -> None:
    marker = uuid.uuid4().hex
    result = bash(sp, "true", ["/data/a/x/inner", "/data/a/y", "/data/b/y/"], metadata={"marker": marker})
    assert result.success
    ((trace_id,),) = db(sp.server, "SELECT trace_id FROM executions WHERE metadata LIKE ?", f"%{marker}%")
    doc = await record(sp, trace_id)
    assert doc["storage"] == [
        {"name": "a", "type": "volume", "path": "/data/a/x/inner", "read_only": False, "scope": "x/inner"},
        {"name": "a", "type": "volume", "path": "/data/a/y", "read_only": False, "scope": "y"},
        {"name": "b", "type": "volume", "path": "/data/b/y", "read_only": True, "scope": "y"},
    ]
    whole = await raw(sp, "true", None)
    assert (await record(sp, whole["trace_id"]))["storage"] == [
        {"name": "a", "type": "volume", "path": "/data/a", "read_only": False, "scope": ""},
        {"name": "b", "type": "volume", "path": "/data/b", "read_only": True, "scope": ""},
    ]
    # a key with no volume records none
    async with api(sp.server, await sp.server.create_key(org=ORG)) as c:
        plain = (await c.post("/v1/sandbox/execute", json={"code": "true", "language": "bash"})).json()
        assert (await c.get(f"/v1/executions/{plain['trace_id']}")).json()["storage"] == []


async def test_nothing_is_left_behind(sp: Setup) -> None:
    """Many runs, refused and not: no descriptor stays open in the server, no mount on the
    host, no sandbox process."""
    pid = sp.server.proc.pid

    def fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    def mounts() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return sorted(line.split()[4] for line in f if str(sp.server.data_dir.parent) in line
                          or str(storage_root(sp.server)) in line)

    tag = uuid.uuid4().hex[:8]
    assert bash(sp, f"ln -s /etc /data/a/leak-{tag}").success
    bash(sp, "true", ["/data/a/x"])  # warm whatever is lazily opened
    before_fds, before_mounts = fds(), mounts()
    for _ in range(5):
        assert bash(sp, "ls /data/a/x >/dev/null", ["/data/a/x", "/data/b/y"]).success
        refused(bash(sp, "true", [f"/data/a/leak-{tag}"]), "volume_mount_error")
        refused(bash(sp, "true", [f"/data/b/missing-{tag}"]), "volume_mount_error")
        assert bash(sp, "true").success
    # a leak would be one descriptor a mount a run (20 here); a pooled connection may come and go
    assert fds() <= before_fds + 3, f"the server keeps descriptors open: {before_fds} -> {fds()}"
    assert mounts() == before_mounts
    running = db(sp.server, "SELECT count(*) FROM executions WHERE status IN ('queued', 'running')")
    assert running == [(0,)]


# --- a key with a bucket too (no rclone needed: the bucket is never reached) -----------------

SECRET = f"s3cr3t-{uuid.uuid4().hex}"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_storage_cli_and_a_key_with_a_volume_and_a_bucket(sp: Setup) -> None:
    server = sp.server
    credentials = json.dumps({"access_key_id": "AKIDTEST", "secret_access_key": SECRET})
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    created = server.cli(
        "storage", "create", "lake", "--type", "s3", "--bucket", "bkt", "--endpoint", endpoint,
        "--prefix", "/conn/p/", "--credentials-file", "-", "--org", ORG, input=credentials,
    )
    assert created.returncode == 0, created
    shown = json.loads(created.stdout)
    assert shown["name"] == "lake" and shown["type"] == "s3" and shown["prefix"] == "conn/p"
    assert shown["mounted_at"] == "/data/lake/" and shown["read_only"] is False
    clash = server.cli("storage", "create", "a", "--type", "s3", "--bucket", "bkt", "--credentials-file", "-",
                       "--org", ORG, input=credentials)
    assert clash.returncode != 0 and "a volume is named 'a'" in clash.stderr, clash
    again = server.cli("storage", "create", "lake", "--type", "s3", "--bucket", "bkt", "--credentials-file", "-",
                       "--org", ORG, input=credentials)
    assert again.returncode != 0 and "already exists" in again.stderr

    key = cli_key(server, "--org", ORG, "--volume", "a", "--storage", "lake:prefix=team")
    for bad, words in (("nope", "no storage connection 'nope'"), ("lake:rx", "NAME[:ro][:prefix=PATH]")):
        refused_key = server.cli("keys", "create", "--org", ORG, "--storage", bad)
        assert refused_key.returncode != 0 and words in refused_key.stderr, (bad, refused_key.stderr)
    other = server.cli("keys", "create", "--org", OTHER_ORG, "--storage", "lake")
    assert other.returncode != 0 and "no storage connection 'lake'" in other.stderr  # no binding across orgs

    listed = [json.loads(line) for line in cli_ok(server, "storage", "list", "--org", ORG).stdout.splitlines()]
    assert [c["name"] for c in listed] == ["lake"]
    detail = json.loads(cli_ok(server, "storage", "show", "lake", "--org", ORG).stdout)
    assert detail["keys"] == [key.id]

    with _sdk(server, key) as sdk:
        # sub_paths naming only the volume: the bucket is not mounted at all, so its failure is not met
        narrowed = sdk.execute("ls -A -I outputs /data; ls -A /data/a", language="bash", sub_paths=["/data/a/x"])
        assert narrowed.success and narrowed.stdout == "a\nx\n", narrowed
        for sub_paths in (None, ["/data/lake/in"], ["/data/a/x", "/data/lake"]):
            refused(sdk.execute("echo ran", language="bash", sub_paths=sub_paths), "storage_mount_error")
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key.secret}"}, timeout=120) as c:
        answer = c.post("/v1/sandbox/execute", json={"code": "echo ran", "language": "bash",
                                                    "sub_paths": ["/data/a/x", "/data/lake/in/2026"]}).json()
        assert answer["error"] == "storage_mount_error" and answer["stdout"] == "", answer
        assert "storage connection 'lake' could not be mounted" in answer["error_message"], answer
        doc = c.get(f"/v1/executions/{answer['trace_id']}").json()
    assert doc["storage"] == [  # what the run was to show: the three levels of the bucket joined
        {"name": "a", "type": "volume", "path": "/data/a/x", "read_only": False, "scope": "x"},
        {"name": "lake", "type": "s3", "path": "/data/lake/in/2026", "read_only": False,
         "scope": "conn/p/team/in/2026"},
    ]
    for text in (json.dumps(answer), json.dumps(doc), created.stdout, created.stderr,
                 json.dumps(detail), sp.server.log_path.read_text()):
        assert SECRET not in text and "AKIDTEST" not in text
    with open(server.data_dir / "sandboxd.db", "rb") as f:
        assert SECRET.encode() not in f.read()  # sealed at rest

    # delete: refused while the key is active, done once it is revoked
    busy = server.cli("storage", "delete", "lake", "--org", ORG)
    assert busy.returncode != 0 and "bound to active API keys" in busy.stderr and key.id in busy.stderr
    cli_ok(server, "keys", "revoke", key.id)
    assert cli_ok(server, "storage", "delete", "lake", "--org", ORG).stdout.strip() == "deleted lake"
    assert cli_ok(server, "storage", "list", "--org", ORG).stdout == ""
    buckets = server.settings.run_dir / "buckets"
    assert not buckets.exists() or list(buckets.iterdir()) == []  # no mount left, nor its directory
