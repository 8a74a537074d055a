"""A two-namespace network made by the test, so egress policies are tried on real packets.

    [run ns]  sandboxd (the runner, its proxy, slirp4netns) ── veth ──  [up ns] fake upstreams
     198.51.100.2/24                                                    198.51.100.1/24 and, on lo:
     routes only to the up ns, no default route                        203.0.113.10  "the internet"
                                                                       203.0.113.20  api.test (HTTPS,
                                                                         started on demand)
                                                                       10.99.0.10    "private"
                                                                       169.254.169.254 "metadata"

Nothing leaves these namespaces: the run ns has no route but the ones to the up ns, and the up
ns has no route at all beyond its own link. Commands in the run ns see the rig's hosts file
over /etc/hosts (a private mount namespace; not `ip netns exec`, whose fresh /sys would hide
the cgroup hierarchy), and a resolv.conf that points at a loopback with no DNS server, so no
query leaves either. The fake upstream answers every request with the address
and port it was reached on, so a test can tell which target it actually reached.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

INTERNET = "203.0.113.10"
API = "203.0.113.20"
PRIVATE = "10.99.0.10"
METADATA = "169.254.169.254"
RUN_ADDR = "198.51.100.2"
UP_ADDR = "198.51.100.1"
UPSTREAM_PORTS = (80, 443, 8443)

HOSTS = f"""127.0.0.1 localhost
{INTERNET} allowed.test www.allowed.test other.test
{API} api.test other-api.test
{PRIVATE} rebind.test
{METADATA} metadata.test
127.0.0.1 loopy.test
{RUN_ADDR} runhost.test
"""

_UPSTREAM = r"""
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # api.test's own :443 beside it
    s.bind(("0.0.0.0", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        def answer(c=c):
            try:
                c.settimeout(5); c.recv(65536)
                host, p = c.getsockname()
                body = f"upstream {host}:{p}\n".encode()
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            finally:
                c.close()
        threading.Thread(target=answer, daemon=True).start()
for port in map(int, sys.argv[1:]):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


_HTTPS_API = r"""
import json, os, socket, ssl, sys, threading
address, cert_dir = sys.argv[1], sys.argv[2]
secret = sys.stdin.readline().strip()
contexts = {}
for name in os.listdir(cert_dir):
    if name.endswith(".pem"):
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(os.path.join(cert_dir, name))
        contexts[name[:-4]] = ctx
front = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
front.load_cert_chain(os.path.join(cert_dir, sorted(contexts)[0] + ".pem"))
def pick(obj, name, _):
    if name in contexts:
        obj.context = contexts[name]
front.sni_callback = pick
def answer(c):
    try:
        c.settimeout(10)
        t = front.wrap_socket(c, server_side=True)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = t.recv(65536)
            if not chunk:
                return
            head += chunk
        lines = head.split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        status = "200 OK" if auth == "Bearer " + secret else "401 Unauthorized"
        body = json.dumps({"target": lines[0].split(" ")[1], "headers": headers}).encode()
        t.sendall(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + body)
        t.close()
    except (OSError, ValueError):
        pass
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the exact address wins over 0.0.0.0
s.bind((address, 443)); s.listen(64)
print("ready", flush=True)
threading.Thread(target=lambda: sys.stdin.read() or os._exit(0), daemon=True).start()
while True:
    c, _ = s.accept()
    threading.Thread(target=answer, args=(c,), daemon=True).start()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass
class NetRig:
    run_ns: str
    up_ns: str
    data_dir: Path
    upstream: subprocess.Popen[str]
    env: dict[str, str]

    @classmethod
    def create(cls, data_dir: Path, env: dict[str, str]) -> NetRig:
        tag = secrets.token_hex(3)
        run_ns, up_ns = f"sbxt-{tag}-run", f"sbxt-{tag}-up"
        _ip("netns", "add", run_ns)
        _ip("netns", "add", up_ns)
        rig = cls(run_ns, up_ns, data_dir, None, env)  # type: ignore[arg-type]
        try:
            _ip("link", "add", "vrun", "netns", run_ns, "type", "veth", "peer", "name", "vup", "netns", up_ns)
            for ns, dev, addr in ((run_ns, "vrun", RUN_ADDR), (up_ns, "vup", UP_ADDR)):
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
            for target in (INTERNET, API, PRIVATE, METADATA):
                _ip("-n", up_ns, "addr", "add", f"{target}/32", "dev", "lo")
                _ip("-n", run_ns, "route", "add", f"{target}/32", "via", UP_ADDR)
            (data_dir / "hosts").write_text(HOSTS)
            (data_dir / "resolv.conf").write_text("nameserver 127.0.0.1\n")
            rig.upstream = subprocess.Popen(
                ["ip", "netns", "exec", up_ns, sys.executable, "-c", _UPSTREAM, *map(str, UPSTREAM_PORTS)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
            assert rig.upstream.stdout is not None and rig.upstream.stdout.readline().strip() == "ready"
        except BaseException:
            rig.destroy()
            raise
        return rig

    def exec(self, *argv: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """A command inside the run namespace (its /etc/hosts is the rig's)."""
        return subprocess.run(
            self._enter(*argv),
            capture_output=True, text=True, timeout=timeout, input=input, env={**os.environ, **self.env},
        )

    def _enter(self, *argv: str) -> list[str]:
        files = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
        return [
            "nsenter", f"--net=/run/netns/{self.run_ns}",
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", files, "sh", str(self.data_dir / "hosts"), str(self.data_dir / "resolv.conf"),
            *argv,
        ]

    def sandboxd(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return self.exec(sys.executable, "-m", "sandboxd", *args, "--data-dir", str(self.data_dir), timeout=timeout)

    @contextlib.contextmanager
    def listen(self, host: str, port: int) -> Iterator[None]:
        """A 'host service' in the run namespace (what the sandbox must never reach)."""
        with subprocess.Popen(
            self._enter(sys.executable, "-c", _UPSTREAM.replace('"0.0.0.0"', repr(host)), str(port)),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ) as proc:
            try:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
                yield
            finally:
                proc.kill()

    @contextlib.contextmanager
    def https_api(self, cert_dir: Path, secret: str) -> Iterator[None]:
        """An HTTPS API at API:443 in the up ns (cert_dir/<name>.pem per served name, chain and
        key): 200 only with `Authorization: Bearer <secret>`, echoing the request's target and
        headers as JSON. The secret goes in on stdin."""
        with subprocess.Popen(
            ["ip", "netns", "exec", self.up_ns, sys.executable, "-c", _HTTPS_API, API, str(cert_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        ) as proc:
            try:
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(secret + "\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == "ready"
                yield
            finally:
                proc.kill()

    def destroy(self) -> None:
        if self.upstream is not None:
            self.upstream.kill()
            self.upstream.communicate()
        for ns in (self.run_ns, self.up_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            Path("/run/netns", ns).exists() for ns in (self.run_ns, self.up_ns)
        ):
            time.sleep(0.05)
