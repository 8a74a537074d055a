"""The benchmark suite of sandboxd: every figure of the performance targets, in one run.

    .venv/bin/python bench/suite.py [--n 100] [--executions 200] [--quick]

Starts two real `sandboxd serve` processes on free 127.0.0.1 ports, each in its own temp data
dir with its own sandbox and thread uid ranges: "pools on" (SANDBOXD_POOL_ENABLED=true) and
"pools off" (false), both with SANDBOXD_MAX_CONCURRENT(_PER_ORG)=32 so that concurrency 16
is never refused with 429. Then, with keep-alive httpx clients, sequential unless said:

  1. bare process starts: `python3 -c 'print(1+1)'`, `node -e 'console.log(1+1)'`,
     `bash -c 'echo 2'` (subprocess.run, env PATH=/usr/bin:/bin): the baseline;
  2. the same code through POST /v1/sandbox/execute (inline), on both servers; measured
     interleaved with 1 (bare, pools on, pools off, per language, per round);
  3. `print(1+1)` on an existing thread (created by a first execution), on both servers,
     interleaved with bare python;
  4. throughput of stateless python at concurrency 1, 4 and 16 (asyncio + httpx): executions
     per second, errors (non-200 or success=false), request latency; bare python started the
     same way at the same concurrency is the baseline;
  5. time from sending a streamed request (Accept: application/x-ndjson) to its first
     `status` and first `output` event, for code that prints at once then sleeps; the bare
     baseline is the time from starting python to reading its first line; interleaved;
  6. memory: VmRSS/VmHWM of each server process idle (after start and one execution) and
     peak after section 4; RSS (and PSS) of the warm pooled sandboxes waiting under the
     server while it is idle, per sandbox;
  7. runtime images (bench/_images.py): cold import of a Debian image, disk of two images on
     one base vs twice one image, pooled python inline on the image vs on `host`;
  8. storage connections (bench/_connections.py, SeaweedFS S3 on loopback): python inline on a key
     with one S3 connection (warm mount) vs without; the first execution on a mount not up
     yet; 100 MB written and read through the mount vs with the S3 API directly.
  9. brokered HTTPS (bench/_brokered.py, in-process on loopback): one HTTPS request through
     the brokering proxy vs through the plain allowlist proxy's CONNECT tunnel, same upstream.
 10. persistent sessions (bench/_sessions.py): `print(1)` in a live session vs a stateless
     pooled run; `import numpy` again in a session vs stateless; a 20-step pandas workflow
     (10 MB CSV loaded once, 19 small steps) in one session vs as 20 stateless thread runs.

Every table gives median and p95 (nearest rank) in ms and the ratio of medians to the bare
baseline of the same language measured in this run; then a "targets" table: PASS or MISS,
and by how much. `--quick` is a smoke run (n=10, 32 executions per throughput level): its
figures mean nothing. Prints figures; exits 0 whatever they are, 1 if the run itself failed.
Stops the servers and deletes their temp dirs at the end, whatever happened. Traffic goes to
127.0.0.1 only. Needs root and a host that can run sandboxd (bubblewrap, cgroups, btrfs).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TypeVar

try:
    import httpx
except ImportError:  # pragma: no cover - depends on how the env was synced
    sys.exit("suite: httpx is missing; run: uv sync --extra dev")

import _brokered
import _connections
import _images
import _memory
import _sessions
import _stream
from _common import (
    arguments,
    command_line,
    exit_with,
    machine_info,
    parse,
    print_machine,
    Running,
    Series,
    serving,
    timed,
)
from _report import ms, table, Target, targets, times
from _runs import bare_runner, CASES, executable, interpreter_versions, server_runner
from _throughput import bare_throughput, server_throughput, Throughput

from sandboxd.app import THREAD_UIDS
from sandboxd.config import Settings

POOLS = {"pools on": "true", "pools off": "false"}
ON = "pools on"
BARE = "bare"
MAX_CONCURRENT = 32
UID_STRIDE = 1000  # each server's sandbox uids: base + i * stride (threads: + i * THREAD_UIDS)
CONCURRENCY = (1, 4, 16)
THREAD_ID = "bench-thread"
SECTIONS = (
    "1. bare process start (the baseline)",
    "2. HTTP inline execute, sequential",
    "3. thread execution on an existing thread (python)",
    "4. throughput, stateless python",
    "5. time to first NDJSON event (python)",
    "6. memory",
    "7. runtime images (python, pools on)",
    "8. storage connections (python, pools on, S3)",
    "9. brokered HTTPS (one request, in-process, loopback)",
    "10. persistent sessions (python, pools on)",
)
T = TypeVar("T")
K = TypeVar("K")


# --- measuring ----------------------------------------------------------------------------


def rounds(runners: dict[K, Callable[[], T]], n: int, warmup: int) -> dict[K, list[T]]:
    """`warmup` then `n` rounds, each calling every runner once in order (interleaved)."""
    for _ in range(warmup):  # page cache, connections, first-call paths, pools filled
        for run in runners.values():
            run()
    got: dict[K, list[T]] = {k: [] for k in runners}
    for _ in range(n):
        for k, run in runners.items():
            got[k].append(run())
    return got


def wall(run: Callable[[], float | None]) -> Callable[[], tuple[float, float | None]]:
    """`run` timed: its wall time in ms and the server's own duration_ms when it returns one."""
    return lambda: timed(run)


