"""Storage connections end to end: real buckets (SeaweedFS S3, Azurite, a GCS emulator) on
loopback, a real server, connections and keys made with the real CLI, code run in real
sandboxes through the official SDK, and every write checked through the provider's own API.

What a user relies on: files written in /data/<name>/ land in the bucket under exactly the
scoped prefix; nothing above the scope is visible; read-only means read-only; credentials are
nowhere the sandbox, the logs or an API answer can show; a mount that fails says why and
leaves nothing behind; mounts are shared between executions and released when idle.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import baponi
import httpx
import pytest
from _buckets import BucketRig, azure_rig, bucket_rig, gcs_rig, s3_rig, stopped_endpoint
from _servers import EXECUTE, Pool, admin_call, pool, unique
from conftest import Server

from sandboxd.app import Admin
from sandboxd.service.storage import ConnectionSpec

__all__ = ["azure_rig", "bucket_rig", "gcs_rig", "pool", "s3_rig", "stopped_endpoint"]  # fixtures

IDLE_S = 3.0
T = TypeVar("T")


@pytest.fixture(scope="module")
def server(pool: Pool) -> Server:
    return pool.start(storage_mount_idle_s=IDLE_S)


def cli_ok(server: Server, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    p = server.cli(*args, input=input)
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def credentials_of(rig: BucketRig, bucket: str, *, bad: bool = False) -> str:
    """The JSON `storage create --credentials-file -` reads, as a user would write it."""
    remote = rig.bad_remote(bucket) if bad else rig.remote(bucket)
    creds = dict(remote.credentials)
    if rig.kind == "gcs":
        return creds["service_account_credentials"]  # the key file as Google gives it
    return json.dumps(creds)


def connect(
    server: Server, rig: BucketRig, bucket: str, *, prefix: str = "", read_only: bool = False,
    bad: bool = False, endpoint: str | None = None, org: str = "default",
) -> str:
    name = unique(rig.kind)
    spec = ConnectionSpec(name, rig.kind, bucket, endpoint or rig.endpoint, None, prefix, read_only)
    raw = credentials_of(rig, bucket, bad=bad).encode()

    async def go(admin: Admin) -> None:
        await admin.storage.create(await admin.tenancy.org(org), spec, raw)

    admin_call(server, go)
    return name


def key_and_id(server: Server, *bindings: str, org: str = "default") -> tuple[str, str]:
    async def go(admin: Admin) -> tuple[str, str]:
        the_org = await admin.tenancy.org(org)
        storage = await admin.storage.resolve_bindings(the_org, bindings)
        created = await admin.keys.create(
            org=the_org, sandbox=await admin.tenancy.sandbox(the_org, "default"), storage=storage
        )
        return created.secret, created.record.id

    return admin_call(server, go)


def key_for(server: Server, *bindings: str, org: str = "default") -> str:
    return key_and_id(server, *bindings, org=org)[0]


def cli_connect(server: Server, rig: BucketRig, bucket: str) -> str:
    """`storage create` and `storage test` through the real CLI, credentials on stdin."""
    name = unique(rig.kind)
    cli_ok(server, "storage", "create", name, "--type", rig.kind, "--bucket", bucket, "--endpoint", rig.endpoint,
           "--credentials-file", "-", input=credentials_of(rig, bucket))
    return name


@pytest.fixture
def sdk_for(server: Server) -> Iterator[Any]:
    clients: list[baponi.Baponi] = []

    def make(key: str) -> baponi.Baponi:
        client = baponi.Baponi(api_key=key, base_url=server.url)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def execute(server: Server, key: str, code: str, **fields: Any) -> dict[str, Any]:
    """The raw API answer (it has the trace id and error_message the SDK's result drops)."""
    r = httpx.post(server.url + EXECUTE, json={"code": code, **fields},
                   headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def bucket_mounts(server: Server) -> list[str]:
    root = str(server.settings.run_dir / "buckets") + "/"
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(root)]


def rclone_pids(server: Server) -> list[int]:
    root = str(server.settings.run_dir)
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(a.endswith(b"rclone") for a in argv[:3]) and any(a.decode(errors="replace").startswith(root) for a in argv):
                out.append(int(entry))
    return out


def wait_idle_release(server: Server) -> None:
    deadline = time.monotonic() + IDLE_S * 4 + 15
    while (bucket_mounts(server) or rclone_pids(server)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert bucket_mounts(server) == [] and rclone_pids(server) == []


# --- each provider ---------------------------------------------------------------------------


def test_sandbox_writes_land_in_the_bucket_and_objects_show_as_files(
    server: Server, bucket_rig: BucketRig, sdk_for: Any
) -> None:
    rig = bucket_rig
    bucket = rig.new_bucket()
    rig.put(bucket, "inbox/hello.txt", b"from the provider")
    name = connect(server, rig, bucket)
    sdk = sdk_for(key_for(server, name))
    code = (
        f"import os\n"
        f"print(open('/data/{name}/inbox/hello.txt').read())\n"
        f"os.makedirs('/data/{name}/out', exist_ok=True)\n"
        f"with open('/data/{name}/out/result.csv', 'w') as f: f.write('a,b\\n1,2\\n')\n"
        f"print(sorted(os.listdir('/data/{name}')))\n"
    )
    result = sdk.execute(code)
    assert result.success, (result.stdout, result.stderr, result.error)
    assert result.stdout.splitlines() == ["from the provider", "['inbox', 'out']"]
    assert rig.get(bucket, "out/result.csv") == b"a,b\n1,2\n"  # through the provider's API
    shown = json.loads(cli_ok(server, "storage", "show", name).stdout)
    assert shown["type"] == rig.kind and shown["bucket"] == bucket and shown["mounted_at"] == f"/data/{name}/"
    assert not any(secret in json.dumps(shown) for secret in rig.secrets)


def test_three_levels_of_scoping_show_exactly_the_intended_subtree(
    server: Server, bucket_rig: BucketRig, sdk_for: Any
) -> None:
    """Connection prefix `tenants/acme`, key prefix `team-a`, sub_paths `/data/<n>/reports`:
    the sandbox sees tenants/acme/team-a/reports and nothing above or beside it."""
    rig = bucket_rig
    bucket = rig.new_bucket()
    for key, data in {
        "top-secret.txt": b"bucket root",
        "tenants/other/x.txt": b"another tenant",
        "tenants/acme/admin.txt": b"connection level",
        "tenants/acme/team-a/notes.txt": b"key level",
        "tenants/acme/team-a/reports/r1.txt": b"report one",
        # what an rclone symlink would look like, pointing out of the prefix: a plain file here
        "tenants/acme/team-a/reports/escape.rclonelink": b"../../../../top-secret.txt",
    }.items():
        rig.put(bucket, key, data)
    name = connect(server, rig, bucket, prefix="tenants/acme")
    sdk = sdk_for(key_for(server, f"{name}:prefix=team-a"))
    code = (
        "import os, json\n"
        "def tryread(p):\n"
        "    try: return open(p).read()\n"
        "    except OSError as e: return type(e).__name__\n"
        f"base = '/data/{name}'\n"
        "print(json.dumps({\n"
        "  'data': sorted(set(os.listdir('/data')) - {'outputs'}),\n"
        "  'mount': sorted(os.listdir(base)),\n"
        "  'reports': sorted(os.listdir(base + '/reports')),\n"
        "  'r1': tryread(base + '/reports/r1.txt'),\n"
        "  'link': tryread(base + '/reports/escape.rclonelink'),\n"
        "  'islink': os.path.islink(base + '/reports/escape.rclonelink'),\n"
        "  'up1': tryread(base + '/reports/../notes.txt'),\n"
        "  'up2': tryread(base + '/../../admin.txt'),\n"
        "  'parent': sorted(set(os.listdir(base + '/..')) - {'outputs'}),\n"
        "}))\n"
    )
    result = sdk.execute(code, sub_paths=[f"/data/{name}/reports"])
    assert result.success, (result.stdout, result.stderr, result.error)
    seen = json.loads(result.stdout)
    assert seen["data"] == [name] and seen["mount"] == ["reports"] and seen["parent"] == [name]
    assert seen["reports"] == ["escape.rclonelink", "r1.txt"]
    assert seen["r1"] == "report one"
    assert seen["link"] == "../../../../top-secret.txt" and seen["islink"] is False  # never followed
    assert seen["up1"] == "FileNotFoundError" and seen["up2"] == "FileNotFoundError"
    # Without sub_paths the key sees its whole prefix, and still nothing of the connection's level.
    whole = sdk.execute(f"import os; print(sorted(os.listdir('/data/{name}')))")
    assert whole.stdout.strip() == "['notes.txt', 'reports']"


def test_credentials_are_nowhere_the_sandbox_logs_or_answers_show(
    server: Server, bucket_rig: BucketRig
) -> None:
    rig = bucket_rig
    bucket = rig.new_bucket()
    name = connect(server, rig, bucket)
    key = key_for(server, name)
    secrets_ = [s for s in rig.secrets if len(s) >= 8]
    assert secrets_
    # Everything a sandbox can read that could hold them: its env, every /proc file of every
    # process it sees (cmdline, environ, mountinfo, mounts), and the mount's own files.
    code = (
        "import os, glob\n"
        "blobs = [repr(dict(os.environ)).encode()]\n"
        "for p in glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ') + glob.glob('/proc/*/mountinfo') + ['/proc/mounts']:\n"
        "    try: blobs.append(open(p, 'rb').read())\n"
        "    except OSError: pass\n"
        "print(open('/proc/self/mountinfo').read())\n"
        "import sys; sys.stdout.flush()\n"
        "open('/tmp/all', 'wb').write(b'\\n'.join(blobs))\n"
        "print('BYTES', len(b''.join(blobs)))\n"
        f"print(sorted(os.listdir('/data/{name}')))\n"
    )
    answer = execute(server, key, code)
    assert answer["success"], answer
    code_check = (
        "import os, glob\n"
        f"secrets = {secrets_!r}\n"
        "blobs = [repr(dict(os.environ))]\n"
        "for p in glob.glob('/proc/*/cmdline') + glob.glob('/proc/*/environ') + glob.glob('/proc/*/mountinfo') + ['/proc/mounts']:\n"
        "    try: blobs.append(open(p, 'rb').read().decode('utf-8', 'replace'))\n"
        "    except OSError: pass\n"
        "text = '\\n'.join(blobs)\n"
        "print([s[:6] for s in secrets if s in text])\n"
    )
    checked = execute(server, key, code_check)
    assert checked["success"] and checked["stdout"].strip() == "[]", checked
    mountinfo = answer["stdout"]
    assert f"/data/{name}" in mountinfo and "fuse" in mountinfo
    for where, text in {
        "api answer": json.dumps(answer),
        "execution record": httpx.get(f"{server.url}/v1/executions/{answer['trace_id']}",
                                      headers={"Authorization": f"Bearer {key}"}, timeout=30).text,
        "storage list": cli_ok(server, "storage", "list").stdout,
        "storage show": cli_ok(server, "storage", "show", name).stdout,
        "server log": server.log_path.read_text(errors="replace"),
    }.items():
        for secret in secrets_:
            assert secret not in text, f"a credential is in the {where}"
    # At rest: sealed, not in the database in the clear.
    db = (server.data_dir / "sandboxd.db").read_bytes()
    for secret in secrets_:
        assert secret.encode() not in db


# --- bindings --------------------------------------------------------------------------------


def test_read_only_binding_and_read_only_connection_refuse_writes(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    s3_rig.put(bucket, "keep.txt", b"keep")
    writable = connect(server, s3_rig, bucket)
    locked = connect(server, s3_rig, bucket, read_only=True)
    code = (
        "import sys\n"
        "name = sys.argv[1] if len(sys.argv) > 1 else '{n}'\n"
        "print(open('/data/{n}/keep.txt').read())\n"
        "try:\n"
        "    open('/data/{n}/new.txt', 'w').write('x'); print('WROTE')\n"
        "except OSError as e: print(type(e).__name__, e.errno)\n"
    )
    for key, n in ((key_for(server, f"{writable}:ro"), writable), (key_for(server, locked), locked)):
        answer = execute(server, key, code.replace("{n}", n))
        assert answer["success"], answer
        lines = answer["stdout"].splitlines()
        assert lines[0] == "keep" and lines[1] == "OSError 30", lines  # EROFS
    assert s3_rig.keys(bucket) == ["keep.txt"]
    # The execution record says what was mounted, read-only.
    key = key_for(server, f"{writable}:ro")
    answer = execute(server, key, "print(1)")
    record = httpx.get(f"{server.url}/v1/executions/{answer['trace_id']}",
                       headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    assert record["storage"] == [
        {"name": writable, "type": "s3", "path": f"/data/{writable}", "read_only": True, "scope": ""}
    ]


def test_a_name_shared_with_a_volume_and_a_stray_binding_are_refused(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    name = connect(server, s3_rig, bucket)
    p = server.cli("volumes", "create", name)
    assert p.returncode != 0 and f"/data/{name}/" in p.stderr
    p = server.cli("keys", "create", "--storage", "nope")
    assert p.returncode != 0 and "no storage connection 'nope'" in p.stderr
    p = server.cli("keys", "create", "--storage", f"{name}:prefix=../x")
    assert p.returncode != 0 and "'..'" in p.stderr
    p = server.cli("keys", "create", "--storage", f"{name}:rwx")
    assert p.returncode != 0 and "NAME[:ro][:prefix=PATH]" in p.stderr


def test_another_organizations_key_sees_nothing_and_cannot_bind(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    name = connect(server, s3_rig, bucket)
    cli_ok(server, "orgs", "create", "bucket-other")
    p = server.cli("keys", "create", "--org", "bucket-other", "--storage", name)
    assert p.returncode != 0 and f"no storage connection {name!r}" in p.stderr
    other = key_for(server, org="bucket-other")
    answer = execute(server, other, "import os; print(sorted(set(os.listdir('/data')) - {'outputs'}))")
    assert answer["stdout"].strip() == "[]"
    r = httpx.post(server.url + EXECUTE, json={"code": "print(1)", "sub_paths": [f"/data/{name}/x"]},
                   headers={"Authorization": f"Bearer {other}"}, timeout=60)
    assert r.status_code == 400 and "(its mounts: none)" in r.json()["message"]


def test_sub_paths_outside_the_keys_mounts_are_a_400_naming_the_entry(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    name = connect(server, s3_rig, bucket)
    key = key_for(server, name)
    r = httpx.post(server.url + EXECUTE, json={"code": "print(1)", "sub_paths": [f"/data/{name}/ok", "/data/elsewhere/x"]},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"] == "validation_error"
    assert "'/data/elsewhere/x'" in r.json()["message"] and f"/data/{name}/" in r.json()["message"]


def test_a_missing_sub_path_is_made_when_writable_and_refused_when_read_only(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    name = connect(server, s3_rig, bucket)
    rw = key_for(server, name)
    answer = execute(server, rw, f"open('/data/{name}/new/dir/f.txt', 'w').write('x'); print('ok')",
                     sub_paths=[f"/data/{name}/new/dir"])
    assert answer["success"] and answer["stdout"] == "ok\n", answer
    assert s3_rig.keys(bucket) == ["new/dir/f.txt"]
    ro = key_for(server, f"{name}:ro")
    answer = execute(server, ro, "print(1)", sub_paths=[f"/data/{name}/absent"])
    assert answer["success"] is False and answer["error"] == "storage_mount_error" and answer["exit_code"] == -1
    assert f"'/data/{name}/absent' does not exist and the binding is read-only" in answer["error_message"]


# --- failures --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bad credentials", "missing bucket", "stopped server"])
def test_a_mount_that_fails_says_why_and_leaves_nothing(
    server: Server, bucket_rig: BucketRig, stopped_endpoint: str, case: str
) -> None:
    rig = bucket_rig
    if rig.kind == "gcs" and case == "missing bucket":
        pytest.skip("the GCS emulator answers a listing of a missing bucket with an empty list")
    bucket = rig.new_bucket()
    if case == "bad credentials":
        name = connect(server, rig, bucket, bad=True)
        words = "credentials"
    elif case == "missing bucket":
        name = connect(server, rig, "absent-" + bucket)
        words = "does not exist"
    else:
        endpoint = stopped_endpoint + ("/devstoreaccount1" if rig.kind == "azure" else "")
        name = connect(server, rig, bucket, endpoint=endpoint)
        words = "could not be reached"
    key = key_for(server, name)
    before = set(bucket_mounts(server)), set(rclone_pids(server))
    answer = execute(server, key, "print('ran')")
    assert answer["success"] is False and answer["error"] == "storage_mount_error", answer
    assert set(bucket_mounts(server)) <= before[0] and set(rclone_pids(server)) <= before[1]
    assert answer["exit_code"] == -1 and "ran" not in answer["stdout"]
    assert words in answer["error_message"], answer["error_message"]
    assert not any(s in answer["error_message"] for s in rig.secrets)
    if rig.kind == "s3":  # the same words from the CLI, which mounts without a server (each
        # provider's words through the same code: test_rclone.py)
        p = server.cli("storage", "test", name)
        assert p.returncode == 1 and words in p.stderr, p.stderr
    # The server goes on.
    ok = execute(server, key_for(server), "print(2)")
    assert ok["success"] and ok["stdout"] == "2\n"


def test_storage_test_mounts_lists_and_unmounts(server: Server, bucket_rig: BucketRig) -> None:
    bucket = bucket_rig.new_bucket()
    name = cli_connect(server, bucket_rig, bucket)
    p = cli_ok(server, "storage", "test", name)
    assert "mounted, listed and unmounted" in p.stdout
    work = server.settings.run_dir / "storage-tests"
    with open("/proc/self/mountinfo") as f:
        assert str(work) not in f.read()
    assert not work.exists() or list(work.iterdir()) == []


# --- lifecycle -------------------------------------------------------------------------------


def test_mounts_are_shared_then_released_when_idle(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    name = connect(server, s3_rig, bucket)
    key = key_for(server, name)
    wait_idle_release(server)  # other tests' mounts gone: what follows is this test's
    for i in range(3):
        answer = execute(server, key, f"open('/data/{name}/f{i}', 'w').write('x'); print('ok')")
        assert answer["success"], answer
    assert len(rclone_pids(server)) == 1 and len(bucket_mounts(server)) == 1  # one mount, reused
    wait_idle_release(server)  # storage_mount_idle_s=3
    assert s3_rig.keys(bucket) == ["f0", "f1", "f2"]  # uploaded before the unmount finished
    answer = execute(server, key, f"import os; print(sorted(os.listdir('/data/{name}')))")
    assert answer["stdout"] == "['f0', 'f1', 'f2']\n"  # mounted again on demand


def test_timeout_and_delete_leave_no_mount_behind(server: Server, s3_rig: BucketRig) -> None:
    bucket = s3_rig.new_bucket()
    name = connect(server, s3_rig, bucket)
    key, key_id = key_and_id(server, name)
    answer = execute(server, key, f"import time; open('/data/{name}/t', 'w').write('x'); time.sleep(30)", timeout=2)
    assert answer["error"] == "timeout"
    p = server.cli("storage", "delete", name)
    assert p.returncode != 0 and "bound to active API keys" in p.stderr and key_id in p.stderr
    cli_ok(server, "keys", "revoke", key_id)
    cli_ok(server, "storage", "delete", name)
    assert name not in cli_ok(server, "storage", "list").stdout
    wait_idle_release(server)  # the server's mount of it goes once idle
    assert s3_rig.keys(bucket) == ["t"]  # the bucket itself is untouched


def test_a_killed_server_takes_its_rclone_along_and_the_next_start_cleans_up(pool: Pool, s3_rig: BucketRig) -> None:
    srv = pool.start(storage_mount_idle_s=600)
    bucket = s3_rig.new_bucket()
    name = connect(srv, s3_rig, bucket)
    key = key_for(srv, name)
    assert execute(srv, key, f"open('/data/{name}/x', 'w').write('1'); print('ok')")["success"]
    pids = rclone_pids(srv)
    assert len(pids) == 1 and len(bucket_mounts(srv)) == 1
    os.kill(srv.proc.pid, signal.SIGKILL)
    srv.proc.wait()
    deadline = time.monotonic() + 10
    while rclone_pids(srv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rclone_pids(srv) == []  # pdeathsig: rclone died with the server
    again = pool.restart(srv.data_dir, storage_mount_idle_s=600)
    assert bucket_mounts(again) == []  # the dead FUSE mount was unmounted at start
    answer = execute(again, key, f"print(open('/data/{name}/x').read())")
    assert answer["stdout"] == "1\n", answer
