"""Whatever way an execution ends, nothing of it stays on the host.

After timeouts, OOM kills, crashes of the code, cancels, a cancelled caller and a crashed server:
no process with a sandbox host uid, no cgroup directory under the runner's instance parent, no
fd leaked into the server process, and the uid pool back to zero in use.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandboxd.errors import SandboxSetupError
from sandboxd.runtime import ExecStatus, create_runner

from .hostprobe import (
    CHILD_UID_BASE,
    CHILD_UID_RANGE,
    SLOTS,
    UID_BASE,
    Host,
    fd_count,
    instance_hash,
    read_status,
    remove_instance_parents,
    uid_procs,
)

# name -> (language, code, limit overrides, expected status, expected exit code or None)
ENDINGS = {
    "timeout": (
        "bash",
        "setsid sleep 1000 & (sleep 1000 &); sleep 1000",
        {"timeout_s": 1},
        ExecStatus.TIMEOUT,
        None,
    ),
    "oom": ("python", "x = b'x' * (512 << 20)", {"memory_mib": 64}, ExecStatus.OOM, 137),
    "segfault": ("python", "import ctypes; ctypes.string_at(0)", {}, ExecStatus.FAILED, 128 + 11),
    "abort": ("python", "import os; os.abort()", {}, ExecStatus.FAILED, 128 + 6),
    "kill_self": ("bash", "setsid sleep 1000 & kill -9 $$", {}, ExecStatus.FAILED, 128 + 9),
    "exit_with_children": (
        "bash",
        "setsid sleep 1000 & nohup sleep 1000 & exit 3",
        {},
        ExecStatus.FAILED,
        3,
    ),
    "node_crash": (
        "node",
        "setTimeout(() => {}, 100000); process.kill(process.pid, 'SIGSEGV')",
        {},
        ExecStatus.FAILED,
        128 + 11,
    ),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_nothing_left_after(run, host: Host, ending: str) -> None:
    language, code, limits, status, exit_code = ENDINGS[ending]
    fds = fd_count()
    result = await run(code, language, **limits)
    assert result.status is status, result
    if exit_code is not None:
        assert result.exit_code == exit_code, result
    if status is ExecStatus.OOM:
        assert result.error == "memory_limit_exceeded"
    elif status is ExecStatus.TIMEOUT:
        assert result.error == "timeout"
    else:
        assert result.error is None  # a crash of the code is a result, not an OOM or our error
    await host.assert_clean(fds)


async def _start(run, code: str, **kwargs):  # type: ignore[no-untyped-def]
    """Start an execution; return (task, cancel event) once it printed 'ready'."""
    ready = asyncio.Event()
    cancel = asyncio.Event()

    async def sink(stream: str, chunk: bytes) -> None:
        if b"ready" in chunk:
            ready.set()

    task = asyncio.ensure_future(run(code, "bash", cancel=cancel, sink=sink, **kwargs))
    await asyncio.wait_for(ready.wait(), 20)
    return task, cancel


async def test_nothing_left_after_cancel(run, host: Host) -> None:
    fds = fd_count()
    task, cancel = await _start(
        run, "setsid sleep 1000 & nohup sleep 1000 & echo ready; sleep 1000"
    )
    assert len([p for p in host.procs() if not p.zombie]) >= 4
    cancel.set()
    result = await task
    assert result.status is ExecStatus.CANCELLED and result.error == "cancelled", result
    assert result.duration_ms < 15_000
    await host.assert_clean(fds)


async def test_nothing_left_when_the_caller_is_cancelled(run, host: Host) -> None:
    """The request handler goes away (client disconnect, server shutdown): asyncio cancels run()."""
    fds = fd_count()
    task, _ = await _start(run, "setsid sleep 1000 & echo ready; sleep 1000")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await host.assert_clean(fds)


async def test_nothing_left_after_a_cancel_before_start(run, host: Host) -> None:
    fds = fd_count()
    cancel = asyncio.Event()
    cancel.set()
    result = await run("sleep 1000", "bash", cancel=cancel)
    assert result.status is ExecStatus.CANCELLED, result
    await host.assert_clean(fds)


async def test_one_host_uid_per_concurrent_execution_and_pool_bound(run, host: Host) -> None:
    fds = fd_count()
    started = [await _start(run, "echo ready; sleep 1000") for _ in range(SLOTS)]
    try:
        groups = host.execution_groups("pids")
        assert len(groups) == SLOTS
        uids = []
        for group in groups:
            members = {
                int(read_status(p)["Uid"].split()[0])
                for p in host.group_pids(group)
                if read_status(p)
            }  # type: ignore[index]
            assert len(members) == 1, members
            uids.append(members.pop())
        assert sorted(uids) == list(range(UID_BASE, UID_BASE + SLOTS))  # all distinct, none shared
        # A 17th concurrent execution is refused before anything is created for it.
        with pytest.raises(SandboxSetupError, match="uid"):
            await run("echo never", "bash")
        assert len(host.execution_groups("pids")) == SLOTS
    finally:
        for _, cancel in started:
            cancel.set()
        results = await asyncio.gather(*(task for task, _ in started))
    assert all(r.status is ExecStatus.CANCELLED for r in results)
    await host.assert_clean(fds)


CRASHING_SERVER = """
import asyncio, sys
from pathlib import Path
from sandboxd.runtime import Limits, SandboxSpec, create_runner

