"""What /data/outputs costs a run: the runtime with it versus without, cold and pooled.

    uv run python bench/bench_outputs.py [--n 200] [--http]

In one process, two runners (`create_runner`, each with its own uid range and cgroup parent):
A without /data/outputs (no `outputs_dir`), B with it (a tmpfs per sandbox, `runtime/outputs.py`;
the run's artifacts copied into a temp dir). For bash `true` (the least noisy program), it
measures interleaved A, B, B, A, ... (20 ms apart, so one's teardown does not land on the next):

- cold: `runner.run(spec)`: the tmpfs mount, the bwrap bind, the collection and the unmount
  are all on the path;
- pooled: `PooledRunner.serve(entry, spec)` on a sandbox pre-spawned beforehand (as the pool
  does): only the collection (an empty directory: one getdents) and the unmount at dispose are
  on the path;
- and the host-side steps alone (`Outputs.create`, an empty-directory check, `Outputs.release`).

With `--http`: two real servers instead (`SANDBOXD_OUTPUTS_SIZE_MIB=0` and the default, pools
on), the same requests (`POST /v1/sandbox/execute`, python `print(1)` and bash `echo 1`) sent to
A and B in ABBA order, 50 ms apart (`--gap-ms`), through keep-alive clients: the whole path,
pool included.

Prints medians and p95 in ms and the difference B - A. Needs root and a host that can run
sandboxd. Nothing leaves the machine (loopback only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sandboxd.runtime import Limits, PooledRunner, PoolSettings, SandboxSpec, create_runner
from sandboxd.runtime.outputs import Outputs

WARMUP = 5


def _stats(xs: list[float]) -> tuple[float, float]:
    s = sorted(xs)
    return statistics.median(s) * 1000, s[int(len(s) * 0.95) - 1] * 1000


async def main(n: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-outputs-"))
    outputs_dir = Path("/run/sandboxd") / f"bench-{os.getpid()}" / "outputs"
    plain = create_runner(instance_key=str(root / "a"), uid_base=330_000, slots=8)
    with_outputs = create_runner(instance_key=str(root / "b"), uid_base=330_100, slots=8, outputs_dir=outputs_dir)
    spec = SandboxSpec(language="bash", code=b"true", limits=Limits(timeout_s=20))
    kept = root / "kept"
    series: dict[str, list[float]] = {
        k: [] for k in ("cold A", "cold B", "pooled A", "pooled B", "pre-spawn A", "pre-spawn B")
    }
    pools = {"A": PooledRunner(plain, PoolSettings()), "B": PooledRunner(with_outputs, PoolSettings())}
    try:
        for i in range(WARMUP + n):
            order = ("A", "B") if i % 2 == 0 else ("B", "A")  # ABBA: neither always follows the other
            for name in order:
                runner = plain if name == "A" else with_outputs
                s = replace(spec, artifacts_dir=str(kept / f"c{i}{name}")) if name == "B" else spec
                await asyncio.sleep(0.02)  # the last sandbox's teardown settles
                t = time.perf_counter()
                result = await runner.run(s)
                if i >= WARMUP:
                    series[f"cold {name}"].append(time.perf_counter() - t)
                assert result.exit_code == 0, result
            for name in order:
                pooled = pools[name]
                s = replace(spec, artifacts_dir=str(kept / f"p{i}{name}")) if name == "B" else spec
                await asyncio.sleep(0.02)
                t = time.perf_counter()
                entry = await pooled.pool.spawn_ready(s)
                if i >= WARMUP:
                    series[f"pre-spawn {name}"].append(time.perf_counter() - t)
                await asyncio.sleep(0.02)  # as in the pool: spawned well before the request
                t = time.perf_counter()
                result = await pooled.serve(entry, s)
                if i >= WARMUP:
                    series[f"pooled {name}"].append(time.perf_counter() - t)
                assert result.exit_code == 0, result
        steps: dict[str, list[float]] = {"create": [], "empty check": [], "release": []}
        host = Outputs(Path("/run/sandboxd") / f"bench-{os.getpid()}" / "steps")
        for _ in range(n):
            t = time.perf_counter()
            path, fd = host.create(330_001, 330_001, size_mib=64, max_files=1000)
            steps["create"].append(time.perf_counter() - t)
            os.close(fd)
            t = time.perf_counter()
            with os.scandir(path) as it:
                next(it, None)
            steps["empty check"].append(time.perf_counter() - t)
            t = time.perf_counter()
            host.release(path)
            steps["release"].append(time.perf_counter() - t)
        host.close()
    finally:
        for pooled in pools.values():
            await pooled.close()
        with contextlib.suppress(OSError):  # the runners' close removed it when empty
            outputs_dir.parent.rmdir()
    print(__doc__.split("\n\n")[0])
    print(f"n={n} per series after {WARMUP} warm-up; bash `true`; load average before/after: {load}, {os.getloadavg()}")
    print(f"{'series':10} {'A med':>8} {'A p95':>8} {'B med':>8} {'B p95':>8} {'B-A med':>8}")
    for kind in ("cold", "pooled", "pre-spawn"):
        a, b = _stats(series[f"{kind} A"]), _stats(series[f"{kind} B"])
        print(f"{kind:10} {a[0]:8.2f} {a[1]:8.2f} {b[0]:8.2f} {b[1]:8.2f} {b[0] - a[0]:8.2f}")
    for step, xs in steps.items():
        med, p95 = _stats(xs)
        print(f"host step {step:12} med {med * 1000:7.1f} us  p95 {p95 * 1000:7.1f} us")
    print("ms unless said; A = no /data/outputs, B = with it (tmpfs per sandbox, collected)")


def http(n: int, gap_s: float) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from _common import serving

    codes = {"python": "print(1)", "bash": "echo 1"}
    envs = {  # two servers on one host: uid ranges of their own (docs/operations.md)
        "A": {"SANDBOXD_OUTPUTS_SIZE_MIB": "0", "SANDBOXD_SANDBOX_UID_BASE": "340000",
              "SANDBOXD_THREAD_UID_BASE": "150000000"},
        "B": {"SANDBOXD_SANDBOX_UID_BASE": "341000", "SANDBOXD_THREAD_UID_BASE": "160000000"},
    }
    with serving("bench_outputs", envs) as running:
        clients = {label: r.server.client(r.key, timeout_s=60) for label, r in running.items()}
        got: dict[tuple[str, str], list[float]] = {(lang, lab): [] for lang in codes for lab in "AB"}
        for i in range(WARMUP + n):
            for lang, code in codes.items():
                for label in ("A", "B") if i % 2 == 0 else ("B", "A"):
                    time.sleep(gap_s)
                    t = time.perf_counter()
                    r = clients[label].post("/v1/sandbox/execute", json={"code": code, "language": lang})
                    elapsed = time.perf_counter() - t
                    assert r.status_code == 200 and r.json()["success"], r.text
                    if i >= WARMUP:
                        got[(lang, label)].append(elapsed)
        for c in clients.values():
            c.close()
    print(f"n={n} per series after {WARMUP} warm-up, {gap_s * 1000:.0f} ms apart; load average "
          f"before/after: {load}, {os.getloadavg()}")
    print(f"{'inline':10} {'A med':>8} {'A p95':>8} {'B med':>8} {'B p95':>8} {'B-A med':>8}")
    for lang in codes:
        a, b = _stats(got[(lang, "A")]), _stats(got[(lang, "B")])
        print(f"{lang:10} {a[0]:8.2f} {a[1]:8.2f} {b[0]:8.2f} {b[1]:8.2f} {b[0] - a[0]:8.2f}")
    print("ms; A = SANDBOXD_OUTPUTS_SIZE_MIB=0 (no /data/outputs), B = the default (64 MiB)")


if __name__ == "__main__":
    load = os.getloadavg()
    count = int(sys.argv[sys.argv.index("--n") + 1]) if "--n" in sys.argv else 200
    if "--http" in sys.argv:
        http(count, int(sys.argv[sys.argv.index("--gap-ms") + 1]) / 1000 if "--gap-ms" in sys.argv else 0.05)
    else:
        asyncio.run(main(count))
