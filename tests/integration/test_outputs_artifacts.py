"""Artifacts against a real server: files a run writes to /data/outputs are listed in its result
with signed URLs, download byte-identical without a key, and nothing of the outputs tmpfs stays
on the host. Pooled runs (the shared server) and cold ones (a server without a pool) alike."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import baponi
import httpx
import pytest

from sandboxd.service.keys import load_or_create_secret
from sandboxd.service.signing import Signer, files_signing_key

EXECUTE = "/v1/sandbox/execute"

WRITE_CSV = """
import csv, os
rows = [["n", "square"]] + [[i, i * i] for i in range(2000)]
with open("/data/outputs/table.csv", "w", newline="") as f:
    csv.writer(f).writerows(rows)
os.makedirs("/data/outputs/plots/2026")
open("/data/outputs/plots/2026/raw.bin", "wb").write(bytes(range(256)) * 40)
print("written")
"""


@pytest.fixture(scope="module")
def cold(server_factory: Any) -> Any:
    """A server that starts every sandbox cold (no pool), with a 1 MiB /data/outputs."""
    return server_factory(pool_enabled=False, outputs_size_mib=1, outputs_max_files=5)


@pytest.fixture(scope="module")
async def cold_key(cold: Any) -> str:
    return str(await cold.create_key())


@pytest.fixture(params=["pooled", "cold"])
def target(request: pytest.FixtureRequest, server: Any, api_key: str) -> Iterator[tuple[Any, str]]:
    """The shared server with a python sandbox waiting (the run is served by it: a pool hit),
    or the server without a pool."""
    if request.param == "cold":
        yield request.getfixturevalue("cold"), request.getfixturevalue("cold_key")
        return
    execute(server, api_key, "pass")
    deadline = time.monotonic() + 30
    while _waiting_sandboxes(server) < 1:
        assert time.monotonic() < deadline, "no sandbox was pre-spawned"
        time.sleep(0.05)
    hits = _pool_hits(server)
    yield server, api_key
    assert _pool_hits(server) > hits, "the run was not served by a pre-spawned sandbox"


def _pool_hits(server: Any) -> float:
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith('sandboxd_pool_requests_total{result="hit"}'))


@pytest.fixture
def blob() -> Iterator[httpx.Client]:
    """No Authorization at all: an artifact URL works on its own."""
    with httpx.Client(timeout=60) as c:
        yield c


def execute(server: Any, key: str, code: str, language: str = "python", **fields: Any) -> dict[str, Any]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        resp = c.post(EXECUTE, json={"code": code, "language": language, **fields})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def trace_of(server: Any) -> str:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        return str(db.execute("SELECT trace_id FROM executions ORDER BY created_at DESC LIMIT 1").fetchone()[0])


def outputs_left(server: Any) -> tuple[list[str], list[str]]:
    """Mounts and directories of sandboxes' /data/outputs still on the host."""
    root = server.settings.run_dir / "outputs"
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(root) + "/")]
    return mounts, [p.name for p in root.iterdir()] if root.is_dir() else []


def wait_no_outputs_left(server: Any) -> None:
    """Pre-spawned sandboxes (a pool refilling) and live persistent sessions (other modules'
    on the shared server) hold an outputs tmpfs each: compare with those alive, i.e. everything
    left must belong to a live waiting sandbox or a live session."""
    deadline = time.monotonic() + 10
    while True:
        mounts, dirs = outputs_left(server)
        waiting = _waiting_sandboxes(server) + _live_sessions(server)
        if len(mounts) <= waiting and len(dirs) <= waiting:
            return
        assert time.monotonic() < deadline, (mounts, dirs, waiting)
        time.sleep(0.1)


def _live_sessions(server: Any) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM thread_sessions WHERE state = 'live'").fetchone()[0])


def _waiting_sandboxes(server: Any) -> int:
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("sandboxd_pool_sandboxes{")))


def test_a_csv_is_listed_and_downloads_byte_identical(target: tuple[Any, str], blob: httpx.Client) -> None:
    server, key = target
    result = execute(server, key, WRITE_CSV)
    assert result["success"], result
    listed = {a["path"]: a for a in result["artifacts"]}
    assert set(listed) == {"table.csv", "plots/2026/raw.bin"}
    csv_bytes = b"n,square\r\n" + b"".join(b"%d,%d\r\n" % (i, i * i) for i in range(2000))
    assert listed["table.csv"]["size"] == len(csv_bytes)
    assert listed["plots/2026/raw.bin"]["size"] == 10240
    for artifact in listed.values():
        assert artifact["url"].startswith(server.url + "/v1/artifacts/trc_")
        assert artifact["expires_at"].endswith("Z")
    got = blob.get(listed["table.csv"]["url"])
    assert got.status_code == 200, got.text
    assert got.content == csv_bytes
    assert got.headers["content-disposition"].startswith('attachment; filename="table.csv"')
    raw = blob.get(listed["plots/2026/raw.bin"]["url"])
    assert hashlib.sha256(raw.content).hexdigest() == hashlib.sha256(bytes(range(256)) * 40).hexdigest()
    # kept on the host as root's, 0600
    trace_id = urlsplit(listed["table.csv"]["url"]).path.split("/")[3]
    kept = [p for p in (server.data_dir / "artifacts").glob(f"*/{trace_id}/table.csv")]
    assert len(kept) == 1 and kept[0].stat().st_uid == 0 and kept[0].stat().st_mode & 0o777 == 0o600
    wait_no_outputs_left(server)


