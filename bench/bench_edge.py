"""Idle-connection flood against a real server (issue #12, item 5), bounded and loopback only.

    .venv/bin/python bench/bench_edge.py [--n 19000] [--wait 40] [--server-nofile 8192]

Starts `sandboxd serve` (default settings; `--server-nofile`: under that open-file limit, soft
and hard, through prlimit) on a free 127.0.0.1 port in a temp data dir and creates a key with
the CLI. Opens N connections from 127.0.0.2, each sending a request line and
one header and then nothing, then times one keyed execute from 127.0.0.1 (30 s at most) and
watches the flood for `--wait` seconds. Prints: connections opened, refused at once (429/503),
closed with 408, still open at the end, the server's open descriptors at the peak, and the
keyed request's outcome and latency. Stops the server and deletes its temp dir at the end.
Needs root and a host that can run sandboxd, and an open-file limit above N for itself.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PARTIAL = b"POST /v1/sandbox/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=19_000)
    parser.add_argument("--wait", type=float, default=40.0)
    parser.add_argument("--server-nofile", type=int, default=0)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    root = Path(tempfile.mkdtemp(prefix="sandboxd-bench-edge-"))
    port = free_port()
    data = root / "data"
    cmd = [sys.executable, "-m", "sandboxd"]
    log = open(root / "server.log", "wb")
    wrap = ["prlimit", f"--nofile={args.server_nofile}", "--"] if args.server_nofile else []
    server = subprocess.Popen([*wrap, *cmd, "serve", "--port", str(port), "--data-dir", str(data)], stdout=log, stderr=log)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not start", file=sys.stderr)
                return 1
            time.sleep(0.2)
        out = subprocess.run([*cmd, "keys", "create", "--data-dir", str(data)], capture_output=True, text=True, check=True)
        key = next(w for w in out.stdout.split() if w.startswith("sk-"))
        print(f"server pid {server.pid}, fds before: {open_fds(server.pid)}")
        t0 = time.monotonic()
        for _ in range(args.n):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(3)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(PARTIAL)
            except OSError:
                s.close()
                break
            s.setblocking(False)
            held.append(s)
        print(f"opened {len(held)} of {args.n} in {time.monotonic() - t0:.1f} s; server fds: {open_fds(server.pid)}")
        t = time.monotonic()
        try:
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/sandbox/execute", json={"code": "print(6 * 7)"},
                headers={"Authorization": f"Bearer {key}"}, timeout=30,
            )
            outcome = f"{r.status_code} {r.text.strip()[:60]}"
        except httpx.HTTPError as exc:
            outcome = f"failed: {type(exc).__name__}"
        print(f"keyed execute during the flood: {outcome} after {time.monotonic() - t:.2f} s")
        refused = timed_out = 0
        peak = open_fds(server.pid)
        with selectors.DefaultSelector() as sel:
            for s in held:
                sel.register(s, selectors.EVENT_READ)
            end = time.monotonic() + args.wait
            open_now = len(held)
            while open_now and time.monotonic() < end:
                peak = max(peak, open_fds(server.pid))
                for k, _ in sel.select(timeout=0.5):
                    s = k.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data_ = s.recv(4096)
                    except OSError:
                        data_ = b""
                    sel.unregister(s)
                    open_now -= 1
                    if data_.startswith(b"HTTP/1.1 408"):
                        timed_out += 1
                    else:
                        refused += 1
        print(
            f"after {args.wait:.0f} s: refused at once {refused}, closed with 408 {timed_out}, "
            f"still open {open_now}; server fds at peak {peak}, now {open_fds(server.pid)}"
        )
        return 0
    finally:
        for s in held:
            s.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
