"""Network policies tried with real packets, in namespaces this test makes (netrig.py).

Each test runs `sandboxd run --json` inside the rig's run namespace (the whole service path:
sandbox config, runner, proxy or slirp4netns, the stored execution) and asserts what the
sandboxed code could and could not reach. No packet can leave the rig: the run namespace's only
routes lead to the rig's upstream namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .netrig import INTERNET, METADATA, PRIVATE, RUN_ADDR, NetRig

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("slirp4netns") is None,
    reason="needs root, iproute2 and slirp4netns to build the test network",
)

#: Host uids for these runs, apart from every other suite's.
_ENV = {"SANDBOXD_SANDBOX_UID_BASE": "320000", "SANDBOXD_THREAD_UID_BASE": "7000000"}

_SANDBOXES = {
    "allow": ["--network", "allowlist", "--allow", "allowed.test", "--allow", "*.allowed.test",
              "--allow", "other.test:8443", "--allow", "rebind.test", "--allow", "metadata.test",
              "--allow", "loopy.test", "--allow", "runhost.test"],
    "full": ["--network", "full"],
}


@pytest.fixture(scope="module")
def rig() -> Iterator[NetRig]:
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-netrig-"))
    rig = NetRig.create(data_dir, _ENV)
    try:
        for name, args in _SANDBOXES.items():
            made = rig.sandboxd("sandboxes", "create", name, *args)
            assert made.returncode == 0, made.stderr
        yield rig
    finally:
        rig.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


def run(rig: NetRig, sandbox: str, code: str, language: str = "python") -> dict[str, Any]:
    done = rig.sandboxd("run", "--json", "--sandbox", sandbox, "--language", language, textwrap.dedent(code))
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


_FETCH = """
import sys, urllib.request
try:
    print(urllib.request.urlopen("{url}", timeout=10).read().decode().strip())
except Exception as exc:
    print("refused:", exc)
    sys.exit(3)
"""


def _decisions(result: dict[str, Any]) -> set[tuple[str, int, bool]]:
    return {(d["host"], d["port"], d["allowed"]) for d in result["network"]}


# --- allowlist: the egress proxy ---------------------------------------------------------------


def test_allowlist_lets_a_listed_name_through_the_proxy(rig: NetRig) -> None:
    result = run(rig, "allow", _FETCH.format(url="http://allowed.test/"))
    assert result["status"] == "success", result
    assert result["stdout"].strip() == f"upstream {INTERNET}:80"
    assert _decisions(result) == {("allowed.test", 80, True)}


def test_allowlist_https_goes_through_a_connect_tunnel(rig: NetRig) -> None:
    code = """
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    c.set_tunnel("www.allowed.test", 443)
    c.request("GET", "/")
    print(c.getresponse().read().decode().strip())
    """
    result = run(rig, "allow", code)
    assert result["stdout"].strip() == f"upstream {INTERNET}:443", result
    assert _decisions(result) == {("www.allowed.test", 443, True)}


def test_allowlist_works_for_curl_from_bash(rig: NetRig) -> None:
    result = run(rig, "allow", "curl -sS --max-time 10 https://allowed.test:443/ -k 2>&1 || curl -sS http://allowed.test/", "bash")
    assert f"upstream {INTERNET}:80" in result["stdout"] or f"upstream {INTERNET}:443" in result["stdout"], result


def test_allowlist_refuses_an_unlisted_name_and_reports_blocked(rig: NetRig) -> None:
    result = run(rig, "allow", _FETCH.format(url="http://denied.test/"))
    assert "403" in result["stdout"]
    assert (result["status"], result["error"]) == ("blocked", "blocked")
    assert _decisions(result) == {("denied.test", 80, False)}


def test_allowlist_ports_are_part_of_the_rule(rig: NetRig) -> None:
    code = """
    import urllib.request
    for url in ("http://other.test/", "http://other.test:8443/"):
        try:
            print(urllib.request.urlopen(url, timeout=10).read().decode().strip())
        except OSError as exc:
            print("refused:", exc)
    """
    result = run(rig, "allow", code)
    assert "403" in result["stdout"] and f"upstream {INTERNET}:8443" in result["stdout"], result
    assert _decisions(result) == {("other.test", 80, False), ("other.test", 8443, True)}


def test_allowlist_wildcard_does_not_cover_other_domains(rig: NetRig) -> None:
    result = run(rig, "allow", _FETCH.format(url="http://allowed.test.evil.test/"))
    assert result["status"] == "blocked", result


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("rebind.test", "10.0.0.0/8"),
        ("metadata.test", "169.254.0.0/16"),
        ("loopy.test", "127.0.0.0/8"),  # the host's loopback
        ("runhost.test", "an address of this host"),
    ],
)
def test_allowlist_refuses_a_listed_name_that_resolves_inward(rig: NetRig, name: str, why: str) -> None:
    """DNS rebinding: the name is on the list, but the proxy resolves it and refuses the answer."""
    result = run(rig, "allow", _FETCH.format(url=f"http://{name}/"))
    assert "403" in result["stdout"], result
    assert result["status"] == "blocked"
    [decision] = result["network"]
    assert decision["host"] == name and not decision["allowed"] and why in decision["reason"]


def test_allowlist_refuses_raw_ip_destinations(rig: NetRig) -> None:
    result = run(rig, "allow", _FETCH.format(url=f"http://{INTERNET}/"))
    assert "403" in result["stdout"] and result["status"] == "blocked", result
    assert "raw IP" in result["network"][0]["reason"]


def test_allowlist_direct_connection_bypassing_the_proxy_fails(rig: NetRig) -> None:
    code = f"""
    import errno, socket
    for target in [("{INTERNET}", 80), ("{RUN_ADDR}", 80), ("{METADATA}", 80)]:
        try:
            socket.create_connection(target, timeout=5)
            print("REACHED", target)
        except OSError as exc:
            print("unreachable", exc.errno == errno.ENETUNREACH)
    """
    result = run(rig, "allow", code)
    assert result["stdout"].split("\n")[:3] == ["unreachable True"] * 3, result


def test_allowlist_without_the_proxy_env_nothing_resolves_or_connects(rig: NetRig) -> None:
    code = """
    import os, urllib.request
    for name in [k for k in os.environ if "proxy" in k.lower()]:
        del os.environ[name]
    try:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open("http://allowed.test/", timeout=5)
        print("REACHED")
    except OSError as exc:
        print("failed", type(exc).__name__)
    """
    result = run(rig, "allow", code)
    assert result["stdout"].startswith("failed"), result
    assert result["network"] == []


def test_allowlist_namespace_has_only_loopback(rig: NetRig) -> None:
    code = "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))"
    result = run(rig, "allow", code)
    assert result["stdout"].strip() == "['lo']", result


def test_allowlist_node_fetch_fails_closed(rig: NetRig) -> None:
    """Node 20's fetch ignores HTTP(S)_PROXY: it must fail, not find another way out."""
    code = "fetch('http://allowed.test/').then(() => console.log('REACHED'), e => console.log('failed'))"
    result = run(rig, "allow", code, "node")
    assert result["stdout"].strip() == "failed", result