def series(label: str, timings: list[tuple[float, float | None]]) -> Series:
    inner = [i for _, i in timings if i is not None]
    return Series(label, [w for w, _ in timings], inner)


@dataclass
class Bench:
    n: int
    executions: int
    warmup: int
    running: dict[str, Running]
    clients: dict[str, httpx.Client]
    uids: dict[str, range]
    exes: dict[str, str]  # language -> the binary the bare runs start

    @property
    def languages(self) -> list[str]:
        return list(self.exes)

    def bare_argv(self, language: str) -> list[str]:
        argv = CASES[language][0]
        return [self.exes[language], *argv[1:]]

    def inline(self) -> dict[tuple[str, str], Series]:
        """Sections 1 and 2: per round and language, bare, then each server."""
        runners: dict[tuple[str, str], Callable[[], tuple[float, float | None]]] = {}
        for lang in self.languages:
            _, code, expected = CASES[lang]
            runners[BARE, lang] = wall(bare_runner(self.bare_argv(lang), expected))
            for label, client in self.clients.items():
                runners[label, lang] = wall(server_runner(client, lang, code, expected))
        got = rounds(runners, self.n, self.warmup)
        return {k: series(f"{k[0]} {k[1]}", v) for k, v in got.items()}

    def thread(self) -> tuple[dict[str, Series], dict[str, float]]:
        """Section 3; also the wall time of the first execution, which creates the thread."""
        _, code, expected = CASES["python"]
        runners = {BARE: wall(bare_runner(self.bare_argv("python"), expected))}
        created = {}
        for label, client in self.clients.items():
            run = server_runner(client, "python", code, expected, THREAD_ID)
            created[label], _ = timed(run)
            runners[label] = wall(run)
        got = rounds(runners, self.n, self.warmup)
        return {k: series(k, v) for k, v in got.items()}, created

    def throughput(self) -> dict[tuple[str, int], Throughput]:
        """Section 4: per level, bare, then each server."""
        _, code, expected = CASES["python"]
        got = {}
        for c in CONCURRENCY:
            got[BARE, c] = bare_throughput(self.bare_argv("python"), expected, c, self.executions)
            for label, r in self.running.items():
                got[label, c] = server_throughput(
                    r.server.url, r.key, "python", code, expected, c, self.executions
                )
        return got

    def stream(self) -> dict[str, dict[str, Series]]:
        """Section 5: per series, per event type (bare: "output" only), ms to the first one."""
        runners = {BARE: _stream.bare_runner(self.exes["python"])}
        runners |= {label: _stream.stream_runner(c) for label, c in self.clients.items()}
        got = rounds(runners, self.n, self.warmup)
        return {
            label: {kind: Series(kind, [s[kind] for s in samples]) for kind in samples[0]}
            for label, samples in got.items()
        }

    def images(self) -> _images.ImageFigures:
        """Section 7, on the pools-on server."""

        def sample(runners: dict[str, Callable[[], float]]) -> dict[str, Series]:
            got = rounds({k: wall(run) for k, run in runners.items()}, self.n, self.warmup)
            return {k: series(k, v) for k, v in got.items()}

        return _images.measure(self.running[ON].server, self.clients[ON], sample)

    def buckets(self) -> _connections.BucketFigures:
        """Section 8, on the pools-on server."""

        def sample(runners: dict[str, Callable[[], float]]) -> dict[str, Series]:
            got = rounds({k: wall(run) for k, run in runners.items()}, self.n, self.warmup)
            return {k: series(k, v) for k, v in got.items()}

        return _connections.measure(self.running[ON].server, self.clients[ON], sample)

    def brokered(self) -> _brokered.BrokerFigures:
        """Section 9, in this process (no server)."""
        return _brokered.measure(self.n, self.warmup)

    def sessions(self) -> _sessions.SessionFigures:
        """Section 10, on the pools-on server."""

        def sample(runners: dict[str, Callable[[], float]]) -> dict[str, Series]:
            got = rounds({k: wall(run) for k, run in runners.items()}, self.n, self.warmup)
            return {k: series(k, v) for k, v in got.items()}

        rounds_ = 1 if self.n < 100 else 3
        return _sessions.measure(self.running[ON].server, self.clients[ON], sample, workflow_rounds=rounds_)

    def idle(self) -> dict[str, tuple[_memory.ServerMemory, _memory.Sandboxes]]:
        """Section 6, idle: after one execution, once the sandboxes under each server settle."""
        _, code, expected = CASES["python"]
        for client in self.clients.values():
            server_runner(client, "python", code, expected)()
        return {label: self._settled(label) for label in self.running}

    def _settled(
        self, label: str, timeout_s: float = 15, quiet_s: float = 1
    ) -> tuple[_memory.ServerMemory, _memory.Sandboxes]:
        """Memory once the number of sandboxes has not changed for `quiet_s` (pools refilled)."""
        pid = self.pid(label)
        deadline = time.monotonic() + timeout_s
        now = _memory.sandboxes(pid, self.uids[label])
        stable_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - stable_since < quiet_s:
            time.sleep(0.2)
            seen = _memory.sandboxes(pid, self.uids[label])
            if (seen.count, seen.processes) != (now.count, now.processes):
                stable_since = time.monotonic()
            now = seen
        return _memory.server_memory(pid), now

    def pid(self, label: str) -> int:
        proc = self.running[label].server.proc
        assert proc is not None
        return proc.pid


