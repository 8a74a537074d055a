"""Connectors on the network side, with real packets in the test's namespaces (netrig.py).

A driver runs inside the rig's run namespace: it builds the runner as the app does
(`build_runner` with the data dir's CA and a test CA trusted upstream) and runs a
`SandboxSpec` whose `egress` holds a brokered connector for `api.test` (an HTTPS API in the
up namespace that answers 200 only with the real secret and echoes the request) and maybe a
forward. From python, node and curl the call succeeds, and the real secret is nowhere the
sandbox can see: its environment, /proc, the echoed body. (The server-level end-to-end test,
keys and connectors through the API, is the lead's.)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxd.runtime.network import CertificateAuthority

from .netrig import INTERNET, NetRig

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("slirp4netns") is None,
    reason="needs root, iproute2 and slirp4netns to build the test network",
)

_ENV = {"SANDBOXD_SANDBOX_UID_BASE": "330000", "SANDBOXD_THREAD_UID_BASE": "7100000"}
SECRET = "sk-test-" + secrets.token_hex(16)
PLACEHOLDER = "sandboxd-placeholder-" + secrets.token_hex(8)

_DRIVER = r"""
import asyncio, json, sys
from dataclasses import asdict
from sandboxd.app import build_runner
from sandboxd.config import Settings
from sandboxd.runtime import Limits, SandboxSpec
from sandboxd.runtime.network import Brokered, Egress, Forward, NetworkPolicy, parse_rule

job = json.loads(sys.stdin.read())
settings = Settings(data_dir=job["data_dir"], broker_upstream_ca_file=job["upstream_ca"])
egress = Egress(
    brokered=tuple(Brokered(b["connector"], tuple(parse_rule(h) for h in b["hosts"]), b["header"],
                            b["template"], b["placeholder"], b["secret"]) for b in job["brokered"]),
    forwards=tuple(Forward(**f) for f in job["forwards"]),
)
spec = SandboxSpec(
    language=job["language"], code=job["code"].encode(), env=job["env"],
    network=NetworkPolicy.parse(job["mode"], job["allow"]), egress=egress,
    limits=Limits(timeout_s=60),
)

async def main():
    runner = build_runner(settings, role="run")
    try:
        result = await runner.run(spec)
    finally:
        await runner.close()
    out = asdict(result)
    out["status"] = result.status.value
    out["stdout"], out["stderr"] = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    print(json.dumps(out))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def rig() -> Iterator[NetRig]:
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-connrig-"))
    rig = NetRig.create(data_dir, _ENV)
    try:
        test_ca = CertificateAuthority.load_or_create(data_dir / "test-ca")
        certs = data_dir / "api-certs"
        certs.mkdir()
        for name in ("api.test", "other-api.test"):
            chain, key = test_ca.leaf(name)
            (certs / f"{name}.pem").write_bytes(chain + key)
        (data_dir / "upstream-ca.pem").write_bytes(test_ca.cert_pem)
        with rig.https_api(certs, SECRET):
            yield rig
    finally:
        rig.destroy()
        shutil.rmtree(data_dir, ignore_errors=True)


