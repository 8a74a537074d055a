"""Warm per-thread sandboxes, end to end on real servers.

After a thread's run, the pool starts the thread's next sandbox (its uid, every layer and limit
applied, the interpreter waiting) with an empty slot at /home/baponi; the next run's working
copy is mounted on the slot at use time (runtime/homeslot.py). These tests check from the
outside that such a run is served warm and behaves exactly as a cold one: what the files API
did in between is seen, `pip install --user` packages import, the home has the same mount
flags, nothing of the previous run survives, idle threads' sandboxes retire, and no mount is
left behind.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import baponi
import httpx
import pytest
from _servers import EXECUTE, HTTP_TIMEOUT, Pool, api, db, pool, processes_of, unique
from conftest import Server

__all__ = ["pool"]  # a fixture, imported so pytest finds it here


@pytest.fixture(scope="module")
def wserver(pool: Pool) -> Server:
    return pool.start(auth_failures_allowed=100_000, metrics_enabled=True, pool_idle_s=600)


@pytest.fixture(scope="module")
async def key(wserver: Server) -> str:
    return await wserver.create_key()


@pytest.fixture(scope="module")
def sdk(wserver: Server, key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=key, base_url=wserver.url, timeout=HTTP_TIMEOUT) as client:
        yield client


async def ok(c: httpx.AsyncClient, code: str, *, language: str = "bash", **fields: Any) -> str:
    r = await c.post(EXECUTE, json={"code": code, "language": language, "timeout": 60, **fields})
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["success"] is True, result
    return result["stdout"]  # type: ignore[no-any-return]


def pool_hits(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    match = re.search(r'^sandboxd_pool_requests_total\{result="hit"\} (\S+)$', text, re.M)
    return float(match[1]) if match else 0.0


def uid_of(server: Server, thread_id: str) -> int:
    (row,) = db(server, "SELECT uid FROM threads WHERE thread_id = ? AND deleted_at IS NULL", thread_id)
    return int(row[0])


def slot_mounts(server: Server) -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount under the server's home slots."""
    prefix = str(server.settings.run_dir / "homes") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4].startswith(prefix):
                found.append((fields[4], fields[fields.index("-") + 1]))
    return found