# --- printing -----------------------------------------------------------------------------


def p95_row(s: Series) -> list[str]:
    return [ms(s.median()), ms(s.p95())]


def print_inline(b: Bench, got: dict[tuple[str, str], Series]) -> None:
    rows = []
    for lang in b.languages:
        bare = got[BARE, lang]
        rows.append([lang, *p95_row(bare), "1.00x", shlex.join(b.bare_argv(lang))])
    table(SECTIONS[0], ["language", "median", "p95", "ratio", "argv"], rows)
    rows = []
    for lang in b.languages:
        base = got[BARE, lang].median()
        for label in b.clients:
            s = got[label, lang]
            rows.append([lang, label, *p95_row(s), times(s.median(), base), ms(s.inner_median())])
    table(
        SECTIONS[1],
        ["language", "server", "median", "p95", "ratio/bare", "in-sandbox med"],
        rows,
        [
            "ratio/bare = median / the bare median of the same language (section 1);"
            " in-sandbox = the server's own duration_ms",
            *missing_languages(b),
        ],
    )


def missing_languages(b: Bench) -> list[str]:
    missing = [lang for lang in CASES if lang not in b.languages]
    return [f"not measured (not in the servers' image): {', '.join(missing)}"] if missing else []


def print_thread(got: dict[str, Series], created: dict[str, float]) -> None:
    base = got[BARE].median()
    rows = [[BARE, *p95_row(got[BARE]), "1.00x", "-", "-"]]
    for label, s in got.items():
        if label != BARE:
            ratio = times(s.median(), base)
            rows.append([label, *p95_row(s), ratio, ms(s.inner_median()), ms(created[label])])
    table(
        SECTIONS[2],
        ["series", "median", "p95", "ratio/bare", "in-sandbox med", "first (creates it)"],
        rows,
        [f"code print(1+1), thread_id {THREAD_ID!r}; bare = python3 -c 'print(1+1)' interleaved"],
    )


