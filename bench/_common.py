"""Shared by the bench scripts: a real `sandboxd serve` on 127.0.0.1, timing and stats helpers.

Imported as `from _common import ...`: the scripts run as `python bench/<name>.py`, which puts
bench/ on sys.path. Each script checks for httpx itself before importing this module.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TypeVar

import httpx

HOST = "127.0.0.1"  # the only address the bench scripts ever talk to
TOOLS_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

T = TypeVar("T")


# --- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


@dataclass
class BenchServer:
    root: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)  # SANDBOXD_* settings over os.environ
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def run_dir(self) -> Path:
        """/run/sandboxd/<instance>: where this data dir's server mounts its storage.

        As Settings.instance_id and Settings.storage_mount_point (src/sandboxd/config.py):
        the first 12 hex digits of sha256 of the absolute data dir, which is what we pass.
        """
        instance = hashlib.sha256(str(self.data_dir.absolute()).encode()).hexdigest()[:12]
        return Path("/run/sandboxd") / instance

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def start(self, timeout_s: float = 60) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sandboxd",
                    "serve",
                    "--host",
                    HOST,
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout_s
        with httpx.Client(trust_env=False, timeout=1) as c:  # never a proxy: loopback only
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"sandboxd exited with {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    if c.get(f"{self.url}/ready").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise RuntimeError(f"sandboxd not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def client(self, key: str, timeout_s: float) -> httpx.Client:
        """A keep-alive client authenticated with `key`, never through a proxy (loopback only)."""
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
            trust_env=False,
        )

    def languages(self) -> list[str]:
        with httpx.Client(trust_env=False, timeout=10) as c:
            return list(c.get(f"{self.url}/ready").json()["languages"])

    def create_key(self) -> str:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "sandboxd",
                "keys",
                "create",
                "--name",
                "bench",
                "--data-dir",
                str(self.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
            env={**os.environ, **self.env},
        )
        if r.returncode != 0 or len(r.stdout.splitlines()) != 1:
            raise RuntimeError(f"sandboxd keys create failed ({r.returncode}): {r.stderr}")
        return r.stdout.strip()

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM: the server unmounts its storage itself; SIGKILL after `timeout_s`."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def leftover_mounts(self) -> list[str]:
        prefix = str(self.run_dir) + "/"
        return [p for p in mount_points() if p.startswith(prefix) or p == str(self.run_dir)]

    def unmount_leftovers(self) -> list[str]:
        """Unmount what a killed server left under its /run/sandboxd/<instance>; returns them."""
        left = self.leftover_mounts()
        for point in sorted(left, reverse=True):  # deepest first
            r = subprocess.run(
                ["umount", point], check=False, capture_output=True, env=TOOLS_ENV, timeout=60
            )
            if r.returncode != 0:
                lazy = ["umount", "-l", point]
                subprocess.run(lazy, check=False, capture_output=True, env=TOOLS_ENV, timeout=60)
        for d in (self.run_dir / "storage", self.run_dir):  # only if empty
            with contextlib.suppress(OSError):
                d.rmdir()
        return left


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Series:
    label: str = ""
    samples_ms: list[float] = field(default_factory=list)
    inner_ms: list[float] = field(default_factory=list)  # the server's duration_ms (bwrap to exit)

    def median(self) -> float:
        return statistics.median(self.samples_ms)

    def p95(self) -> float:
        ordered = sorted(self.samples_ms)  # nearest rank
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def inner_median(self) -> float:
        return statistics.median(self.inner_ms)


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """Call `fn`; its wall time in ms and what it returned."""
    start = time.perf_counter()
    inner = fn()
    return (time.perf_counter() - start) * 1000, inner


def machine_info() -> list[str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"nproc: {len(os.sched_getaffinity(0))} (cpu_count {os.cpu_count()}), cpu: {cpu}",
        f"load average (1/5/15 min): {load}",
        f"kernel: {platform.release()}, python (server): {platform.python_version()}",
    ]


def print_machine(before: list[str], after: list[str] | None = None) -> None:
    """The machine_info() taken before measuring, and the load average of one taken after."""
    for line in before:
        print(f"before  {line}")
    if after is not None:
        print(f"after   {after[1]}")


# --- one benchmark run --------------------------------------------------------------------


@dataclass
class Running:
    """A started server and a key of its default organization."""

    server: BenchServer
    key: str
    startup_ms: float


@dataclass
class Session:
    """What every benchmark starts from: its arguments, the machine, a running server, a key."""

    args: argparse.Namespace
    command: str
    before: list[str]
    server: BenchServer
    key: str
    startup_ms: float


def arguments(doc: str, *, min_n: int, default_n: int = 50) -> argparse.ArgumentParser:
    """The parser every script starts from: `--n` samples of each series (checked by `parse`)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, default=default_n, help=f"measured samples of each (>= {min_n})"
    )
    parser.set_defaults(min_n=min_n)
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.n < args.min_n:
        parser.error(f"--n must be at least {args.min_n}")
    return args


def command_line() -> str:
    """How this script was started, for the printed header."""
    command = shlex.join(sys.orig_argv)
    if os.environ.get("UV_RUN_RECURSION_DEPTH"):
        command += "   (started by `uv run`)"
    return command


@contextlib.contextmanager
def serving(
    name: str, envs: dict[str, dict[str, str]], *, stop_timeout_s: float = 30
) -> Iterator[dict[str, Running]]:
    """One real server per entry of `envs` (its settings), each in its own temp dir, with a key.

    Always stops them and cleans up; SIGTERM is turned into SystemExit so the cleanup also runs
    when the run is interrupted.
    """

    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    servers = {
        label: BenchServer(
            root=Path(tempfile.mkdtemp(prefix="sandboxd-bench-")), port=free_port(), env=env
        )
        for label, env in envs.items()
    }
    try:
        running = {}
        for label, server in servers.items():
            t0 = time.perf_counter()
            server.start()
            startup_ms = (time.perf_counter() - t0) * 1000
            running[label] = Running(server, server.create_key(), startup_ms)
        yield running
    finally:
        for server in servers.values():
            server.stop(timeout_s=stop_timeout_s)
            left = server.unmount_leftovers()  # only if the server died or had to be killed
            if left:
                print(f"{name}: unmounted left mounts: {', '.join(left)}", file=sys.stderr)
            shutil.rmtree(server.root, ignore_errors=True)


@contextlib.contextmanager
def session(name: str, doc: str, *, min_n: int, stop_timeout_s: float = 30) -> Iterator[Session]:
    """Parse `--n`, start a real server in a temp dir, create a key; always stop and clean up."""
    args = parse(arguments(doc, min_n=min_n))
    command, before = command_line(), machine_info()
    with serving(name, {"": {}}, stop_timeout_s=stop_timeout_s) as running:
        r = running[""]
        yield Session(args, command, before, r.server, r.key, r.startup_ms)


def exit_with(name: str, main: Callable[[], int]) -> None:
    """Exit with `main()`'s status; a RuntimeError (the run itself failed) is printed, status 1."""
    try:
        status = main()
    except RuntimeError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        status = 1
    sys.exit(status)