# --- full: slirp4netns with the operator's ranges dropped -----------------------------------------

_CONNECT = """
import socket, sys
try:
    s = socket.create_connection(("{host}", {port}), timeout=5)
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print(s.recv(4096).decode().split("\\r\\n\\r\\n")[-1].strip())
except OSError as exc:
    print("refused:", exc)
    sys.exit(3)
"""


def test_full_reaches_the_internet_stand_in(rig: NetRig) -> None:
    result = run(rig, "full", _CONNECT.format(host=INTERNET, port=80))
    assert result["status"] == "success", result
    assert result["stdout"].strip() == f"upstream {INTERNET}:80"


@pytest.mark.parametrize("target", [PRIVATE, METADATA, "10.0.2.2", RUN_ADDR])
def test_full_drops_private_metadata_and_host_addresses(rig: NetRig, target: str) -> None:
    """Private and metadata targets exist and are routed in the rig: only the rules stop them.
    10.0.2.2 is slirp's gateway (the host's loopback without --disable-host-loopback), and
    RUN_ADDR is the runner host's own address."""
    port = 18081 if target in ("10.0.2.2", RUN_ADDR) else 80
    with rig.listen("0.0.0.0", 18081):  # a "host service" on every address of the runner's host
        result = run(rig, "full", _CONNECT.format(host=target, port=port))
    assert result["stdout"].startswith("refused:"), result
    assert (result["status"], result["error"]) == ("blocked", "blocked")
    assert [(d["host"], d["allowed"]) for d in result["network"]] == [(target, False)]


def test_full_rules_cannot_be_changed_from_inside(rig: NetRig) -> None:
    code = f"""
    nft flush ruleset 2>&1 | head -1; echo "nft=$?"
    ip route add {PRIVATE}/32 dev tap0 2>&1 | head -1
    ip link set tap0 down 2>&1 | head -1
    exec 3<>/dev/tcp/{PRIVATE}/80 && echo REACHED || echo still-refused
    """
    result = run(rig, "full", code, "bash")
    assert "still-refused" in result["stdout"] and "REACHED" not in result["stdout"], result


def test_full_has_no_ipv6_egress(rig: NetRig) -> None:
    result = run(rig, "full", _CONNECT.format(host="2001:db8::10", port=80))
    assert result["stdout"].startswith("refused:"), result


def test_none_reaches_nothing(rig: NetRig) -> None:
    result = run(rig, "default", _CONNECT.format(host=INTERNET, port=80))
    assert result["stdout"].startswith("refused:") and "unreachable" in result["stdout"], result
    assert result["network"] == []


def test_no_network_helpers_outlive_their_execution(rig: NetRig) -> None:
    run(rig, "full", "print(1)")
    left = subprocess.run(["pgrep", "-x", "slirp4netns"], capture_output=True, text=True)
    assert left.stdout == "", left.stdout