def print_throughput(b: Bench, got: dict[tuple[str, int], Throughput]) -> None:
    rows = []
    for c in CONCURRENCY:
        base = got[BARE, c].per_s
        for label in (BARE, *b.running):
            t = got[label, c]
            rows.append(
                [
                    label,
                    str(c),
                    str(t.executions),
                    f"{t.wall_s:.2f}",
                    f"{t.per_s:.1f}",
                    times(t.per_s, base),
                    str(t.errors),
                    *p95_row(t.latency),
                ]
            )
    notes = [
        f"{b.executions} executions per row after one warm-up execution per worker (servers);"
        " ratio/bare = executions/s over bare python's at the same concurrency;",
        "errors = HTTP status other than 200, transport errors, success=false or wrong stdout;"
        f" both servers run with SANDBOXD_MAX_CONCURRENT={MAX_CONCURRENT} and"
        f" SANDBOXD_MAX_CONCURRENT_PER_ORG={MAX_CONCURRENT},",
        "  so concurrency 16 is never refused with 429 by design (the default cap is 4 x CPUs).",
    ]
    notes += [
        f"first error ({label}, c={c}): {t.first_error[:300]}"
        for (label, c), t in got.items()
        if t.errors
    ]
    table(
        SECTIONS[3],
        ["series", "c", "execs", "wall s", "execs/s", "ratio/bare", "errors", "lat med", "lat p95"],
        rows,
        notes,
    )


def print_stream(got: dict[str, dict[str, Series]]) -> None:
    bare = got[BARE]["output"]
    rows = [["bare python, first line", "-", "-", *p95_row(bare), "1.00x"]]
    for label, first in got.items():
        if label != BARE:
            status, output = first["status"], first["output"]
            ratio = times(output.median(), bare.median())
            rows.append([label, *p95_row(status), *p95_row(output), ratio])
    table(
        SECTIONS[4],
        ["series", "status med", "status p95", "output med", "output p95", "ratio/bare"],
        rows,
        [
            f"code {_stream.CODE!r}; ms from sending the request (bare: from starting python)"
            " to receiving the event (bare: the first line)"
        ],
    )


def mb(kib: int) -> str:
    return f"{kib * _memory.KIB / _memory.MB:.1f}"


def per_sandbox(s: _memory.Sandboxes) -> str:
    if not s.count:
        return "n/a (no pooled sandboxes found)"
    return (
        f"{mb(s.rss_kib // s.count)} RSS, {mb(s.pss_kib // s.count)} PSS"
        f" ({s.count} sandboxes, {s.processes} processes)"
    )


def print_memory(
    b: Bench,
    idle: dict[str, tuple[_memory.ServerMemory, _memory.Sandboxes]],
    peak: dict[str, _memory.ServerMemory],
) -> None:
    rows = []
    for label in b.running:
        server, boxes = idle[label]
        rows.append(
            [
                label,
                mb(server.rss_kib),
                mb(server.hwm_kib),
                mb(peak[label].rss_kib),
                mb(peak[label].hwm_kib),
                f"{boxes.others} / {mb(boxes.others_rss_kib)}",
                per_sandbox(boxes),
            ]
        )
    table(
        SECTIONS[5],
        [
            "server",
            "idle RSS",
            "idle HWM",
            "after 4 RSS",
            "peak HWM",
            "other children",
            "per warm pooled sandbox (idle)",
        ],
        rows,
        [
            "MB = 10^6 bytes; the server process's VmRSS/VmHWM (/proc/<pid>/status): idle = after"
            " start and one execution, once the sandboxes under it stopped changing;",
            "pooled sandboxes = its descendant processes whose real uid is in its sandbox uid"
            " range, one uid per sandbox; RSS counts shared pages in every process, PSS splits"
            " them;",
            "other children = descendant processes outside that range, and their RSS.",
        ],
    )


def print_images(got: _images.ImageFigures) -> None:
    base = got.on_host.median()
    table(
        SECTIONS[6],
        ["series", "median ms", "p95 ms", "ratio to host"],
        [[s.label, ms(s.median()), ms(s.p95()), times(s.median(), base)] for s in (got.on_host, got.on_image)],
        [
            f"build of the Debian image ({', '.join(_images.PACKAGES)}, mmdebstrap): {got.build_s:.1f} s",
            f"cold import (no layer present): {got.import_s:.1f} s; a second image on the same base "
            f"plus a 1 MiB layer: {got.second_import_s:.1f} s",
            f"disk: one image {got.one_image_bytes / _memory.MB:.1f} MB; two images sharing the base "
            f"{got.two_images_bytes / _memory.MB:.1f} MB = {got.sharing_ratio:.2f} of twice one image",
        ],
    )