def test_the_listing_is_in_every_result_shape(server: Any, api_key: str) -> None:
    result = execute(server, api_key, "open('/data/outputs/a.txt', 'w').write('hello')")
    trace_id = trace_of(server)
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as c:
        stored = c.get(f"/v1/executions/{trace_id}").json()
        streamed = [line for line in c.post(
            EXECUTE, json={"code": "open('/data/outputs/b.txt', 'w').write('hi')", "language": "python"},
            headers={"Accept": "application/x-ndjson"},
        ).text.splitlines() if '"result"' in line]
    assert [a["path"] for a in result["artifacts"]] == ["a.txt"]
    assert "a.txt" in str(stored)
    assert '"b.txt"' in streamed[-1]


def test_the_sdk_still_parses_a_result_with_artifacts(server: Any, api_key: str) -> None:
    with baponi.Baponi(api_key=api_key, base_url=server.url, timeout=120) as sdk:
        result = sdk.execute("echo x > /data/outputs/x.txt; ls /data/outputs", language="bash")
    assert result.success and result.stdout == "x.txt\n"


def test_tampered_and_expired_urls_are_refused(server: Any, api_key: str, blob: httpx.Client) -> None:
    result = execute(server, api_key, "open('/data/outputs/secret.txt', 'w').write('s3cret')")
    url = result["artifacts"][0]["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{server.url}{parts.path}"
    trace_id = parts.path.split("/")[3]

    def refused(resp: httpx.Response) -> None:
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"] == "forbidden"
        assert b"s3cret" not in resp.content

    sig = query["signature"]
    refused(blob.get(base, params={**query, "signature": sig[:-1] + ("A" if sig[-1] != "A" else "B")}))
    refused(blob.get(base, params={**query, "expires": str(int(query["expires"]) + 1)}))
    refused(blob.get(base.replace("secret.txt", "other.txt"), params=query))
    refused(blob.get(base, params={**query, "signature": "x" * 43}))
    assert blob.get(base, params={"expires": query["expires"]}).status_code == 400  # no signature
    # a genuine signature (the server's own key) that has expired
    signer = Signer(files_signing_key(load_or_create_secret(server.data_dir)))
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        (org_id,) = db.execute("SELECT org_id FROM executions WHERE trace_id = ?", (trace_id,)).fetchone()
    past = int(time.time()) - 1
    refused(blob.get(base, params={"expires": past,
                                   "signature": signer.artifact_signature(org_id, trace_id, "secret.txt", past)}))
    # another execution's trace id with this signature: refused too
    other = execute(server, api_key, "open('/data/outputs/secret.txt', 'w').write('other')")
    other_trace = urlsplit(other["artifacts"][0]["url"]).path.split("/")[3]
    refused(blob.get(base.replace(trace_id, other_trace), params=query))
    assert blob.get(url).content == b"s3cret"  # the URL as listed works
    assert blob.get(f"{server.url}/v1/artifacts/trc_nonexistent1/secret.txt", params=query).status_code == 404


def test_links_and_fifos_are_not_followed(target: tuple[Any, str], blob: httpx.Client) -> None:
    server, key = target
    result = execute(server, key, (
        "ln -s /etc/passwd /data/outputs/passwd; ln -s /etc /data/outputs/etc; mkfifo /data/outputs/fifo; "
        "ln -s /proc/self/root /data/outputs/root; echo ok > /data/outputs/real.txt"
    ), "bash")
    assert result["success"], result
    assert [a["path"] for a in result["artifacts"]] == ["real.txt"]
    assert not list((server.data_dir / "artifacts").glob("*/*/passwd"))
    assert blob.get(result["artifacts"][0]["url"]).content == b"ok\n"


def test_the_size_cap_holds_and_the_result_still_comes(cold: Any, cold_key: str) -> None:
    result = execute(cold, cold_key, (
        "import errno\n"
        "try:\n"
        "    open('/data/outputs/big', 'wb').write(b'x' * (2 << 20))\n"
        "except OSError as e:\n"
        "    print(errno.errorcode[e.errno])\n"
        "for i in range(20):\n"
        "    try:\n"
        "        open(f'/data/outputs/f{i:02}', 'w').close()\n"
        "    except OSError as e:\n"
        "        print(i, errno.errorcode[e.errno]); break\n"
    ))
    assert result["stdout"].splitlines()[0] == "ENOSPC"
    assert result["success"], result
    sizes = {a["path"]: a["size"] for a in result["artifacts"]}
    assert 0 < sizes["big"] <= 1 << 20
    assert len(sizes) == 5  # outputs_max_files; the rest are named in a note
    assert any("not kept as artifacts" in note for note in result["notes"]), result["notes"]
    wait_no_outputs_left(cold)


def test_a_volume_or_storage_connection_cannot_be_named_outputs(server: Any) -> None:
    made = server.cli("volumes", "create", "outputs")
    assert made.returncode != 0 and "reserved" in (made.stdout + made.stderr), made


def test_nothing_is_left_on_the_host(server: Any, api_key: str) -> None:
    for _ in range(3):
        execute(server, api_key, "open('/data/outputs/x', 'w').write('x' * 1000)")
    timed_out = execute(server, api_key, "import time; open('/data/outputs/y', 'w').write('y'); time.sleep(60)",
                        timeout=1)
    assert timed_out["error"] == "timeout" and [a["path"] for a in timed_out["artifacts"]] == ["y"]
    wait_no_outputs_left(server)
    mounts, _ = outputs_left(server)
    assert all(Path(m).parent == server.settings.run_dir / "outputs" for m in mounts)


@pytest.mark.skipif(
    not (Path("/usr/sbin/mkfs.btrfs").exists() or Path("/usr/bin/mkfs.btrfs").exists()),
    reason="threads need btrfs-progs",
)
def test_a_threads_runs_keep_artifacts_apart_and_outputs_do_not_persist(
    server: Any, api_key: str, blob: httpx.Client
) -> None:
    """A thread's second run is served by its warm sandbox (its own uid): it gets an empty
    /data/outputs (only /home/baponi persists) and its own artifacts."""
    thread = f"art-{time.time_ns()}"
    first = execute(server, api_key, "echo one > /data/outputs/run.txt", "bash", thread_id=thread)
    time.sleep(0.5)  # the thread's next sandbox starts after its run
    second = execute(server, api_key, "ls /data/outputs; echo two > /data/outputs/run.txt", "bash",
                     thread_id=thread)
    assert first["success"] and second["success"], (first, second)
    assert second["stdout"] == ""  # nothing of the first run's outputs
    assert blob.get(first["artifacts"][0]["url"]).content == b"one\n"
    assert blob.get(second["artifacts"][0]["url"]).content == b"two\n"
    wait_no_outputs_left(server)


@pytest.mark.skipif(
    not (Path("/usr/sbin/mkfs.btrfs").exists() or Path("/usr/bin/mkfs.btrfs").exists()),
    reason="threads need btrfs-progs",
)
async def test_a_sessions_executions_each_list_what_is_new_in_outputs(server: Any, blob: httpx.Client) -> None:
    """A persistent session keeps its sandbox, so its /data/outputs too: each execution lists
    only the files it added or changed (runtime/outputs.py `collect` with the session's `seen`)."""
    key = await server.create_key(sandbox="artifacts-repl", session="persistent", memory_mib=256)
    thread = f"art-s-{time.time_ns()}"
    cells = [
        "open('/data/outputs/a.txt', 'w').write('a1'); x = 1",
        "open('/data/outputs/b.txt', 'w').write('b1'); print(x)",
        "open('/data/outputs/a.txt', 'w').write('a2, longer'); print(x + 1)",
        "print(sorted(__import__('os').listdir('/data/outputs')))",
    ]
    results = [execute(server, key, code, thread_id=thread) for code in cells]
    assert [r["success"] for r in results] == [True] * 4, results
    assert results[1]["session"]["state"] == "kept", results[1]
    assert [[a["path"] for a in r["artifacts"]] for r in results] == [["a.txt"], ["b.txt"], ["a.txt"], []]
    assert results[3]["stdout"] == "['a.txt', 'b.txt']\n"
    assert blob.get(results[0]["artifacts"][0]["url"]).content == b"a1"  # each execution's own copy
    assert blob.get(results[2]["artifacts"][0]["url"]).content == b"a2, longer"


async def test_mcp_execute_links_each_artifact(server: Any, api_key: str, blob: httpx.Client) -> None:
    """Through the official MCP client: an artifact is a resource link to its signed URL (on the
    URL the client reached the server at), and that URL downloads it."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {api_key}"}, timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode="legacy") as c:
        result = await c.call_tool("sandbox_execute", {
            "code": "open('/data/outputs/report.csv', 'w').write('a,b\\n1,2\\n')", "language": "python",
        })
    assert result.is_error is False
    [link] = [block for block in result.content if block.type == "resource_link"]
    assert link.name == "report.csv" and link.size == 8
    assert str(link.uri).startswith(server.url + "/v1/artifacts/trc_")
    assert blob.get(str(link.uri)).content == b"a,b\n1,2\n"
    assert "report.csv (8 bytes)" in result.content[0].text
