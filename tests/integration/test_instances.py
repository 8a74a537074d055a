"""Instances on one host (issue 12, items 1, 8, 10): operator commands beside a live server,
two servers, what a clean stop leaves, and what a SIGKILLed server leaves.

Every server here is the real `sandboxd serve` started as the quick start starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from _servers import EXECUTE, Pool, api, pool, unique  # noqa: F401
from conftest import Server, free_port, run_cli, uid_bases

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="real servers need root")


def sandbox_uids(server: Server) -> range:
    """The host uids of the server's sandboxes (conftest.uid_bases gave it 1,000 of its own)."""
    base = int(server.env["SANDBOXD_SANDBOX_UID_BASE"])
    return range(base, base + 1000)


def parents(server: Server) -> list[Path]:
    """The server's own cgroup parent in each hierarchy."""
    name = hashlib.sha256(server.settings.instance_id.encode()).hexdigest()[:12]
    return sorted(Path("/sys/fs/cgroup").glob(f"*/**/sandboxd/{name}"))


def instance_cgroups(server: Server) -> list[Path]:
    """Every directory of the server's instance (and of commands run beside it) in EVERY
    cgroup hierarchy mounted on this host, v1 and v2."""
    name = hashlib.sha256(server.settings.instance_id.encode()).hexdigest()[:12]
    root = Path("/sys/fs/cgroup")
    return sorted(
        {*root.glob(f"*/**/sandboxd/{name}*"), *root.glob(f"**/sandboxd-{name}*")}
    )


