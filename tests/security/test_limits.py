"""Resource exhaustion from inside a real sandbox: memory, processes, disk, files, CPU, output.

Each attack must hit its limit (and the limit must be the one named: the cgroup, the tmpfs size,
the rlimit) while the host stays usable. No tight timing asserts: the machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import pytest

from sandboxd.runtime import ExecStatus

from .hostprobe import Host

MIB = 1024 * 1024


async def test_memory_exhaustion_ends_as_oom(run, host: Host) -> None:
    result = await run("x = b'x' * (512 << 20)\nprint('allocated', len(x))", memory_mib=64)
    assert result.status is ExecStatus.OOM, result
    assert result.error == "memory_limit_exceeded"
    assert result.exit_code == 137 and b"allocated" not in result.stdout
    await host.assert_clean()


async def test_tmpfs_pages_count_against_the_memory_limit(run) -> None:
    """/data may hold 256 MiB, but what is written there is memory: 64 MiB ends the execution."""
    result = await run(
        """
        with open("/data/fill", "wb") as f:
            for _ in range(200):
                f.write(b"x" * (1 << 20))
        print("wrote 200 MiB")
    """,
        memory_mib=64,
        workdir_size_mib=256,
    )
    assert result.status is ExecStatus.OOM, result
    assert result.error == "memory_limit_exceeded"


async def test_cgroup_limits_are_applied(background, host: Host) -> None:  # type: ignore[no-untyped-def]
    async with background(
        "import time; print('ready', flush=True); time.sleep(60)",
        memory_mib=96,
        pids_max=32,
        cpus=0.5,
    ):
        [group] = host.execution_groups("memory")

        def read(controller: str, name: str) -> str:
            return (host.parents[controller] / group.name / name).read_text().strip()

        assert read("memory", "memory.limit_in_bytes") == str(96 * MIB)
        assert read("memory", "memory.memsw.limit_in_bytes") == str(96 * MIB)  # no escape into swap
        assert read("pids", "pids.max") == "32"
        assert int(read("cpu", "cpu.cfs_quota_us")) == int(read("cpu", "cpu.cfs_period_us")) // 2


async def test_fork_bomb_is_contained_and_host_stays_responsive(run, host: Host) -> None:
    await host.assert_no_processes()  # count only the bomb's processes
    pids_max, timeout_s = 64, 5.0
    bomb = asyncio.ensure_future(
        run(":(){ :|:& };:; sleep 60", "bash", pids_max=pids_max, timeout_s=timeout_s)
    )
    latencies: list[float] = []
    peak = refused = 0
    await asyncio.sleep(0.5)  # let it grow to the limit
    while not bomb.done() and len(latencies) < 40:
        started = time.perf_counter()
        true = await asyncio.create_subprocess_exec("/bin/true")
        assert await true.wait() == 0
        latencies.append(time.perf_counter() - started)
        peak = max(peak, len([p for p in host.procs() if not p.zombie]))
        for group in host.execution_groups("pids"):
            try:
                events = (group / "pids.events").read_text().split()
                refused = max(refused, int(events[events.index("max") + 1]))
            except (FileNotFoundError, ValueError):
                pass
        await asyncio.sleep(0.05)
    result = await bomb

    assert result.status is ExecStatus.TIMEOUT, result  # it never ended on its own
    assert refused > 0, "pids.max never refused a fork: the cgroup did not hold the bomb"
    assert 0 < peak <= pids_max, peak
    assert len(latencies) >= 10
    assert statistics.median(latencies) < 0.2, sorted(latencies)  # the host still spawns promptly
    assert result.duration_ms < (timeout_s + 15) * 1000
    await host.assert_clean()


@pytest.mark.parametrize(
    ("mount", "limit"),
    [
        ("/tmp", "tmp_size_mib"),
        ("/dev/shm", "tmp_size_mib"),
        ("/data", "workdir_size_mib"),
        ("/home/baponi", "home_size_mib"),
    ],
)
async def test_writable_tmpfs_is_size_limited(run, mount: str, limit: str) -> None:
    result = await run(
        f"""
        import errno, json
        written = 0
        try:
            with open("{mount}/fill", "wb") as f:
                for _ in range(32):
                    f.write(b"x" * (1 << 20))
                    f.flush()
                    written += 1
            outcome = "WROTE 32 MiB"
        except OSError as e:
            outcome = errno.errorcode[e.errno]
        print(json.dumps([outcome, written]))
    """,
        **{limit: 8},
    )
    outcome, written = json.loads(result.stdout)
    assert outcome == "ENOSPC", result
    assert written <= 8


async def test_file_size_rlimit_python(run) -> None:
    result = await run(
        """
        import errno, os
        try:
            with open("/data/big", "wb") as f:
                f.write(b"x" * (2 << 20))
            print("WROTE")
        except OSError as e:
            print(errno.errorcode[e.errno], os.path.getsize("/data/big"))
    """,
        file_size_mib=1,
    )
    assert result.stdout.split() == [b"EFBIG", str(MIB).encode()], result  # Python ignores SIGXFSZ


async def test_file_size_rlimit_bash(run) -> None:
    result = await run(
        "head -c 2M /dev/zero > /tmp/big; echo rc=$?; stat -c %s /tmp/big", "bash", file_size_mib=1
    )
    assert result.stdout.split() == [b"rc=153", str(MIB).encode()], result  # 128 + SIGXFSZ


async def test_open_files_rlimit(run) -> None:
    result = await run(
        """
        import errno, os
        fds = []
        try:
            while True:
                fds.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as e:
            print(errno.errorcode[e.errno], len(fds))
    """,
        open_files_max=64,
    )
    name, count = result.stdout.split()
    assert name == b"EMFILE" and 50 < int(count) <= 64, result


async def test_rlimits_cannot_be_raised(run) -> None:
    result = await run(
        """
        import json, resource
        out = {}
        for name in ("RLIMIT_CORE", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC"):
            res = getattr(resource, name)
            soft, hard = resource.getrlimit(res)
            try:
                resource.setrlimit(res, (hard + 1, hard + 1))
                raised = True
            except (ValueError, OSError):
                raised = False
            out[name] = [soft, hard, raised]
        print(json.dumps(out))
    """,
        file_size_mib=3,
        open_files_max=100,
        pids_max=40,
    )
    out = json.loads(result.stdout)
    assert out == {
        "RLIMIT_CORE": [0, 0, False],  # no core dumps
        "RLIMIT_FSIZE": [3 * MIB, 3 * MIB, False],
        "RLIMIT_NOFILE": [100, 100, False],
        "RLIMIT_NPROC": [56, 56, False],  # pids_max + 16
    }


async def test_cpu_quota_throttles(run) -> None:
    """Two busy processes for 1.5 s of wall time: at 0.5 CPU they get ~0.75 s, not ~3 s."""
    result = await run(
        """
        import os, resource, time
        start = time.monotonic()
        for _ in range(2):
            if os.fork() == 0:
                while time.monotonic() - start < 1.5:
                    pass
                os._exit(0)
        os.wait(); os.wait()
        wall = time.monotonic() - start
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(usage.ru_utime + usage.ru_stime, wall)
    """,
        cpus=0.5,
    )
    cpu, wall = map(float, result.stdout.split())
    assert wall >= 1.5
    assert cpu <= 0.5 * wall * 1.6 + 0.1, (cpu, wall)


async def test_output_flood_is_truncated_and_drained(run) -> None:
    started = time.monotonic()
    result = await run(
        """
        import os
        chunk = b"x" * (1 << 20)
        for _ in range(40):
            os.write(1, chunk)
            os.write(2, chunk)
        print("finished", flush=True)
    """,
        output_limit_bytes=64 * 1024,
    )
    assert result.status is ExecStatus.SUCCESS, result  # it was drained, not blocked on a full pipe
    assert len(result.stdout) == len(result.stderr) == 64 * 1024
    assert result.stdout_truncated and result.stderr_truncated and result.output_truncated
    assert time.monotonic() - started < 15


async def test_endless_output_ends_by_timeout(run, host: Host) -> None:
    started = time.monotonic()
    result = await run("yes sandboxd & yes sandboxd >&2", "bash", timeout_s=1.5)
    assert result.status is ExecStatus.TIMEOUT, result
    assert len(result.stdout) == len(result.stderr) == 1024 * 1024  # the default cap
    assert result.stdout_truncated and result.stderr_truncated
    assert time.monotonic() - started < 15
    await host.assert_clean()


async def host_spawn_latencies(until: asyncio.Future[object], n: int = 30) -> list[float]:
    """Time `/bin/true` spawned on the host, repeatedly, while `until` runs."""
    latencies: list[float] = []
    while not until.done() and len(latencies) < n:
        started = time.perf_counter()
        true = await asyncio.create_subprocess_exec("/bin/true")
        assert await true.wait() == 0
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return latencies


async def test_cpu_hog_leaves_the_host_and_other_executions_served(background, run) -> None:  # type: ignore[no-untyped-def]
    """Four busy processes in one sandbox (1 CPU): a second execution still answers promptly."""
    hog = """
        import os, time
        for _ in range(4):
            if os.fork() == 0:
                while True:
                    pass
        print("ready", flush=True)
        time.sleep(60)
    """
    async with background(hog, cpus=1.0) as bg:
        probe = asyncio.ensure_future(asyncio.sleep(3))
        latencies = await host_spawn_latencies(probe)
        started = time.monotonic()
        other = await run("print(sum(range(10**6)))")
        served_in = time.monotonic() - started
    assert other.status is ExecStatus.SUCCESS and other.stdout == b"499999500000\n", other
    assert served_in < 10, served_in  # generous: the machine is shared
    assert len(latencies) >= 10 and statistics.median(latencies) < 0.2, sorted(latencies)
    assert bg.result is not None and bg.result.status is ExecStatus.CANCELLED


async def test_disk_bomb_stops_at_the_limit_and_host_stays_responsive(run) -> None:
    """Fill every writable place at once, again and again for 3 s, while the host spawns."""
    bomb = asyncio.ensure_future(
        run(
            """
            end=$((SECONDS + 3)); rounds=0
            while [ $SECONDS -lt $end ]; do
                pids=""; codes=""
                for d in /tmp /data /dev/shm /home/baponi; do
                    head -c 100M /dev/zero > $d/fill 2>/dev/null & pids="$pids $!"
                done
                for p in $pids; do wait $p; codes="$codes $?"; done
                rounds=$((rounds + 1))
                free=$(df -k /tmp /data /dev/shm /home/baponi | awk 'NR>1 {print $6, $4}')
                rm -f /tmp/fill /data/fill /dev/shm/fill /home/baponi/fill
            done
            echo exit codes $codes; echo rounds $rounds; echo "$free"
            """,
            "bash",
            tmp_size_mib=16,
            workdir_size_mib=16,
            home_size_mib=16,
            memory_mib=256,
        )
    )
    latencies = await host_spawn_latencies(bomb)
    result = await bomb
    assert result.status is ExecStatus.SUCCESS, result
    lines = result.stdout.decode().strip().split("\n")
    assert lines[0] == "exit codes 1 1 1 1", result  # every writer hit ENOSPC ...
    assert int(lines[1].split()[1]) >= 2, result
    free = dict(line.split() for line in lines[2:])
    assert free == {"/tmp": "0", "/data": "0", "/dev/shm": "0", "/home/baponi": "0"}  # ... at its size
    assert len(latencies) >= 10 and statistics.median(latencies) < 0.2, sorted(latencies)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import sys; data = sys.stdin.buffer.read(); print(len(data))"),
        ("node", "let n = 0; process.stdin.on('data', d => n += d.length).on('end', () => console.log(n))"),
        ("bash", "cat | wc -c"),
    ],
)
async def test_stdin_is_empty_and_ends_at_once(run, language: str, code: str) -> None:
    """Code that reads stdin (or waits on it forever) gets EOF at once, not a hang or a flood."""
    result = await run(code, language, timeout_s=5)
    assert result.status is ExecStatus.SUCCESS, result
    assert result.stdout.strip() == b"0" and result.duration_ms < 5000