async def main():
    runner = create_runner(instance_key=sys.argv[1], uid_base={uid_base}, slots={slots},
                           outputs_dir=Path(sys.argv[2]))
    async def sink(stream, chunk):
        if b"ready" in chunk:
            print("sandbox-ready", flush=True)
    code = b"setsid sleep 1000 & (sleep 1000 &); nohup sleep 1000 >/dev/null 2>&1 & echo ready; sleep 1000"
    await runner.run(SandboxSpec(language="bash", code=code, limits=Limits(timeout_s=120)), sink=sink)

asyncio.run(main())
"""


async def reap_adopted_zombies(within_s: float = 5.0) -> None:
    """waitpid the zombie `bwrap` children this process adopted as a subreaper."""
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        adopted = [pid for task in os.listdir("/proc/self/task") for pid in _children(task)]
        zombies = [p for p in adopted if _is_zombie_bwrap(p)]
        for pid in zombies:
            os.waitpid(pid, os.WNOHANG)
        if not zombies and not any(_is_bwrap(p) for p in adopted):
            return
        await asyncio.sleep(0.05)


def _children(task: str) -> list[int]:
    try:
        with open(f"/proc/self/task/{task}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:  # the thread ended meanwhile
        return []


def _is_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() == "bwrap"
    except OSError:
        return False


def _is_zombie_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return "(bwrap)" in stat and stat.rsplit(")", 1)[1].split()[0] == "Z"


async def test_server_crash_kills_sandboxes_and_removes_their_cgroups(host: Host) -> None:
    """SIGKILL the server mid-execution: its keeper (runtime/keeper.py) kills every sandbox
    and removes their cgroups at once, with no restart; a restart then finds the lease free,
    and unmounts and removes the sandbox's /data/outputs tmpfs the crash left."""
    key = tempfile.mkdtemp(prefix="sandboxd-sec-crash-")
    instance = instance_hash(key)
    outputs = Path("/run/sandboxd") / f"sec-crash-{instance}" / "outputs"
    outputs_mounts = lambda: [  # noqa: E731
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(f"{outputs}/")
    ]
    cgroups = lambda: list(Path("/sys/fs/cgroup").glob(f"*/**/sandboxd/{instance}"))  # noqa: E731
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_SERVER.format(uid_base=CHILD_UID_BASE, slots=SLOTS),
        key,
        str(outputs),
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(server.stdout.readline(), 30)
        assert line == b"sandbox-ready\n"
        assert len([p for p in uid_procs(CHILD_UID_RANGE) if not p.zombie]) >= 5  # bwrap x2, bash, 3 sleeps
        assert [d for p in cgroups() for d in p.iterdir() if d.is_dir()], "precondition: where this test looks"
        assert len(outputs_mounts()) == 1, "precondition: the sandbox's /data/outputs"
        server.kill()
        assert await server.wait() == -signal.SIGKILL
        # The sandboxes' pid 1s are reparented to the nearest subreaper: this test process,
        # which hosts a runner itself. An init would reap them; here the test does.
        await reap_adopted_zombies()
        deadline = time.monotonic() + 5
        while [p for p in uid_procs(CHILD_UID_RANGE) if not p.zombie] or cgroups():
            assert time.monotonic() < deadline, (uid_procs(CHILD_UID_RANGE), cgroups())
            await asyncio.sleep(0.02)
        assert len(outputs_mounts()) == 1  # nothing unmounts it but the next start
        restarted = create_runner(instance_key=key, uid_base=CHILD_UID_BASE, slots=SLOTS, outputs_dir=outputs)
        assert outputs_mounts() == [] and list(outputs.iterdir()) == []
        await restarted.close()
        assert cgroups() == [] and not outputs.parent.exists()
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        remove_instance_parents(instance)
        os.rmdir(key)


