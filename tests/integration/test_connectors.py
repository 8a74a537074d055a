"""Connectors end to end: a real server, connectors made with the real CLI (secrets on stdin),
code run in real sandboxes through the official SDK, the MCP client and raw HTTP.

What a user relies on: the sandbox can use a connector's value, and the value is redacted from
every output path (result, stored execution, event stream, webhook, MCP); it is never in the
database file as plaintext, in the server's log or in an answer of any command or API; rotating
the key file beside a live server keeps runs working; a request cannot override a connector's
variable; a connector bound to a key cannot be deleted.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import subprocess
from pathlib import Path
from typing import Any, TypeVar

import baponi
import httpx
import pytest
from _servers import EXECUTE, Pool, admin_call, pool, unique
from conftest import Server
from conftest_pg import PgServer, pg_server
from test_mcp import mcp_client, text_of
from test_webhooks import Receiver

from sandboxd.app import Admin
from sandboxd.connectors.kinds import Options

__all__ = ["pg_server", "pool"]  # fixtures

T = TypeVar("T")
NDJSON = "application/x-ndjson"


@pytest.fixture(scope="module")
def server(pool: Pool) -> Server:
    return pool.start(webhook_allow_insecure=True, webhook_backoff_s=0.2)


def make_connector(server: Server, kind: str, secret: bytes, options: Options = Options(), org: str = "default") -> str:
    name = unique(kind)

    async def go(admin: Admin) -> None:
        await admin.connectors.create(await admin.tenancy.ensure_org(org), name, kind, secret, options)

    admin_call(server, go)
    return name


def key_for(server: Server, *connectors: str, org: str = "default", sandbox: str = "default") -> tuple[str, str]:
    async def go(admin: Admin) -> tuple[str, str]:
        the_org = await admin.tenancy.ensure_org(org)
        created = await admin.keys.create(
            org=the_org, sandbox=await admin.tenancy.sandbox(the_org, sandbox),
            connectors=await admin.connectors.resolve(the_org, connectors),
        )
        return created.secret, created.record.id

    return admin_call(server, go)


def execute(server: Server, key: str, code: str, **fields: Any) -> httpx.Response:
    return httpx.post(server.url + EXECUTE, json={"code": code, **fields},
                      headers={"Authorization": f"Bearer {key}"}, timeout=120)


def cli(server: Server, *args: str, input: str | None = None, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = server.cli(*args, input=input)
    if ok:
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def stored_files(server: Server) -> bytes:
    """Everything the server keeps on disk as files: the database (and its WAL), its log."""
    found = b""
    for path in sorted(server.data_dir.iterdir()):
        if path.is_file() and path.name.startswith("sandboxd.db"):
            found += path.read_bytes()
    return found + server.log_path.read_bytes()


@pytest.fixture(scope="module")
def env_secret() -> str:
    return "sk-live-" + secrets.token_hex(20)


@pytest.fixture(scope="module")
def env_connector(server: Server, env_secret: str) -> str:
    return make_connector(server, "env", json.dumps({"OPENAI_API_KEY": env_secret, "MODE": "test-mode"}).encode())


@pytest.fixture(scope="module")
def env_key(server: Server, env_connector: str) -> str:
    return key_for(server, env_connector)[0]


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_lifecycle(server: Server, tmp_path: Path) -> None:
    """create (stdin and file), list, show, update, keys create --connector, delete refused
    while bound, then allowed after the key is revoked; no answer ever holds the secret."""
    secret = "tok-" + secrets.token_hex(16)
    name = unique("gh")
    made = cli(server, "connectors", "create", name, "--type", "http", "--host", "api.example.com",
               "--env-var", "GITHUB_TOKEN", "--secret-file", "-", input=secret + "\n")
    shown = json.loads(made.stdout)
    assert (shown["name"], shown["type"], shown["hosts"], shown["header"], shown["header_template"],
            shown["variables"]) == (name, "http", ["api.example.com"], "Authorization", "Bearer {secret}", ["GITHUB_TOKEN"])
    file = tmp_path / "db.url"
    file.write_text("postgresql://app:" + secret + "@db.example.com/sales\n")
    db = unique("db")
    cli(server, "connectors", "create", db, "--type", "postgres", "--secret-file", str(file))
    again = cli(server, "connectors", "create", name, "--type", "env", "--secret-file", "-", input="A=bbbbbbbb", ok=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    listed = [json.loads(line) for line in cli(server, "connectors", "list").stdout.splitlines()]
    assert {c["name"] for c in listed} >= {name, db}
    assert next(c for c in listed if c["name"] == db)["host"] == "db.example.com"
    key = cli(server, "keys", "create", "--connector", name, "--connector", db)
    key_id = key.stderr.split("key id ")[1].split()[0]
    assert json.loads(cli(server, "connectors", "show", name).stdout)["keys"] == [key_id]
    updated = cli(server, "connectors", "update", name, "--secret-file", "-", input="tok-" + secrets.token_hex(16))
    assert json.loads(updated.stdout)["hosts"] == ["api.example.com"]
    refused = cli(server, "connectors", "delete", name, ok=False)
    assert refused.returncode == 1 and f"bound to active API keys ({key_id})" in refused.stderr
    cli(server, "keys", "revoke", key_id)
    cli(server, "connectors", "delete", name)
    assert cli(server, "connectors", "show", name, ok=False).returncode == 1
    missing = cli(server, "connectors", "create", unique("x"), "--type", "env", "--secret-file", str(tmp_path / "nope"), ok=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    clash = cli(server, "keys", "create", "--connector", db, "--connector", db, ok=False)
    assert clash.returncode == 1 and "bound twice" in clash.stderr
    everything = made.stdout + updated.stdout + "".join(json.dumps(c) for c in listed) + refused.stderr
    assert secret not in everything and secret.encode() not in stored_files(server)


def test_two_connectors_that_set_one_variable_are_refused_on_one_key(server: Server) -> None:
    a = make_connector(server, "env", b"SHARED_TOKEN=aaaaaaaaaaaa")
    b = make_connector(server, "env", b"SHARED_TOKEN=bbbbbbbbbbbb")
    done = cli(server, "keys", "create", "--connector", a, "--connector", b, ok=False)
    assert done.returncode == 1 and "both set SHARED_TOKEN" in done.stderr


# --- what a run gets, and what it shows --------------------------------------------------------


def test_env_connector_is_usable_in_the_sandbox_and_redacted_from_the_result(
    server: Server, env_key: str, env_secret: str, env_connector: str
) -> None:
    code = (
        "import base64, hashlib, os, sys\n"
        "v = os.environ['OPENAI_API_KEY']\n"
        "print(hashlib.sha256(v.encode()).hexdigest(), os.environ['MODE'])\n"
        "print('raw', v)\n"
        "print('b64', base64.b64encode(v.encode()).decode())\n"
        "print('err', v, file=sys.stderr)\n"
    )
    with baponi.Baponi(api_key=env_key, base_url=server.url) as sdk:
        result = sdk.execute(code)
    label = f"[redacted:{env_connector}]"
    assert result.success, result
    digest, mode = result.stdout.splitlines()[0].split()
    assert digest == hashlib.sha256(env_secret.encode()).hexdigest()
    assert mode == label  # every value of an env connector is its secret
    assert result.stdout.splitlines()[1:] == [f"raw {label}", f"b64 {label}"]
    assert result.stderr == f"err {label}\n"
    posted = execute(server, env_key, code).json()
    stored = httpx.get(f"{server.url}/v1/executions/{posted['trace_id']}",
                       headers={"Authorization": f"Bearer {env_key}"}).json()
    assert stored["connectors"] == [{"name": env_connector, "type": "env"}]
    assert label in stored["stdout"] and env_secret not in json.dumps(stored)
    b64 = base64.b64encode(env_secret.encode())
    on_disk = stored_files(server)
    assert env_secret.encode() not in on_disk and b64 not in on_disk


def test_secret_split_across_writes_is_redacted_in_the_stream(server: Server, env_key: str, env_secret: str, env_connector: str) -> None:
    code = (
        "import os, sys, time\n"
        "v = os.environ['OPENAI_API_KEY']\n"
        "for i in range(0, len(v), 5):\n"
        "    sys.stdout.write(v[i:i + 5]); sys.stdout.flush(); time.sleep(0.03)\n"
        "print()\n"
    )
    lines: list[dict[str, Any]] = []
    with httpx.stream("POST", server.url + EXECUTE, json={"code": code},
                      headers={"Authorization": f"Bearer {env_key}", "Accept": NDJSON}, timeout=120) as r:
        for line in r.iter_lines():
            if line.strip():
                lines.append(json.loads(line))
    output = "".join(e["data"] for e in lines if e["type"] == "output")
    assert sum(e["type"] == "output" for e in lines) >= 1
    assert output == f"[redacted:{env_connector}]\n", lines
    trace_id = lines[0]["trace_id"]
    replay = httpx.get(f"{server.url}/v1/executions/{trace_id}/output", headers={"Authorization": f"Bearer {env_key}"},
                       timeout=60).text
    assert env_secret not in replay and f"[redacted:{env_connector}]" in replay


def test_webhook_and_mcp_results_are_redacted(server: Server, env_key: str, env_secret: str, env_connector: str) -> None:
    code = "import os; print(os.environ['OPENAI_API_KEY'])"

    async def signing_secret(admin: Admin) -> None:
        await admin.webhooks.create_secret((await admin.tenancy.org("default")).id, rotate=False)

    admin_call(server, signing_secret)
    with Receiver() as receiver:
        r = httpx.post(server.url + EXECUTE, json={"code": code, "webhook_url": receiver.url + "/hook"},
                       headers={"Authorization": f"Bearer {env_key}", "Prefer": "respond-async"}, timeout=60)
        assert r.status_code == 202, r.text
        (delivery,) = receiver.wait(1)
    assert env_secret.encode() not in delivery.body
    assert f"[redacted:{env_connector}]".encode() in delivery.body

    async def via_mcp() -> tuple[str, str]:
        async with mcp_client(server, env_key) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            result = await c.call_tool("sandbox_execute", {"code": code})
            return tools["sandbox_execute"].description or "", text_of(result)

    description, text = asyncio.run(via_mcp())
    assert env_secret not in text and f"[redacted:{env_connector}]" in text
    assert f"{env_connector} (environment): MODE, OPENAI_API_KEY" in description
    assert env_secret not in description


def test_request_cannot_set_a_connector_variable(server: Server, env_key: str, env_connector: str) -> None:
    r = execute(server, env_key, "print(1)", env_vars={"OPENAI_API_KEY": "mine"})
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "validation_error"
    assert f"'OPENAI_API_KEY' is set by the key's connector {env_connector!r}" in r.json()["message"]
    assert execute(server, env_key, "print(1)", env_vars={"OTHER_VAR": "fine"}).json()["success"]


def test_update_and_rotate_key_beside_a_live_server(server: Server) -> None:
    first, second = "first-" + secrets.token_hex(8), "second-" + secrets.token_hex(8)
    name = make_connector(server, "env", f"ROTATED_TOKEN={first}".encode())
    key, _ = key_for(server, name)
    code = "import os, hashlib; print(hashlib.sha256(os.environ['ROTATED_TOKEN'].encode()).hexdigest())"

    def seen() -> str:
        body = execute(server, key, code).json()
        assert body["success"], body
        return str(body["stdout"].strip())

    assert seen() == hashlib.sha256(first.encode()).hexdigest()
    key_file = server.data_dir / "connectors.key"
    before = key_file.read_bytes()
    rotated = cli(server, "connectors", "rotate-key")
    assert "re-encrypted" in rotated.stdout
    after = key_file.read_bytes()
    assert after != before and len(after.split()) == 1 and (key_file.stat().st_mode & 0o777) == 0o600
    assert seen() == hashlib.sha256(first.encode()).hexdigest()  # the live server reads the new key
    cli(server, "connectors", "update", name, "--secret-file", "-", input=f"ROTATED_TOKEN={second}\n")
    assert seen() == hashlib.sha256(second.encode()).hexdigest()


def test_a_missing_key_file_fails_the_run_clearly(pool: Pool) -> None:
    server = pool.start()
    name = make_connector(server, "env", b"LOST_TOKEN=lost-value-123")
    key, _ = key_for(server, name)
    key_file = server.data_dir / "connectors.key"
    key_file.rename(key_file.with_name("moved.key"))
    try:
        body = execute(server, key, "print('ran')").json()
        assert (body["success"], body["exit_code"], body["error"]) == (False, -1, "connector_error")
        assert f"the secret of connector {name!r} cannot be opened" in body["error_message"]
        assert "ran" not in body["stdout"]
    finally:
        key_file.with_name("moved.key").rename(key_file)
    assert execute(server, key, "print('ran')").json()["stdout"] == "ran\n"


def test_connectors_belong_to_their_organization(server: Server) -> None:
    other = make_connector(server, "env", b"ORG_TOKEN=other-org-value", org="conn-other")
    done = cli(server, "keys", "create", "--connector", other, ok=False)
    assert done.returncode == 1 and f"no connector {other!r} in organization 'default'" in done.stderr
    assert other not in cli(server, "connectors", "list").stdout


# --- a database connector: a real PostgreSQL -------------------------------------------------------


def test_postgres_connector_reaches_its_database_and_nothing_else(server: Server, pg_server: PgServer) -> None:
    """psql in the sandbox (network `none`) reaches the database through the port the server
    forwards inside its namespace; the database's real port stays out of reach, with or
    without the connector; the password is redacted; the forward is in the audit record."""
    role, password = unique("app").replace("-", "_"), "pw-" + secrets.token_hex(12)
    pg_server.execute("postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    name = make_connector(server, "postgres", f"postgresql://{role}:{password}@127.0.0.1:{pg_server.port}/postgres".encode())
    key, _ = key_for(server, name)
    plain_key, _ = key_for(server)
    psql = pg_server.bindir / "psql"
    code = (
        f"{psql} -At -c 'select current_user, 40 + 2' && echo \"$DATABASE_URL\" && echo $PGHOST:$PGPORT\n"
        f"{psql} -h 127.0.0.1 -p {pg_server.port} -At -c 'select 1' 2>/dev/null || echo 'real port: unreachable'\n"
    )
    body = execute(server, key, code, language="bash").json()
    assert body["success"], body
    assert body["stdout"].splitlines() == [
        f"{role}|42",
        f"postgresql://{role}:[redacted:{name}]@127.0.0.1:5432/postgres",
        "127.0.0.1:5432",
        "real port: unreachable",
    ]
    stored = httpx.get(f"{server.url}/v1/executions/{body['trace_id']}", headers={"Authorization": f"Bearer {key}"}).json()
    assert stored["connectors"] == [{"name": name, "type": "postgres"}]
    (forwarded,) = [d for d in stored["network"] if d["connector"] == name]
    assert (forwarded["host"], forwarded["port"], forwarded["allowed"], forwarded["count"]) == ("127.0.0.1", pg_server.port, True, 1)
    without = execute(server, plain_key, f"PGHOST=127.0.0.1 PGPORT=5432 PGUSER={role} {psql} -At -c 'select 1' || echo unreachable",
                      language="bash").json()
    assert without["stdout"].strip() == "unreachable", without


def test_a_brokered_connectors_network_variables_cannot_be_set_by_the_request_or_another_connector(server: Server) -> None:
    http = make_connector(server, "http", b"tok-0123456789", Options(hosts=("api.example.com",), env_var="GH_TOKEN"))
    key, _ = key_for(server, http)
    r = execute(server, key, "print(1)", env_vars={"SSL_CERT_FILE": "/tmp/mine.pem"})
    assert r.status_code == 400 and "'SSL_CERT_FILE' is set by the network" in r.json()["message"], r.text
    body = execute(server, key, "import os; print(os.environ['GH_TOKEN'].startswith('sandboxd-'), os.environ['SSL_CERT_FILE'])").json()
    assert body["stdout"] == "True /run/sandboxd/ca.pem\n", body
    env = make_connector(server, "env", b"SSL_CERT_FILE=/tmp/elsewhere.pem")
    done = cli(server, "keys", "create", "--connector", http, "--connector", env, ok=False)
    assert done.returncode == 1 and f"connector {env!r} sets SSL_CERT_FILE" in done.stderr
