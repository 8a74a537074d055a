"""Network policy through the real server and the official SDK (host namespace, loopback only).

What egress reaches is tried with real packets in tests/security/test_network.py (a rig of
namespaces); here: sandbox configs from the CLI, the `blocked` result the SDK sees, the audit
record on the execution, and that the host's loopback stays out of reach under every policy.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Iterator

import baponi
import httpx
import pytest

from conftest import Server, start_server


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A service on the host's 127.0.0.1 that no sandbox may reach."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    reached: list[bool] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            reached.append(True)
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    yield sock.getsockname()[1]
    sock.close()
    assert not reached, "a sandbox reached the host's loopback service"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose name lookups cannot leave the host: in a private mount namespace its
    /etc/hosts knows only localhost and its resolv.conf names a loopback address with no DNS
    server. If the allowlist ever let an unlisted name through, the proxy's lookup would fail
    here instead of sending a query to this machine's resolver."""
    root = tmp_path_factory.mktemp("offline")
    (root / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    files = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf && shift 2 && exec "$@"'
    wrap = ("unshare", "--mount", "--propagation", "private", "sh", "-c", files, "sh",
            str(root / "hosts"), str(root / "resolv.conf"))
    (root / "data").mkdir()
    server = start_server(root / "data", wrap=wrap, auth_failures_allowed=100_000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def api_key(server: Server) -> str:
    return await server.create_key()


@pytest.fixture(scope="module")
async def egress_key(server: Server) -> str:
    return await server.create_key(sandbox="egress", network="allowlist", allow=("allowed.test", "*.pypi.org"))


def test_blocked_request_is_reported_to_the_sdk_and_recorded(server: Server, egress_key: str) -> None:
    code = "import urllib.request\nurllib.request.urlopen('http://denied.test/x', timeout=10)"
    with baponi.Baponi(api_key=egress_key, base_url=server.url) as sdk:
        result = sdk.execute(code)
    assert not result.success and result.error == "blocked"
    assert "403" in result.stderr
    auth = {"Authorization": f"Bearer {egress_key}"}
    posted = httpx.post(f"{server.url}/v1/sandbox/execute", json={"code": code}, headers=auth, timeout=60).json()
    assert posted["error"] == "blocked"
    execution = httpx.get(f"{server.url}/v1/executions/{posted['trace_id']}", headers=auth).json()
    assert execution["status"] == "blocked"
    assert execution["network"] == [
        {"host": "denied.test", "port": 80, "allowed": False, "reason": "not in this sandbox's allowlist", "count": 1,
         "connector": None, "method": None, "status": None}  # the last three: a connector's traffic
    ]


def test_a_program_that_handles_the_refusal_is_not_blocked(server: Server, egress_key: str) -> None:
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('http://denied.test/', timeout=10)\nexcept OSError:\n    print('fine')"
    with baponi.Baponi(api_key=egress_key, base_url=server.url) as sdk:
        result = sdk.execute(code)
    assert result.success and result.stdout == "fine\n" and result.error is None


def test_allowlist_sandbox_learns_the_proxy_and_nothing_else(server: Server, egress_key: str) -> None:
    code = "import os; print(os.environ['HTTPS_PROXY'], os.environ['NO_PROXY']); print(open('/proc/net/dev').read().count(':'))"
    with baponi.Baponi(api_key=egress_key, base_url=server.url) as sdk:
        result = sdk.execute(code)
    assert result.stdout.split("\n")[:2] == ["http://127.0.0.1:3128 localhost,127.0.0.1,::1", "1"], result


@pytest.mark.parametrize("sandbox", ["default", "egress"])
def test_host_loopback_is_out_of_reach(server: Server, api_key: str, egress_key: str, host_service: int, sandbox: str) -> None:
    """Directly (the sandbox's 127.0.0.1 is its own) and through the proxy (raw IP, loopback)."""
    code = f"""
import socket, urllib.request
for attempt in (lambda: socket.create_connection(("127.0.0.1", {host_service}), timeout=3),
                lambda: urllib.request.urlopen("http://127.0.0.1:{host_service}/", timeout=3)):
    try:
        attempt(); print("REACHED")
    except OSError as exc:
        print("refused", type(exc).__name__)
"""
    key = egress_key if sandbox == "egress" else api_key
    with baponi.Baponi(api_key=key, base_url=server.url) as sdk:
        result = sdk.execute(code)
    assert "REACHED" not in result.stdout and result.stdout.count("refused") == 2, result


def test_default_sandbox_has_no_proxy_and_only_loopback(server: Server, api_key: str) -> None:
    code = "import os; print(sorted(k for k in os.environ if 'proxy' in k.lower())); print(open('/proc/net/dev').read().count(':'))"
    with baponi.Baponi(api_key=api_key, base_url=server.url) as sdk:
        result = sdk.execute(code)
    assert result.stdout == "[]\n1\n"


def test_sandboxes_create_with_an_allowlist(server: Server) -> None:
    made = server.cli("sandboxes", "create", "pkgs", "--network", "allowlist", "--allow", "PyPI.org", "--allow", "*.pythonhosted.org:443")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["allow"] == ["pypi.org", "*.pythonhosted.org:443"]
    shown = json.loads(server.cli("sandboxes", "show", "pkgs").stdout)
    assert (shown["network"], shown["allow"]) == ("allowlist", ["pypi.org", "*.pythonhosted.org:443"])
    full = json.loads(server.cli("sandboxes", "create", "open", "--network", "full").stdout)
    assert (full["network"], full["allow"]) == ("full", [])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--network", "allowlist"), "needs at least one allowed domain"),
        (("--network", "allowlist", "--allow", "10.0.0.1"), "IP addresses are not allowed"),
        (("--network", "allowlist", "--allow", "localhost"), "must be a domain"),
        (("--network", "allowlist", "--allow", "x.org:70000"), "port must be 1-65535"),
        (("--network", "full", "--allow", "x.org"), "need network policy 'allowlist'"),
        (("--allow", "x.org"), "need network policy 'allowlist'"),
        (("--network", "host"), "network must be one of: none, allowlist, full"),
    ],
)
def test_sandboxes_create_refuses_bad_policies(server: Server, args: tuple[str, ...], message: str) -> None:
    done = server.cli("sandboxes", "create", "bad", *args)
    assert done.returncode != 0 and done.stdout == ""
    assert message in done.stderr
    assert server.cli("sandboxes", "show", "bad").returncode != 0  # nothing half-made
