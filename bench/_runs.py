"""What the bench scripts time: a bare interpreter start, and the same code through the HTTP API.

Each runner checks what it got (exit status, stdout, `success`) and raises RuntimeError on
anything unexpected, so a figure is never the time of a failure.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable

import httpx

CLEAN_ENV = {"PATH": "/usr/bin:/bin"}
EXECUTE = "/v1/sandbox/execute"

# language -> (bare argv, code sent to the server, expected stdout)
CASES: dict[str, tuple[list[str], str, str]] = {
    "python": (["python3", "-c", "print(1+1)"], "print(1+1)", "2\n"),
    "node": (["node", "-e", "console.log(1+1)"], "console.log(1+1)", "2\n"),
    "bash": (["bash", "-c", "echo 2"], "echo 2", "2\n"),
}


def executable(name: str) -> str:
    """`name` resolved on CLEAN_ENV's PATH: the bare run starts the binary the sandbox runs."""
    exe = shutil.which(name, path=CLEAN_ENV["PATH"])
    if exe is None:
        raise RuntimeError(f"{name} not found on {CLEAN_ENV['PATH']}")
    return exe


def bare_runner(argv: list[str], expected: str) -> Callable[[], None]:
    def run() -> None:
        r = subprocess.run(
            argv,
            check=False,
            env=CLEAN_ENV,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        if r.returncode != 0 or r.stdout != expected:
            raise RuntimeError(
                f"{shlex.join(argv)}: exit {r.returncode}, stdout {r.stdout!r}, {r.stderr!r}"
            )

    return run


def server_runner(
    client: httpx.Client,
    language: str,
    code: str,
    expected: str,
    thread_id: str | None = None,
) -> Callable[[], float]:
    """POST the code inline on `client` (keep-alive); the run returns the server's duration_ms."""
    body: dict[str, object] = {"code": code, "language": language, "timeout": 30}
    if thread_id is not None:
        body["thread_id"] = thread_id
    what = language if thread_id is None else f"{language} on thread {thread_id}"

    def run() -> float:
        r = client.post(EXECUTE, json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
        out = r.json()
        if out["stdout"] != expected or not out["success"]:
            raise RuntimeError(f"{what}: unexpected result {out}")
        return float(out["duration_ms"])

    return run


def interpreter_versions(paths: dict[str, str]) -> str:
    """The bare binaries measured: the sandbox runs the same host binaries (runtime/languages)."""
    parts = []
    for exe in paths.values():
        r = subprocess.run(
            [exe, "--version"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
            env=CLEAN_ENV,
        )
        first = (r.stdout or r.stderr).strip().splitlines()[:1]
        parts.append(f"{exe} {first[0] if first else '?'}")
    return "; ".join(parts)