def run(
    rig: NetRig,
    language: str,
    code: str,
    *,
    mode: str = "allowlist",
    allow: tuple[str, ...] = ("allowed.test", "other-api.test"),
    brokered: bool = True,
    hosts: tuple[str, ...] = ("api.test",),
    forwards: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    job = {
        "data_dir": str(rig.data_dir / "server"),
        "upstream_ca": str(rig.data_dir / "upstream-ca.pem"),
        "language": language,
        "code": textwrap.dedent(code),
        "env": {"API_TOKEN": PLACEHOLDER} if brokered else {},
        "mode": mode,
        "allow": list(allow),
        "brokered": [{
            "connector": "api", "hosts": list(hosts), "header": "Authorization",
            "template": "Bearer {secret}", "placeholder": PLACEHOLDER, "secret": SECRET,
        }] if brokered else [],
        "forwards": list(forwards),
    }
    done = rig.exec(sys.executable, "-c", _DRIVER, input=json.dumps(job), timeout=120)
    assert done.returncode == 0 and done.stdout, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert SECRET not in done.stdout and SECRET not in done.stderr, "the secret reached the sandbox's output"
    return result


def _brokered(result: dict[str, Any]) -> list[tuple[str, int, str | None, int | None]]:
    return [(d["host"], d["port"], d["method"], d["status"]) for d in result["network"] if d["connector"] == "api"]


_PY_CALL = """
import json, os, urllib.request
req = urllib.request.Request("https://api.test/v1/items?token=" + os.environ["API_TOKEN"],
                             headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})
with urllib.request.urlopen(req, timeout=20) as r:
    print(r.status)
    print(r.read().decode())
print("ENV", json.dumps(dict(os.environ)))
for path in ("/proc/self/environ", "/proc/1/environ", "/proc/self/cmdline"):
    try:
        print("PROC", path, open(path, "rb").read().decode(errors="replace"))
    except OSError as exc:
        print("PROC", path, exc)
for path in ("/etc/hosts", "/run/sandboxd/ca.pem"):
    print("FILE", path, open(path).read()[-300:])
"""


def test_python_reaches_the_connector_host_through_the_broker(rig: NetRig) -> None:
    result = run(rig, "python", _PY_CALL)
    assert result["status"] == "success", result
    lines = result["stdout"].splitlines()
    assert lines[0] == "200", result["stdout"]
    echoed = json.loads(lines[1])
    assert echoed["headers"]["Authorization"] == f"Bearer {PLACEHOLDER}"
    assert echoed["target"] == f"/v1/items?token={PLACEHOLDER}"
    assert "api.test" in result["stdout"]  # /etc/hosts maps it for clients without a proxy
    assert _brokered(result) == [("api.test", 443, "GET", 200)]


def test_node_fetch_ignores_the_proxy_and_is_brokered_transparently(rig: NetRig) -> None:
    code = """
    const r = await fetch("https://api.test/node", {headers: {Authorization: `Bearer ${process.env.API_TOKEN}`}});
    console.log(r.status);
    console.log(await r.text());
    """
    result = run(rig, "node", "(async () => {" + textwrap.dedent(code) + "})()")
    assert result["status"] == "success", result
    status, body = result["stdout"].splitlines()[:2]
    assert status == "200", result
    assert json.loads(body)["headers"]["Authorization"] == f"Bearer {PLACEHOLDER}"
    assert _brokered(result) == [("api.test", 443, "GET", 200)]


def test_curl_from_bash_is_brokered_and_gets_the_header_added(rig: NetRig) -> None:
    result = run(rig, "bash", "curl -sS --max-time 20 -w '\\n%{http_code}\\n' https://api.test/curl")
    assert result["status"] == "success", result
    body, status = result["stdout"].strip().splitlines()[-2:]
    assert status == "200", result
    assert json.loads(body)["headers"]["Authorization"] == f"Bearer {PLACEHOLDER}"


def test_another_host_gets_only_the_placeholder(rig: NetRig) -> None:
    code = """
    import os, ssl, urllib.request, urllib.error
    ctx = ssl._create_unverified_context()  # the test's upstream CA is not the sandbox's to trust
    req = urllib.request.Request("https://other-api.test/", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})
    try:
        urllib.request.urlopen(req, timeout=20, context=ctx)
    except urllib.error.HTTPError as exc:
        print(exc.code)
        print(exc.read().decode())
    """
    result = run(rig, "python", code)
    status, body = result["stdout"].splitlines()[:2]
    assert status == "401", result
    assert json.loads(body)["headers"]["Authorization"] == f"Bearer {PLACEHOLDER}"
    assert _brokered(result) == []


def test_the_connector_host_is_reachable_only_for_brokering(rig: NetRig) -> None:
    """Not in the allowlist, yet brokered on its ports; another port of it stays refused."""
    code = """
    curl -sS --max-time 20 -o /dev/null -w '%{http_code}\\n' https://api.test/ 
    curl -sS --max-time 20 -o /dev/null -w '%{http_code}\\n' https://api.test:8443/ 2>&1
    curl -sS --max-time 20 -o /dev/null -w '%{http_code}\\n' -x '' --noproxy '*' https://api.test:8443/ 2>&1
    true
    """
    result = run(rig, "bash", code, mode="none", allow=())
    lines = result["stdout"].splitlines()
    assert lines[0] == "200", result
    assert "403" in lines[1], result  # the proxy: api.test:8443 is no connector port, nor listed
    assert "200" not in lines[2], result  # straight out: 127.0.0.1:8443 has no listener
    assert any(d["host"] == "api.test" and d["port"] == 8443 and not d["allowed"] for d in result["network"])


def test_none_with_a_forward_reaches_its_target_and_nothing_else(rig: NetRig) -> None:
    code = f"""
    import socket
    s = socket.create_connection(("127.0.0.1", 15432), timeout=10)
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print(s.recv(1000).decode().splitlines()[-1])
    for where in (("{INTERNET}", 80), ("127.0.0.1", 3128), ("127.0.0.1", 443)):
        try:
            socket.create_connection(where, timeout=3)
            print("reached", where)
        except OSError as exc:
            print("refused", where)
    """
    forward = {"connector": "db", "port": 15432, "host": INTERNET, "upstream_port": 80}
    result = run(rig, "python", code, mode="none", allow=(), brokered=False, forwards=(forward,))
    assert result["status"] == "success", result
    lines = result["stdout"].splitlines()
    assert lines[0] == f"upstream {INTERNET}:80", result
    assert all(line.startswith("refused") for line in lines[1:]), result
    [decision] = result["network"]
    assert (decision["connector"], decision["host"], decision["port"], decision["count"]) == ("db", INTERNET, 80, 1)


def test_full_mode_brokers_connector_hosts_and_tunnels_other_names(rig: NetRig) -> None:
    code = """
    curl -sS --max-time 20 -o /dev/null -w '%{http_code}\\n' https://api.test/
    curl -sS --max-time 20 http://allowed.test/
    """
    result = run(rig, "bash", code, mode="full", allow=())
    lines = result["stdout"].splitlines()
    assert lines[0] == "200", result
    assert lines[1] == f"upstream {INTERNET}:80", result
    assert _brokered(result) == [("api.test", 443, "GET", 200)]


_NUL_NAMES = r"""
import socket
def ask(line):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(line)
    out = b""
    while data := s.recv(4096):
        out += data
    return out.decode("latin-1").splitlines()[0] if out else "closed"
print(ask(b"GET http://other.test/ HTTP/1.1\r\nHost: other.test\r\n\r\n"))
print(ask(b"GET http://other.test\x00" + SUFFIX + b"/ HTTP/1.1\r\nHost: other.test\r\n\r\n"))
print(ask(b"CONNECT other.test\x00" + SUFFIX + b":80 HTTP/1.1\r\n\r\n"))
print(ask(b"CONNECT other.test\x00" + SUFFIX + b":443 HTTP/1.1\r\n\r\n"))
"""


@pytest.mark.parametrize(
    ("allow", "hosts", "suffix"),
    [(("*.allowed.test",), None, ".allowed.test"), ((), ("*.api.test",), ".api.test")],
    ids=["wildcard-allowlist", "wildcard-connector"],
)
def test_a_nul_in_a_name_under_a_wildcard_reaches_nothing(
    rig: NetRig, allow: tuple[str, ...], hosts: tuple[str, ...] | None, suffix: str
) -> None:
    """glibc resolves a name only up to a NUL: `other.test\\0.allowed.test` passed `*.allowed.test`
    and reached other.test. Now a name with a NUL (or any character outside [a-z0-9-_.]) is a 400."""
    code = f"SUFFIX = {suffix.encode()!r}\n" + _NUL_NAMES
    result = run(rig, "python", code, mode="allowlist" if allow else "none", allow=allow,
                 brokered=hosts is not None, hosts=hosts or ("api.test",))
    assert result["status"] == "success", result
    lines = result["stdout"].splitlines()
    assert lines[0].startswith("HTTP/1.1 403"), result  # other.test itself is not allowed
    assert all(line.startswith("HTTP/1.1 400") for line in lines[1:]), result
    assert not any(d["allowed"] for d in result["network"]), result["network"]
    assert INTERNET not in result["stdout"]


# --- end to end: a connector made with the CLI, a key bound to it, a server, the SDK -------------

_CLIENT = r"""
import json, sys, baponi, httpx
url, key, code = sys.argv[1], sys.argv[2], sys.stdin.read()
with baponi.Baponi(api_key=key, base_url=url) as sdk:
    result = sdk.execute(code)
posted = httpx.post(url + "/v1/sandbox/execute", json={"code": code}, headers={"Authorization": "Bearer " + key},
                    timeout=120).json()
stored = httpx.get(url + "/v1/executions/" + posted["trace_id"], headers={"Authorization": "Bearer " + key}).json()
print(json.dumps({"stdout": result.stdout, "stderr": result.stderr, "success": result.success, "stored": stored}))
"""


def test_brokered_connector_end_to_end_through_the_server(rig: NetRig) -> None:
    """`connectors create --type http` (secret on stdin), `keys create --connector`, a real
    server in the run namespace, the official SDK: the call to api.test is authorized, the
    sandbox sees only its placeholder, the record names the connector and the brokered request,
    and the secret is in no answer, no log and not in the database file as plaintext."""
    data = rig.data_dir / "e2e"
    made = rig.exec(sys.executable, "-m", "sandboxd", "connectors", "create", "api", "--type", "http",
                    "--host", "api.test", "--env-var", "API_TOKEN", "--secret-file", "-", "--data-dir", str(data),
                    input=SECRET + "\n")
    assert made.returncode == 0, made.stderr
    key = rig.exec(sys.executable, "-m", "sandboxd", "keys", "create", "--connector", "api", "--data-dir", str(data))
    assert key.returncode == 0, key.stderr
    port = 18080 + secrets.randbelow(1000)
    log = (rig.data_dir / "e2e-server.log").open("wb")
    server = subprocess.Popen(
        rig._enter(sys.executable, "-m", "sandboxd", "serve", "--port", str(port), "--data-dir", str(data)),
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **rig.env, "SANDBOXD_BROKER_UPSTREAM_CA_FILE": str(rig.data_dir / "upstream-ca.pem")},
    )
    try:
        deadline = time.monotonic() + 90
        while rig.exec("curl", "-sf", f"http://127.0.0.1:{port}/ready").returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        code = textwrap.dedent("""
            import json, os, urllib.request
            req = urllib.request.Request("https://api.test/e2e", headers={"Authorization": "Bearer " + os.environ["API_TOKEN"]})
            with urllib.request.urlopen(req, timeout=20) as r:
                print(r.status, json.loads(r.read())["headers"]["Authorization"])
            print(os.environ["API_TOKEN"])
        """)
        done = rig.exec(sys.executable, "-c", _CLIENT, f"http://127.0.0.1:{port}", key.stdout.strip(), input=code,
                        timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    answer = json.loads(done.stdout)
    assert answer["success"], answer
    assert len(answer["stdout"].split()) == 4, answer
    status, bearer, echoed, placeholder = answer["stdout"].split()
    assert (status, bearer) == ("200", "Bearer") and echoed == placeholder and placeholder.startswith("sandboxd-api-")
    stored = answer["stored"]
    assert stored["connectors"] == [{"name": "api", "type": "http"}]
    assert [(d["connector"], d["host"], d["port"], d["method"], d["status"]) for d in stored["network"]] == [
        ("api", "api.test", 443, "GET", 200)
    ]
    on_disk = b"".join(p.read_bytes() for p in data.iterdir() if p.name.startswith("sandboxd.db"))
    everything = done.stdout + done.stderr + made.stdout + made.stderr + (rig.data_dir / "e2e-server.log").read_text()
    assert SECRET not in everything and SECRET.encode() not in on_disk
