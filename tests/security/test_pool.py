"""Pre-spawned sandboxes hold the same line as cold ones, and leave nothing behind.

Two real runners side by side: one cold, one pooled. The differential tests run the same
program both ways (a fresh pooled sandbox each time, through `spawn_ready` + `serve`, the exact
fast path) and compare what the code saw; the pool tests drive the pool itself (sizing, config
keys, idle shrink, close) and then look at the host for leftovers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from sandboxd.runtime import (
    BwrapRunner, ExecResult, ExecStatus, Limits, PooledRunner, PoolSettings, SandboxSpec, create_runner,
)
from sandboxd.runtime.pool import WarmPool, key_of

from .hostprobe import instance_hash, remove_instance_parents, uid_procs

COLD_UID, POOL_UID, SLOTS = 330_000, 331_000, 12
#: Two threads' own uids (a thread's runs all run as its uid, cold or warm).
THREAD_UID, OTHER_THREAD_UID = 332_000, 332_001


@pytest.fixture(scope="module")
async def runners() -> AsyncIterator[tuple[BwrapRunner, PooledRunner, WarmPool]]:
    keys = [tempfile.mkdtemp(prefix="sandboxd-pool-") for _ in range(2)]
    cold = create_runner(instance_key=keys[0], uid_base=COLD_UID, slots=SLOTS)
    hot = PooledRunner(
        create_runner(instance_key=keys[1], uid_base=POOL_UID, slots=SLOTS),
        PoolSettings(max_per_key=2, max_total=4, idle_s=3600),
        home_slots=_run_dir(keys[1]) / "homes",
    )
    try:
        yield cold, hot, hot.pool
    finally:
        await cold.close()
        await hot.close()
        assert not _run_dir(keys[1]).exists()  # the slots and their root mount are gone
        assert not list(Path("/sys/fs/cgroup/memory").glob(f"**/sandboxd/{instance_hash(keys[1])}"))
        for key in keys:
            remove_instance_parents(instance_hash(key))
            shutil.rmtree(key, ignore_errors=True)


def _run_dir(key: str) -> Path:
    return Path("/run/sandboxd") / instance_hash(key)


@pytest.fixture
def homes() -> Iterator[Callable[[int], Path]]:
    """Fresh thread homes (host dirs owned by the thread's uid, as thread storage makes them),
    on a filesystem mounted `noatime` as the thread storage is."""
    root = Path(tempfile.mkdtemp(prefix="sandboxd-thread-homes-", dir="/run"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noatime,mode=0711,size=64m", "tmpfs", str(root)], check=True)

    def make(uid: int) -> Path:
        home = Path(tempfile.mkdtemp(dir=root))
        (home / "kept.txt").write_text("from an earlier run\n")
        for path in (home, home / "kept.txt"):
            os.chown(path, uid, uid)
        os.chmod(home, 0o700)
        return home

    try:
        yield make
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)
        root.rmdir()


def for_thread(s: SandboxSpec, home: Path, uid: int = THREAD_UID) -> SandboxSpec:
    return replace(s, home=str(home), host_uid=uid)


async def warm_thread(hot: PooledRunner, pool: WarmPool, s: SandboxSpec) -> ExecResult:
    """A thread's run the fast way: its sandbox started first, the home mounted at use time."""
    entry = await pool.spawn_ready(s)
    assert entry.home_slot is not None
    return await hot.serve(entry, s)


def spec(code: str, language: str = "python", **limits: object) -> SandboxSpec:
    return SandboxSpec(
        language=language,  # type: ignore[arg-type]
        code=textwrap.dedent(code).encode(),
        limits=Limits(**{"timeout_s": 20.0, **limits}),  # type: ignore[arg-type]
        env={"GREETING": "hëllo wörld", "EMPTY": "", "MULTI": "a\nb=c"},
    )


async def pooled(hot: PooledRunner, pool: WarmPool, s: SandboxSpec) -> ExecResult:
    entry = await pool.spawn_ready(s)
    return await hot.serve(entry, s)


# --- the same program, cold and pooled ---------------------------------------------------------

PROGRAMS = {
    "python-env-argv-stdin": ("python", """
        import os, sys
        print(sorted((k, v) for k, v in os.environ.items()))
        print(sys.argv, __name__, os.getcwd(), sys.path[0], repr(sys.stdin.read()))
        print(sorted(os.listdir('/proc/self/fd')))
        """),
    "python-exit-code": ("python", "import sys; print('bye'); sys.exit(7)"),
    "python-traceback": ("python", "def f():\n    return 1 / 0\nf()\n"),
    "python-syntax-error": ("python", "print('a'\n"),
    "python-main-guard-and-globals": ("python", """
        x = 1
        if __name__ == '__main__':
            print(sorted(k for k in globals() if not k.startswith('__')), __doc__, __package__)
        """),
    "node-env-argv": ("node", """
        console.log(JSON.stringify(Object.entries(process.env).sort()));
        console.log(process.argv.slice(1), require.main === module, __filename, process.cwd());
        console.log(require('fs').readdirSync('/proc/self/fd').length);
        """),
    "node-exit-code": ("node", "console.log('bye'); process.exit(9)"),
    "node-stdin": ("node", "console.log(JSON.stringify(require('fs').readFileSync(0, 'utf8')))"),
    "bash-env-argv-stdin": ("bash", """
        env | LC_ALL=C sort
        echo "$0" "$#" "$(pwd)" "[$(cat)]"
        ls /proc/self/fd | wc -l
        exit 3
        """),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
async def test_pooled_and_cold_runs_see_the_same_world(runners, name: str) -> None:  # type: ignore[no-untyped-def]
    cold, hot, pool = runners
    language, code = PROGRAMS[name]
    s = spec(code, language)
    a, b = await cold.run(s), await pooled(hot, pool, s)
    assert (b.status, b.exit_code, b.stdout) == (a.status, a.exit_code, a.stdout), (a, b)
    if name != "node-exit-code":  # node's stack traces end in one stub frame (documented)
        assert b.stderr == a.stderr


async def test_two_pooled_runs_share_nothing(runners) -> None:  # type: ignore[no-untyped-def]
    _, hot, pool = runners
    # Both exist at once, so their namespace ids cannot be a freed one handed out again.
    first_spec = spec("""
        import os, subprocess
        for d in ('/tmp', '/data', '/home/baponi', '/dev/shm'):
            open(f'{d}/left-behind', 'w').write('x')
        os.environ['LEAK'] = 'x'
        subprocess.Popen(['sleep', '300'], start_new_session=True)
        print(os.readlink('/proc/self/ns/pid'), os.readlink('/proc/self/ns/mnt'), os.readlink('/proc/self/ns/net'))
        """)
    second_spec = spec("""
        import os
        print(os.readlink('/proc/self/ns/pid'), os.readlink('/proc/self/ns/mnt'), os.readlink('/proc/self/ns/net'))
        print([d for d in ('/tmp', '/data', '/home/baponi', '/dev/shm') if os.path.exists(f'{d}/left-behind')])
        print(os.environ.get('LEAK'), sorted(p for p in os.listdir('/proc') if p.isdigit()))
        """)
    boxes = [await pool.spawn_ready(first_spec), await pool.spawn_ready(second_spec)]
    first = await hot.serve(boxes[0], first_spec)
    second = await hot.serve(boxes[1], second_spec)
    assert first.exit_code == 0 and second.exit_code == 0, (first, second)
    ns_first, (ns_second, files, rest) = first.stdout.split(b"\n")[0], second.stdout.split(b"\n")[:3]
    assert all(a != b for a, b in zip(ns_first.split(), ns_second.split()))
    assert files == b"[]"
    assert rest.startswith(b"None ['1', '") and rest.count(b"'") <= 4  # bwrap's init and the code only
    assert not [p for p in uid_procs(range(POOL_UID, POOL_UID + SLOTS)) if not p.zombie and p.name == "sleep"]


@pytest.mark.parametrize(
    ("code", "limits", "status", "error"),
    [
        ("x = bytearray(400 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096])", {"memory_mib": 128}, ExecStatus.OOM, "memory_limit_exceeded"),
        ("import time; time.sleep(30)", {"timeout_s": 1.0}, ExecStatus.TIMEOUT, "timeout"),
        ("import os\nwhile True:\n    os.fork()", {"pids_max": 32, "timeout_s": 5.0}, None, None),
        ("import socket; socket.create_connection(('127.0.0.1', 22), timeout=2)", {}, ExecStatus.FAILED, None),
        ("import ctypes; print(ctypes.CDLL(None).unshare(0x10000000))", {}, ExecStatus.SUCCESS, None),
    ],
    ids=["memory", "timeout", "pids", "network-none", "unshare-refused"],
)
async def test_limits_hold_on_the_pooled_path(runners, code: str, limits: dict, status, error) -> None:  # type: ignore[no-untyped-def]
    cold, hot, pool = runners
    s = spec(code, **limits)
    a, b = await cold.run(s), await pooled(hot, pool, s)
    assert (b.status, b.error) == (a.status, a.error), (a, b)
    if status is not None:
        assert b.status is status and b.error == error
    if "unshare" in code:
        assert b.stdout.strip() == a.stdout.strip() == b"-1"


async def test_the_timeout_counts_from_the_request_not_the_spawn(runners) -> None:  # type: ignore[no-untyped-def]
    _, hot, pool = runners
    s = spec("import time; time.sleep(0.5); print('done')", timeout_s=1.5)
    entry = await pool.spawn_ready(s)
    await asyncio.sleep(2.0)  # longer than the timeout, spent waiting in the pool
    result = await hot.serve(entry, s)
    assert result.status is ExecStatus.SUCCESS and result.stdout == b"done\n", result


async def test_a_config_change_is_never_served_an_old_sandbox(runners) -> None:  # type: ignore[no-untyped-def]
    _, hot, pool = runners
    small = spec("print(1)", memory_mib=128)
    big = replace(small, limits=replace(small.limits, memory_mib=512))
    assert key_of(small) != key_of(big)
    await hot.run(small)  # a miss: fills the 128 MiB pool
    await _until(lambda: pool.sizes().get("python", 0) >= 1)
    assert pool.take(big) is None  # the 128 MiB sandboxes are not for this config
    result = await hot.run(replace(big, code=b"x = bytearray(300 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); print('ok')"))
    assert result.stdout == b"ok\n", result


async def test_pool_grows_with_demand_and_serves_hits(runners) -> None:  # type: ignore[no-untyped-def]
    _, hot, pool = runners
    s = spec("print(2)", memory_mib=256)
    for _ in range(4):
        assert (await hot.run(s)).exit_code == 0
        await asyncio.sleep(0.3)
    hits = pool.hits
    assert (await hot.run(s)).exit_code == 0
    assert pool.hits == hits + 1
    assert pool.size <= 4  # max_total


async def test_idle_pools_shrink_to_zero_and_leave_nothing(runners) -> None:  # type: ignore[no-untyped-def]
    _, hot, _ = runners
    hot = PooledRunner(hot.cold, PoolSettings(max_per_key=2, max_total=4, idle_s=0.5))
    pool = hot.pool
    s = spec("print(3)", "node")
    await hot.run(s)
    await _until(lambda: pool.size >= 1)
    uids = {entry.box.uid for slot in pool._slots.values() for entry in slot.entries}
    await asyncio.sleep(0.6)
    await pool.shrink()
    assert pool.size == 0
    assert not [p for uid in uids for p in uid_procs(range(uid, uid + 1))]
    await pool.close()


async def _until(condition, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_closing_the_pool_leaves_nothing(runners) -> None:  # type: ignore[no-untyped-def]
    _, hot, _ = runners
    hot = PooledRunner(hot.cold, PoolSettings(max_per_key=2, max_total=4))
    pool = hot.pool
    for language in ("python", "node", "bash"):
        await hot.run(spec("true" if language == "bash" else "1", language))
    await _until(lambda: pool.size >= 3)
    uids = {entry.box.uid for slot in pool._slots.values() for entry in slot.entries}
    await pool.close()
    assert pool.size == 0 and not [p for uid in uids for p in uid_procs(range(uid, uid + 1))]


# --- a thread's warm sandbox -------------------------------------------------------------------

HOME_PROBE = """
    import os
    print(os.getuid(), os.getgid(), sorted(os.listdir('/home/baponi')), open('/home/baponi/kept.txt').read())
    mounts = [line.split() for line in open('/proc/self/mountinfo') if line.split()[4] == '/home/baponi']
    print(mounts[-1][5])  # the mount the code sees: its options
    open('/home/baponi/written.txt', 'w').write('w')
    for line in open('/proc/self/status'):
        if line.startswith(('CapEff', 'CapBnd', 'NoNewPrivs', 'Seccomp:')):
            print(line.strip())
    """


@pytest.mark.parametrize("name", sorted({**PROGRAMS, "home": ("python", HOME_PROBE)}))
async def test_warm_and_cold_thread_runs_see_the_same_world(runners, homes, name: str) -> None:  # type: ignore[no-untyped-def]
    cold, hot, pool = runners
    language, code = {**PROGRAMS, "home": ("python", HOME_PROBE)}[name]
    cold_home, warm_home = homes(THREAD_UID), homes(THREAD_UID)
    a = await cold.run(for_thread(spec(code, language), cold_home))
    b = await warm_thread(hot, pool, for_thread(spec(code, language), warm_home))
    assert (b.status, b.exit_code, b.stdout) == (a.status, a.exit_code, a.stdout), (a, b)
    if name != "node-exit-code":  # node's stack traces end in one stub frame (documented)
        assert b.stderr == a.stderr
    if name == "home":
        assert b.stdout.splitlines()[2].split(b",")[:3] == [b"rw", b"nosuid", b"nodev"]
        assert (warm_home / "written.txt").read_text() == "w"  # the write reached the thread's home
        assert (warm_home / "written.txt").stat().st_uid == THREAD_UID


@pytest.mark.parametrize(
    ("code", "limits"),
    [
        ("x = bytearray(400 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096])", {"memory_mib": 128}),
        ("import time; time.sleep(30)", {"timeout_s": 1.0}),
        ("import os\nwhile True:\n    os.fork()", {"pids_max": 32, "timeout_s": 5.0}),
        ("import ctypes; print(ctypes.CDLL(None).umount2(b'/home/baponi', 2), ctypes.get_errno())", {}),
        ("import os; print(os.listdir('/run'), os.path.exists('/run/sandboxd/homes'))", {}),
    ],
    ids=["memory", "timeout", "pids", "umount-home", "slots-invisible"],
)
async def test_limits_hold_on_the_warm_thread_path(runners, homes, code: str, limits: dict) -> None:  # type: ignore[no-untyped-def]
    cold, hot, pool = runners
    a = await cold.run(for_thread(spec(code, **limits), homes(THREAD_UID)))
    b = await warm_thread(hot, pool, for_thread(spec(code, **limits), homes(THREAD_UID)))
    assert (b.status, b.error, b.stdout) == (a.status, a.error, a.stdout), (a, b)
    assert a.status is not ExecStatus.SUCCESS or b"-1" in a.stdout or b"False" in a.stdout


async def test_a_threads_waiting_sandbox_serves_only_that_thread(runners, homes) -> None:  # type: ignore[no-untyped-def]
    _, hot, pool = runners
    mine = for_thread(spec("import os; print(os.listdir('/home/baponi'))"), homes(THREAD_UID))
    theirs = for_thread(spec("print(1)"), homes(OTHER_THREAD_UID), uid=OTHER_THREAD_UID)
    assert key_of(mine) is None  # without home slots a thread's run is never pooled
    assert key_of(mine, threads=True) != key_of(theirs, threads=True)
    await hot.run(mine)  # a miss: the thread's next sandbox starts
    key = key_of(mine, threads=True)
    await _until(lambda: key in pool._slots and len(pool._slots[key].entries) == 1)
    assert pool.take(theirs) is None
    entry = pool.take(mine)
    assert entry is not None and entry.box.uid == THREAD_UID and entry.home_slot is not None
    result = await hot.serve(entry, mine)
    assert result.stdout == b"['kept.txt']\n", result
    assert not entry.home_slot.exists()  # unmounted and removed with its sandbox


async def test_a_run_meeting_its_threads_sandbox_mid_start_waits_for_it(runners, homes) -> None:  # type: ignore[no-untyped-def]
    """The home is mounted on the slot only once bubblewrap has finished building the sandbox
    (its stub signalled): mounted earlier, bubblewrap's own bind of the slot copies it along
    and fails. Here the run takes the sandbox the moment it is in the pool, still starting."""
    _, hot, pool = runners
    s = for_thread(spec("import os; print(sorted(os.listdir('/home/baponi')))"), homes(THREAD_UID))
    key = key_of(s, threads=True)
    assert pool.take(s) is None  # a miss: the thread's slot in the pool exists now
    pool.replenish(s)
    while not (key in pool._slots and pool._slots[key].entries):
        await asyncio.sleep(0)  # no sleep: take it as soon as it is there
    entry = pool._slots[key].entries[0]
    assert not entry.ready.done()  # bubblewrap is still at work
    attached_when_up = []
    slots = pool.home_slots
    attach = slots.attach
    slots.attach = lambda slot, home: (attached_when_up.append(entry.ready.done()), attach(slot, home))[1]
    try:
        hits = pool.hits
        result = await hot.run(s)
    finally:
        slots.attach = attach
    assert pool.hits == hits + 1 and attached_when_up == [True]
    assert (result.status, result.stdout, result.stderr) == (ExecStatus.SUCCESS, b"['kept.txt']\n", b""), result