def live_procs(uids: range) -> list[int]:
    """Live (not zombie) processes whose real uid is in `uids`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = dict(line.split(":", 1) for line in (entry / "status").read_text().splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith(("Z", "X")):
                found.append(int(entry.name))
    return found


async def test_run_beside_a_live_server_takes_nothing_of_it(pool: Pool) -> None:
    """`sandboxd run --data-dir` while the server has a thread run and a stateless run in
    flight: both finish, and the server keeps serving both kinds; its cgroups, storage mount and
    home slots are all still there."""
    server = pool.start()
    key = await server.create_key()
    async with api(server, key) as c:
        thread = unique("t")
        assert (await c.post(EXECUTE, json={"code": "echo 1 > ~/n", "language": "bash", "thread_id": thread})).json()["success"]
        slow = "import time; print('start', flush=True); time.sleep(4); print('done')"
        in_flight = [
            asyncio.create_task(c.post(EXECUTE, json={"code": slow, "thread_id": thread})),
            asyncio.create_task(c.post(EXECUTE, json={"code": slow})),
        ]
        await asyncio.sleep(1.5)
        own = parents(server)
        assert own, "precondition: the server's cgroups are where this test looks"
        cli = await asyncio.to_thread(server.cli, "run", "--language", "bash", "echo beside; id -u", timeout=120)
        assert cli.returncode == 0, cli.stderr
        out = cli.stdout.split()
        assert out[0] == "beside"
        assert int(out[1]) not in sandbox_uids(server)  # a uid range of its own
        for task in in_flight:
            body = (await task).json()
            assert body["success"] is True and body["stdout"] == "start\ndone\n", body
        for parent in own:
            assert parent.is_dir(), f"the CLI removed the server's cgroup {parent}"
        with open("/proc/self/mountinfo") as f:
            points = {line.split()[4] for line in f}
        assert str(server.settings.storage_mount_point) in points, "the CLI unmounted the server's storage"
        assert (server.settings.run_dir / "homes").is_dir()
        # The server still serves, both kinds, and the thread kept its state.
        again = (await c.post(EXECUTE, json={"code": "cat ~/n", "language": "bash", "thread_id": thread})).json()
        assert again["success"] is True and again["stdout"] == "1\n", again
        assert (await c.post(EXECUTE, json={"code": "print(6 * 7)"})).json()["stdout"] == "42\n"
    assert httpx.get(f"{server.url}/ready").status_code == 200


def test_a_second_server_with_clashing_uids_refuses(pool: Pool) -> None:
    first = pool.start()
    taken = {k: int(first.env[f"SANDBOXD_{k.upper()}"]) for k in ("sandbox_uid_base", "thread_uid_base")}
    mine = uid_bases()
    with pytest.raises(RuntimeError) as refused:
        pool.start(sandbox_uid_base=taken["sandbox_uid_base"] + 3, thread_uid_base=mine["thread_uid_base"])
    assert "SANDBOXD_SANDBOX_UID_BASE" in str(refused.value), refused.value
    assert str(first.data_dir) in str(refused.value)
    with pytest.raises(RuntimeError) as refused:
        pool.start(sandbox_uid_base=mine["sandbox_uid_base"], thread_uid_base=taken["thread_uid_base"] + 10)
    assert "SANDBOXD_THREAD_UID_BASE" in str(refused.value), refused.value
    assert httpx.get(f"{first.url}/ready").status_code == 200  # the first one is untouched


def test_doctor_beside_a_live_server(pool: Pool) -> None:
    server = pool.start()
    port = int(server.url.rsplit(":", 1)[1])
    legacy = hashlib.sha256(b"sandboxd-doctor").hexdigest()[:12]  # where doctor used to put its own
    mine = lambda: {*instance_cgroups(server), *Path("/sys/fs/cgroup").glob(f"*/**/sandboxd/{legacy}")}  # noqa: E731
    before = mine()
    result = run_cli("doctor", "--data-dir", str(server.data_dir), "--port", str(port), timeout=120)
    port_line = next(line for line in result.stdout.splitlines() if line.split()[1:2] == ["port"])
    assert port_line.startswith("OK") and "a sandboxd server is running there" in port_line, result.stdout
    assert result.returncode == 0, result.stdout
    assert mine() <= before, "doctor left a cgroup behind"


async def test_a_clean_stop_leaves_no_cgroup_in_any_hierarchy(pool: Pool) -> None:
    """A process lingering in one hierarchy's copy of an execution's cgroup (here: put into the
    cpu copy only) once left that copy and the ones after it behind, silently."""
    server = pool.start(pool_enabled="false")
    key = await server.create_key()
    cpu_parent = next(p for p in parents(server) if "cpu" in p.parts[4].split(","))
    lingering = subprocess.Popen(["sleep", "1000"])
    try:
        async with api(server, key) as c:
            run = asyncio.create_task(c.post(EXECUTE, json={"code": "echo up; sleep 2", "language": "bash"}))
            deadline = time.monotonic() + 30
            while not (groups := [d for d in cpu_parent.iterdir() if d.is_dir()]):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            (groups[0] / "cgroup.procs").write_text(str(lingering.pid))
            await run
            assert (await c.post(EXECUTE, json={"code": "print(1)"})).json()["success"] is True
        assert instance_cgroups(server), "precondition: the server's cgroups are where this test looks"
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0
        assert instance_cgroups(server) == []
    finally:
        lingering.kill()
        lingering.wait()


def test_no_sandbox_outlives_a_killed_server(pool: Pool) -> None:
    """kill -9 while busy loops (timeout 6 s) run and more are starting (8 at once: some are
    between fork and bubblewrap's parent-death signal): every process of the server's
    sandboxes is gone within the bound, with no restart."""
    server = pool.start()
    uids = sandbox_uids(server)
    key = asyncio.run(server.create_key())
    body = json.dumps({"code": "while True: pass", "timeout": 6})
    clients = [
        subprocess.Popen(
            ["curl", "-s", "-m", "30", f"{server.url}{EXECUTE}", "-H", f"Authorization: Bearer {key}",
             "-H", "Content-Type: application/json", "-d", body],
            stdout=subprocess.DEVNULL,
        )
        for _ in range(8)
    ]
    try:
        deadline = time.monotonic() + 30
        while not live_procs(uids):
            assert time.monotonic() < deadline, "precondition: the busy loops run under the server's uids"
            time.sleep(0.01)
        time.sleep(0.5)  # some run, some start
        server.proc.kill()
        killed = time.monotonic()
        server.proc.wait()
        while live_procs(uids) and time.monotonic() - killed < 20:
            time.sleep(0.02)
        gone_after = time.monotonic() - killed
        left = live_procs(uids)
        print(f"sandbox processes gone {gone_after * 1000:.0f} ms after kill -9")
        assert left == [], f"{len(left)} sandbox processes outlived the server by {gone_after:.1f} s"
        assert gone_after < 5.0
    finally:
        for client in clients:
            client.kill()
            client.wait()
        for pid in live_procs(uids):  # only if the test failed: our own server's sandboxes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_server_on_a_data_dir_in_use_refuses(pool: Pool) -> None:
    first = pool.start()
    port = free_port()
    done = run_cli("serve", "--port", str(port), "--data-dir", str(first.data_dir), timeout=120)
    assert done.returncode == 1
    assert "already running on data dir" in done.stdout + done.stderr, done.stderr
    assert httpx.get(f"{first.url}/ready").status_code == 200