def print_buckets(got: _connections.BucketFigures) -> None:
    base = got.plain.median()
    mb = _connections.FILE_MB
    table(
        SECTIONS[7],
        ["series", "median ms", "p95 ms", "ratio to no connection"],
        [[s.label, ms(s.median()), ms(s.p95()), times(s.median(), base)] for s in (got.plain, got.warm)],
        [
            f"first execution on a mount not up yet (rclone start + first listing), median of "
            f"{len(got.first_ms)}: {_connections.first_median(got):.0f} ms "
            f"({', '.join(f'{v:.0f}' for v in got.first_ms)})",
            f"write {mb} MB: through the mount {got.write_mount_s:.2f} s (the whole execution, until uploaded), "
            f"S3 API {got.write_api_s:.2f} s = {got.write_mount_s / got.write_api_s:.2f}x",
            f"read {mb} MB: through the mount {got.read_mount_s:.2f} s (the whole execution), "
            f"S3 API {got.read_api_s:.2f} s = {got.read_mount_s / got.read_api_s:.2f}x",
        ],
    )


def print_brokered(got: _brokered.BrokerFigures) -> None:
    base = got.tunnel.median()
    table(
        SECTIONS[8],
        ["series", "median ms", "p95 ms", "ratio to tunnel"],
        [[s.label, ms(s.median()), ms(s.p95()), times(s.median(), base)] for s in (got.tunnel, got.brokered)],
        [
            f"added by brokering (difference of medians): {got.added_ms:.1f} ms; each call: connect, "
            "CONNECT, TLS handshake, GET, the whole response, close (brokered: a second TLS "
            "connection, broker to upstream)",
        ],
    )


def print_sessions(got: _sessions.SessionFigures) -> None:
    base = got.stateless.median()
    numpy_base = got.numpy_stateless.median()
    wf_stateless, wf_session = got.workflow_stateless_s, got.workflow_session_s
    table(
        SECTIONS[9],
        ["series", "median ms", "p95 ms", "ratio to stateless"],
        [
            *[[s.label, ms(s.median()), ms(s.p95()), times(s.median(), base)] for s in (got.stateless, got.session)],
            *[[s.label, ms(s.median()), ms(s.p95()), times(s.median(), numpy_base)]
              for s in (got.numpy_stateless, got.numpy_session)],
        ],
        [
            "session: a thread's live session, second and later executions; stateless: pooled, no thread; "
            f"each sample {_sessions.PAUSE_S * 1000:.0f} ms after the one before",
            f"20-step pandas workflow ({', '.join(_sessions.PACKAGES)} image; 10 MB CSV loaded once, 19 steps), "
            f"{len(wf_session)} round(s): session {', '.join(f'{v:.1f}' for v in wf_session)} s, "
            f"stateless {', '.join(f'{v:.1f}' for v in wf_stateless)} s; ratio of medians {got.workflow_ratio:.2f}",
        ],
    )


def print_targets(
    b: Bench,
    inline: dict[tuple[str, str], Series],
    thread: dict[str, Series],
    tput: dict[tuple[str, int], Throughput],
    stream: dict[str, dict[str, Series]],
    idle: dict[str, tuple[_memory.ServerMemory, _memory.Sandboxes]],
    images: _images.ImageFigures,
    buckets: _connections.BucketFigures,
    brokered: _brokered.BrokerFigures,
    sessions: _sessions.SessionFigures,
) -> None:
    def ratio(lang: str) -> float | None:
        if lang not in b.languages:
            return None
        return inline[ON, lang].median() / inline[BARE, lang].median()

    top = tput[ON, CONCURRENCY[-1]]
    thread_ratio = thread[ON].median() / thread[BARE].median()
    rows = [
        Target("(2) python inline, pools on / bare", ratio("python"), 0.8, "x"),
        Target("(2) node inline, pools on / bare", ratio("node"), 0.5, "x"),
        Target("(3) thread, pools on / bare python", thread_ratio, 1.2, "x"),
        Target(f"(4) execs/s at c={top.concurrency}, pools on", top.per_s, 100, "/s", True),
        Target(f"(4) errors at c={top.concurrency}, pools on", top.errors, 0, ""),
        Target("(5) first output event, pools on (median)", stream[ON]["output"].median(), 5, "ms"),
        Target(
            "(6) server idle RSS, pools on",
            idle[ON][0].rss_kib * _memory.KIB / _memory.MB,
            150,
            "MB",
        ),
        Target("(7) python inline on an image / on host", images.on_image.median() / images.on_host.median(), 1.1, "x"),
        Target("(8) python inline, one S3 connection (warm) / none", buckets.warm_ratio, 1.3, "x"),
        Target("(9) brokered HTTPS request, added median", brokered.added_ms, 10, "ms"),
        Target("(10) session print(1) / stateless inline", sessions.ratio, 0.5, "x"),
        Target("(10) 20-step pandas workflow, session / stateless", sessions.workflow_ratio, 0.5, "x"),
    ]
    targets(rows, ["medians; the targets are for this 2-core machine, measured with pools on"])