# --------------------------------------------------------------------------- known bugs

async def test_timeouts_report_sigkill_exit_status(run, host: Host) -> None:
    """The runner ends a run by killing its cgroup and leaves reaping bwrap to asyncio.

    (Killing through Popen.kill() polls first, which could reap bwrap behind asyncio's back:
    asyncio then reported exit code 255 for about a third of timeouts under load.)
    """
    results = await asyncio.gather(
        *(run("import time; time.sleep(60)", timeout_s=0.5) for _ in range(8))
    )
    assert [r.status for r in results] == [ExecStatus.TIMEOUT] * 8
    assert [r.exit_code for r in results] == [137] * 8
    await host.assert_no_processes(zombie_grace=3.0)


ORPHAN_REAPER = """
import asyncio, ctypes, json, sys
from sandboxd.runtime import Limits, SandboxSpec, create_runner

PR_SET_CHILD_SUBREAPER = 36
assert ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0  # as PID 1 in a container

async def main():
    runner = create_runner(instance_key=sys.argv[1], uid_base={uid_base}, slots={slots})
    outcomes = []
    for _ in range(30):
        result = await runner.run(SandboxSpec(language="bash", code=b"echo ok",
                                              limits=Limits(pids_max=8, timeout_s=10)))
        outcomes.append(result.stdout.decode().strip() or result.stderr.decode().strip()[-80:])
    print(json.dumps(outcomes))

asyncio.run(main())
"""


async def test_executions_do_not_pile_up_zombies_on_the_server(host: Host) -> None:
    key = tempfile.mkdtemp(prefix="sandboxd-sec-reaper-")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            ORPHAN_REAPER.format(uid_base=CHILD_UID_BASE, slots=SLOTS),
            key,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err
        outcomes = json.loads(out)
        failures = [(i, o) for i, o in enumerate(outcomes) if o != "ok"]
        assert failures == [], f"first failure at run {failures[0][0]}: {failures[0][1]}"
    finally:
        await host.assert_no_processes()
        remove_instance_parents(instance_hash(key))
        os.rmdir(key)


# --------------------------------------------------------------------------- state between runs

LEAVE_STATE = """
import ctypes, json, os, socket, subprocess
libc = ctypes.CDLL(None, use_errno=True)
token = os.environ["TOKEN"]
for d in ("/tmp", "/dev/shm", "/data", "/home/baponi"):
    with open(f"{d}/{token}", "w") as f:
        f.write(token)
shm = libc.shmget(0x5EC0_0003, 4096, 0o1666)  # IPC_CREAT
sem = libc.semget(0x5EC0_0004, 1, 0o1666)
mq = libc.mq_open(b"/" + token.encode(), os.O_CREAT | os.O_RDWR, 0o666, None)
listener = socket.socket(socket.AF_UNIX)
listener.bind("\\0" + token)
listener.listen()
os.set_inheritable(listener.fileno(), True)
subprocess.Popen(["setsid", "sleep", "1000"], close_fds=False)
print(json.dumps({"shm": shm, "sem": sem, "mq": mq, "map": open("/proc/self/uid_map").read()}))
"""