async def wait_until(predicate: Any, timeout: float = 30, state: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {state() if state else ''}"
        await asyncio.sleep(0.1)


async def warmed(c: httpx.AsyncClient, server: Server, tid: str, code: str, **fields: Any) -> int:
    """Run `code` in the thread, then wait until the thread's next sandbox is up; its uid."""
    await ok(c, code, thread_id=tid, **fields)
    uid = uid_of(server, tid)
    await wait_until(lambda: len(processes_of(uid)) >= 3)  # bwrap, its init, the interpreter
    return uid


async def test_a_threads_next_run_is_served_by_its_waiting_sandbox(wserver: Server, key: str) -> None:
    tid = unique("warm")
    async with api(wserver, key) as c:
        # the next sandbox starts after the run: the thread's uid, an empty slot, no home in it
        uid = await warmed(c, wserver, tid, "echo 1 > ~/count")
        assert [fs for _, fs in slot_mounts(wserver)].count("btrfs") == 0
        for n in range(2, 5):
            before = pool_hits(wserver)
            assert await ok(c, "n=$(cat ~/count); echo $((n + 1)) > ~/count; cat ~/count", thread_id=tid) == f"{n}\n"
            assert pool_hits(wserver) == before + 1  # served warm
            await wait_until(lambda: len(processes_of(uid)) >= 3)


async def test_files_api_changes_between_runs_are_seen_by_the_warm_run(
    wserver: Server, key: str, sdk: baponi.Baponi
) -> None:
    tid = unique("files")
    async with api(wserver, key) as c:
        await warmed(c, wserver, tid, "echo old > ~/note.txt; echo keep > ~/gone.txt")
        signed = sdk.upload_url(path="note.txt", content_length=4, id=tid, content_type="text/plain")
        put = httpx.put(signed.url, content=b"new\n", headers={h.name: h.value for h in signed.headers}, timeout=30)
        assert put.status_code in (200, 201, 204), put.text
        gone = await c.request("DELETE", "/v1/files", json={"id": tid, "path": "gone.txt"})
        assert gone.status_code == 204, gone.text
        before = pool_hits(wserver)
        assert await ok(c, "cat ~/note.txt; ls ~", thread_id=tid) == "new\nnote.txt\n"
        assert pool_hits(wserver) == before + 1


async def test_user_site_packages_import_in_a_warm_run_as_in_a_cold_one(wserver: Server, key: str) -> None:
    tid = unique("site")
    site = "~/.local/lib/python3.11/site-packages"
    async with api(wserver, key) as c:
        write = f"import os\nos.makedirs(os.path.expanduser('{site}'))\nopen(os.path.expanduser('{site}/homemod.py'), 'w').write('NAME = \"from-home\"')"
        await warmed(c, wserver, tid, write, language="python")  # the next sandbox is a python one
        before = pool_hits(wserver)
        out = await ok(
            c,
            "import homemod, site, sys\n"
            "print(homemod.NAME)\n"
            "user = sys.path.index(site.getusersitepackages())\n"
            "system = min(sys.path.index(p) for p in site.getsitepackages() if p in sys.path)\n"
            "print(user < system)",
            language="python",
            thread_id=tid,
        )
        assert pool_hits(wserver) == before + 1
        assert out == "from-home\nTrue\n"


async def test_the_warm_home_is_mounted_as_the_cold_one(wserver: Server, key: str, pool: Pool) -> None:
    # the last mount at /home/baponi is the one the code sees (a warm run's slot is beneath it)
    probe = (
        "grep ' /home/baponi ' /proc/self/mountinfo | tail -1 | cut -d' ' -f6; "
        "stat -c '%u %a' ~; touch ~/w && echo writable"
    )
    tid = unique("flags")
    async with api(wserver, key) as c:
        first = await ok(c, probe, thread_id=tid)  # cold: the thread's first run
        await wait_until(lambda: len(processes_of(uid_of(wserver, tid))) >= 3)
        before = pool_hits(wserver)
        second = await ok(c, probe, thread_id=tid)
        assert pool_hits(wserver) == before + 1
    assert first == second
    options, owner, writable = second.splitlines()
    assert {"nosuid", "nodev", "rw"} <= set(options.split(",")), options
    assert (owner, writable) == ("1000 700", "writable")


async def test_nothing_of_the_previous_run_survives_into_the_warm_one(wserver: Server, key: str) -> None:
    tid = unique("leftover")
    async with api(wserver, key) as c:
        await warmed(
            c,
            wserver,
            tid,
            "nohup sleep 600 >/dev/null 2>&1 & echo x > /tmp/t; echo y > /dev/shm/s; export GONE=1",
            env_vars={"FIRST_RUN": "1"},
        )
        out = await ok(
            c,
            "ls -A /tmp /dev/shm /data/outputs; echo ${FIRST_RUN:-unset} ${GONE:-unset}; ps -e -o comm=",
            thread_id=tid,
        )
    lines = out.splitlines()
    assert lines[:6] == ["/data/outputs:", "", "/dev/shm:", "", "/tmp:", "unset unset"], out
    assert "sleep" not in lines[6:] and "ps" in lines[6:], out


async def test_an_idle_threads_sandbox_retires_and_leaves_no_mount(pool: Pool) -> None:
    server = pool.start(pool_idle_s=8)  # long enough for a loaded machine to start the sandbox
    key = await server.create_key()
    tid = unique("idle")
    async with api(server, key) as c:
        uid = await warmed(c, server, tid, "echo hi > ~/f")
        assert len(slot_mounts(server)) == 1  # the slot's own mount, nothing attached
        await wait_until(
            lambda: not processes_of(uid) and not slot_mounts(server),
            timeout=40,
            state=lambda: (processes_of(uid), slot_mounts(server)),
        )
        assert await ok(c, "cat ~/f", thread_id=tid) == "hi\n"  # cold again, same home
    server.stop()
    assert not slot_mounts(server)
    assert not (server.settings.run_dir / "homes").exists()


async def test_a_deleted_thread_is_never_served_by_its_old_sandbox(wserver: Server, key: str) -> None:
    tid = unique("deleted")
    async with api(wserver, key) as c:
        old_uid = await warmed(c, wserver, tid, "echo secret > ~/s")
        deleted = wserver.cli("threads", "delete", tid)
        assert deleted.returncode == 0, deleted.stderr
        out = await ok(c, "ls -A ~; id -u", thread_id=tid)
        assert out == "1000\n"  # a new, empty home
        assert uid_of(wserver, tid) != old_uid


async def test_a_crashed_server_leaves_slots_that_its_restart_removes(pool: Pool) -> None:
    server = pool.start()
    key = await server.create_key()
    tid = unique("crash")
    async with api(server, key) as c:
        await ok(c, "echo v1 > ~/state", thread_id=tid)
        await wait_until(lambda: len(slot_mounts(server)) == 1)
    server.proc.kill()
    server.proc.wait()
    assert slot_mounts(server)  # left by the crash
    restarted = pool.restart(server.data_dir)
    assert not slot_mounts(restarted)
    async with api(restarted, key) as c:
        assert await ok(c, "cat ~/state", thread_id=tid) == "v1\n"



async def test_back_to_back_runs_never_meet_a_sandbox_still_starting(wserver: Server, key: str) -> None:
    """The next run can come while the thread's next sandbox is still being built: it must wait
    for it to be up (or start cold), never mount the home into a half-built sandbox."""
    tid = unique("b2b")
    async with api(wserver, key) as c:
        for n in range(1, 31):
            await asyncio.sleep((n % 15) * 0.003)  # 0 to 42 ms: some runs land mid-start
            r = await c.post(
                EXECUTE, json={"code": "echo x >> ~/log; wc -l < ~/log", "language": "bash", "thread_id": tid}
            )
            result = r.json()
            assert (result["success"], result["stdout"], result["stderr"]) == (True, f"{n}\n", ""), result