# --- the run ------------------------------------------------------------------------------


def server_envs(settings: Settings) -> tuple[dict[str, dict[str, str]], dict[str, range]]:
    """Each server's SANDBOXD_* settings and its sandbox uid range (distinct per server)."""
    envs, uids = {}, {}
    for i, (label, enabled) in enumerate(POOLS.items()):
        sandbox_base = settings.sandbox_uid_base + i * UID_STRIDE
        envs[label] = {
            "SANDBOXD_POOL_ENABLED": enabled,
            "SANDBOXD_MAX_CONCURRENT": str(MAX_CONCURRENT),
            "SANDBOXD_MAX_CONCURRENT_PER_ORG": str(MAX_CONCURRENT),
            "SANDBOXD_SANDBOX_UID_BASE": str(sandbox_base),
            "SANDBOXD_THREAD_UID_BASE": str(settings.thread_uid_base + i * THREAD_UIDS),
        }
        uids[label] = range(sandbox_base, sandbox_base + UID_STRIDE)
    return envs, uids


@contextmanager
def clients(running: dict[str, Running]) -> Iterator[dict[str, httpx.Client]]:
    """One keep-alive client per server."""
    with ExitStack() as stack:
        yield {
            label: stack.enter_context(r.server.client(r.key, timeout_s=120))
            for label, r in running.items()
        }


def print_header(b: Bench, command: str, before: list[str]) -> None:
    print("sandboxd benchmark suite")
    print(f"command: {command}   (cwd {os.getcwd()})")
    quick = "   QUICK SMOKE RUN: the figures mean nothing" if b.n < 100 else ""
    print(
        f"samples: n={b.n} per sequential series after {b.warmup} warm-up rounds, interleaved;"
        f" {b.executions} executions per throughput row{quick}"
    )
    for label, r in b.running.items():
        env = " ".join(f"{k}={v}" for k, v in r.server.env.items())
        print(f"server {label}: {r.server.url}, ready in {r.startup_ms:.0f} ms, {env}")
    print(f"interpreters: {interpreter_versions(b.exes)}")
    print_machine(before)


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = arguments(__doc__ or "", min_n=5, default_n=100)
    parser.add_argument(
        "--executions", type=int, default=200, help="executions per throughput row (>= 16)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: n=10, 32 executions per throughput row"
    )
    args = parse(parser)
    if args.quick:
        args.n, args.executions = 10, 32
    if args.executions < CONCURRENCY[-1]:
        parser.error(f"--executions must be at least {CONCURRENCY[-1]}")
    command, before = command_line(), machine_info()
    envs, uids = server_envs(Settings())
    with serving("suite", envs, stop_timeout_s=30) as running, clients(running) as c:
        available = set.intersection(*(set(r.server.languages()) for r in running.values()))
        if "python" not in available:
            raise RuntimeError("python is not in the servers' image")
        b = Bench(
            n=args.n,
            executions=args.executions,
            warmup=2 if args.quick else 5,
            running=running,
            clients=c,
            uids=uids,
            exes={lang: executable(CASES[lang][0][0]) for lang in CASES if lang in available},
        )
        print_header(b, command, before)
        idle = b.idle()
        inline = b.inline()
        print_inline(b, inline)
        thread, created = b.thread()
        print_thread(thread, created)
        tput = b.throughput()
        peak = {label: _memory.server_memory(b.pid(label)) for label in running}
        print_throughput(b, tput)
        stream = b.stream()
        print_stream(stream)
        print_memory(b, idle, peak)
        images = b.images()
        print_images(images)
        buckets = b.buckets()
        print_buckets(buckets)
        brokered = b.brokered()
        print_brokered(brokered)
        sessions = b.sessions()
        print_sessions(sessions)
        print_targets(b, inline, thread, tput, stream, idle, images, buckets, brokered, sessions)
    print_machine([], machine_info())
    return 0


if __name__ == "__main__":
    exit_with("suite", main)