FIND_STATE = """
import ctypes, errno, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
token = os.environ["TOKEN"]
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\\0" + token)
    abstract = "CONNECTED"
except OSError as e:
    abstract = errno.errorcode[e.errno]
print(json.dumps({
    "files": [d for d in ("/tmp", "/dev/shm", "/data", "/home/baponi") if os.path.exists(f"{d}/{token}")],
    "shm": libc.shmget(0x5EC0_0003, 0, 0), "sem": libc.semget(0x5EC0_0004, 0, 0),
    "mq": libc.mq_open(b"/" + token.encode(), os.O_RDONLY),
    "sysv_tables": [open(f"/proc/sysvipc/{t}").read().count("\\n") - 1 for t in ("shm", "sem", "msg")],
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "abstract": abstract,
    "map": open("/proc/self/uid_map").read(),
}))
"""


async def test_stateless_executions_share_nothing(run, host: Host, secret: str) -> None:
    """Two stateless runs in a row (the pool hands the second the same host uid): files, /tmp,
    /dev/shm, SysV and POSIX IPC, abstract sockets and processes of the first are all gone."""
    env = {"TOKEN": secret[-16:]}
    first = await run(LEAVE_STATE, env=env)
    assert first.status is ExecStatus.SUCCESS, first
    made = json.loads(first.stdout)
    assert made["shm"] >= 0 and made["sem"] >= 0 and made["mq"] >= 0  # the probe did create them
    await host.assert_no_processes()
    second = await run(FIND_STATE, env=env)
    assert second.status is ExecStatus.SUCCESS, second
    assert json.loads(second.stdout) == {
        "files": [], "shm": -1, "sem": -1, "mq": -1, "sysv_tables": [0, 0, 0],
        "procs": [1, 2], "abstract": "ECONNREFUSED", "map": made["map"],  # same host uid
    }



async def test_outputs_tmpfs_is_capped_and_gone_after_the_run(run, host: Host, tmp_path: Path) -> None:
    """/data/outputs is the sandbox's own tmpfs: writable by the sandbox user, full at its size
    (ENOSPC inside), copied out without following a link, and unmounted and removed with the
    sandbox whatever the ending (here a timeout, with a process still writing)."""
    fds = fd_count()
    code = (
        "id -u; stat -c '%U %a' /data/outputs; ln -s /etc/shadow /data/outputs/shadow; "
        "head -c 3M /dev/zero > /data/outputs/big; echo rc=$?; "
        "(while :; do echo x >> /data/outputs/log; done) & sleep 1000"
    )
    result = await run(code, "bash", timeout_s=3, outputs_size_mib=2, artifacts_dir=str(tmp_path / "kept"))
    assert result.status is ExecStatus.TIMEOUT, result
    out = result.stdout.decode()
    assert out.splitlines()[:3] == ["1000", "baponi 700", "rc=1"], out
    assert "No space left on device" in result.stderr.decode(), result
    kept = {a.path: a.size for a in result.artifacts}
    assert "shadow" not in kept and 0 < kept["big"] <= 2 << 20, kept
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(kept)
    await host.assert_clean(fds)


def test_a_server_start_removes_outputs_a_dead_run_left(tmp_path: Path) -> None:
    """`sandboxd run` mounts its sandboxes' /data/outputs under a root of its own
    (`outputs-run<pid>`); killed, it leaves them: the server's start removes them."""
    from sandboxd.runtime.outputs import Outputs

    dead = subprocess.Popen(["true"])
    dead.wait()
    base = Path("/run/sandboxd") / f"sec-{tmp_path.name[-12:]}"
    server, left = Outputs(base / "outputs"), Outputs(base / f"outputs-run{dead.pid}")
    alive = Outputs(base / f"outputs-run{os.getpid()}")
    try:
        path, fd = left.create(UID_BASE, UID_BASE, size_mib=1, max_files=4)
        os.close(fd)
        mine, fd = alive.create(UID_BASE, UID_BASE, size_mib=1, max_files=4)
        os.close(fd)
        assert server.recover_dead_siblings() == 1
        assert not left.root.exists()
        assert mine.is_dir() and str(mine) in Path("/proc/self/mountinfo").read_text()  # a live run's stays
    finally:
        for outputs in (left, alive, server):
            outputs.close()
    assert not base.exists()  # the last close took the (otherwise empty) run dir too
