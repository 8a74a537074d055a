"""The admin API (/admin/v1) against a real server: each resource's lifecycle with an admin
token, roles, organizations, the key's secret shown once and honoured by the `baponi` SDK until
revoked or expired, credentials kept apart from /v1's, and the failed-auth lockout.

Members and their tokens are made in-process against the server's database, as
`sandboxd members add|token` does.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import baponi
import httpx
import pytest

from sandboxd.app import open_admin

ADMIN = "/admin/v1"


@pytest.fixture(scope="module")
def admin_server(server_factory: Any) -> Any:
    return server_factory(auth_failures_allowed=100_000)


def token_for(server: Any, role: str, org: str = "default") -> str:
    """A new member of `org` with `role`, and an admin token of theirs."""

    async def go() -> str:
        admin = await open_admin(server.settings)
        try:
            the_org = await admin.tenancy.ensure_org(org)
            member = await admin.members.add(the_org, f"{role}-{uuid.uuid4().hex[:8]}@example.com", role)
            return (await admin.members.issue_token(member, "test")).secret
        finally:
            await admin.close()

    return asyncio.run(go())


def client(server: Any, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url + ADMIN, headers={"Authorization": f"Bearer {token}"}, timeout=120)


@pytest.fixture(scope="module")
def owner(admin_server: Any) -> httpx.Client:
    """An owner of `default`: an operator of the installation."""
    with client(admin_server, token_for(admin_server, "owner")) as c:
        yield c  # type: ignore[misc]


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if response.content else None


def refused(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text
    return response.json()["message"]  # type: ignore[no-any-return]


# --- the document ----------------------------------------------------------------------------


def test_the_admin_api_has_its_own_document(admin_server: Any) -> None:
    admin_doc = httpx.get(f"{admin_server.url}{ADMIN}/openapi.json", timeout=30).json()
    assert {"/keys", "/sandboxes", "/members", "/webhook-secret"} <= admin_doc["paths"].keys()
    assert "AdminToken" in admin_doc["components"]["securitySchemes"]
    main_doc = httpx.get(f"{admin_server.url}/openapi.json", timeout=30).json()
    assert not any("admin" in path or path == "/keys" for path in main_doc["paths"])


# --- keys ------------------------------------------------------------------------------------


def test_a_key_is_shown_once_works_with_the_sdk_and_stops_when_revoked(admin_server: Any, owner: httpx.Client) -> None:
    me = ok(owner.get("/whoami"))
    created = ok(owner.post("/keys", json={"name": "sdk"}), 201)
    secret, key = created["secret"], created["key"]
    assert secret.startswith(key["prefix"]) and key["status"] == "active"
    assert key["created_by"] == me["member_id"] and key["sandbox"] == "default" and key["image"] == "host"

    with baponi.Baponi(api_key=secret, base_url=admin_server.url) as sdk:
        assert sdk.execute("print(6 * 7)").stdout == "42\n"

    listed = {k["id"]: k for k in ok(owner.get("/keys"))}
    assert listed[key["id"]]["prefix"] == key["prefix"]
    assert secret not in owner.get("/keys").text and secret not in owner.get(f"/keys/{key['id']}").text
    deadline = time.monotonic() + 10  # the last use is written in the background
    while ok(owner.get(f"/keys/{key['id']}"))["last_used_at"] is None:
        assert time.monotonic() < deadline, "last_used_at was never recorded"
        time.sleep(0.1)

    revoked = ok(owner.delete(f"/keys/{key['id']}"))
    assert revoked["status"] == "revoked" and revoked["revoked_at"]
    with baponi.Baponi(api_key=secret, base_url=admin_server.url) as sdk:
        with pytest.raises(baponi.AuthenticationError):
            sdk.execute("print(1)")


def test_an_expired_key_is_refused(admin_server: Any, owner: httpx.Client) -> None:
    expires = datetime.now(timezone.utc) + timedelta(seconds=3)
    created = ok(owner.post("/keys", json={"name": "short", "expires_at": expires.isoformat()}), 201)
    assert datetime.fromisoformat(created["key"]["expires_at"]) == expires
    headers = {"Authorization": f"Bearer {created['secret']}"}
    run = {"code": "print(1)", "language": "python"}
    assert httpx.post(f"{admin_server.url}/v1/sandbox/execute", json=run, headers=headers, timeout=60).status_code == 200
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.2)
    answer = httpx.post(f"{admin_server.url}/v1/sandbox/execute", json=run, headers=headers, timeout=60)
    assert answer.status_code == 401, answer.text
    assert ok(owner.get(f"/keys/{created['key']['id']}"))["status"] == "expired"
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    assert "future" in refused(owner.post("/keys", json={"expires_at": past}), 400, "validation_error")


def test_a_key_lists_what_it_binds(owner: httpx.Client) -> None:
    sandbox, volume, storage, connector = name("sbx"), name("vol"), name("bkt"), name("con")
    ok(owner.post("/sandboxes", json={"name": sandbox, "memory_mib": 256}), 201)
    ok(owner.post("/volumes", json={"name": volume, "quota_mib": 10}), 201)
    ok(owner.post("/storage", json={
        "name": storage, "type": "s3", "bucket": "data", "endpoint": "http://127.0.0.1:9",
        "credentials": {"access_key_id": "AKIA", "secret_access_key": "s3cr3t-value"},
    }), 201)
    ok(owner.post("/connectors", json={"name": connector, "type": "env", "secret": {"TOKEN": "t0ps3cret"}}), 201)
    created = ok(owner.post("/keys", json={
        "sandbox": sandbox, "volumes": [{"name": volume, "read_only": True}],
        "storage": [{"name": storage, "prefix": "team/a"}], "connectors": [connector],
    }), 201)
    key = created["key"]
    assert key["sandbox"] == sandbox and key["image"] == "host"
    assert key["volumes"] == [{"name": volume, "read_only": True}]
    assert key["storage"] == [{"name": storage, "read_only": False, "prefix": "team/a"}]
    assert key["connectors"] == [connector]
    assert ok(owner.get(f"/storage/{storage}"))["keys"] == [key["id"]]
    shown = owner.get(f"/connectors/{connector}").text + owner.get(f"/storage/{storage}").text
    assert "t0ps3cret" not in shown and "s3cr3t-value" not in shown
    # in use: refused until the key is revoked
    refused(owner.delete(f"/volumes/{volume}"), 409, "conflict")
    rebound = ok(owner.put(f"/keys/{key['id']}/volumes/{volume}", json={"read_only": False}))
    assert rebound["volumes"] == [{"name": volume, "read_only": False}]
    assert ok(owner.delete(f"/keys/{key['id']}/volumes/{volume}"))["volumes"] == []
    ok(owner.delete(f"/keys/{key['id']}"))
    for path in (f"/connectors/{connector}", f"/storage/{storage}", f"/volumes/{volume}", f"/sandboxes/{sandbox}"):
        ok(owner.delete(path), 204)


# --- the other resources ---------------------------------------------------------------------


def test_sandbox_config_lifecycle(owner: httpx.Client) -> None:
    sandbox = name("cfg")
    made = ok(owner.post("/sandboxes", json={
        "name": sandbox, "cpus": 0.5, "memory_mib": 512, "network": "allowlist", "allow": ["pypi.org"],
        "timeout_cap_s": 30, "session": "persistent",
    }), 201)
    assert made["allow"] == ["pypi.org"] and made["session"] == "persistent" and made["image"] == "host"
    refused(owner.post("/sandboxes", json={"name": sandbox}), 409, "conflict")
    assert sandbox in [s["name"] for s in ok(owner.get("/sandboxes"))]
    changed = ok(owner.patch(f"/sandboxes/{sandbox}", json={"memory_mib": 256, "network": "none"}))
    assert changed["memory_mib"] == 256 and changed["network"] == "none" and changed["allow"] == []
    assert changed["cpus"] == 0.5 and changed["timeout_cap_s"] == 30  # untouched
    assert ok(owner.get(f"/sandboxes/{sandbox}")) == changed
    message = refused(owner.patch(f"/sandboxes/{sandbox}", json={"cpus": 100}), 400, "validation_error")
    assert "cpus" in message
    refused(owner.patch(f"/sandboxes/{sandbox}", json={"image": "no-such-image"}), 404, "not_found")
    ok(owner.delete(f"/sandboxes/{sandbox}"), 204)
    refused(owner.get(f"/sandboxes/{sandbox}"), 404, "not_found")


def test_volume_lifecycle(owner: httpx.Client) -> None:
    volume = name("v")
    assert ok(owner.post("/volumes", json={"name": volume, "quota_mib": 5}), 201)["quota_mib"] == 5
    assert ok(owner.get(f"/volumes/{volume}"))["name"] == volume
    assert volume in [v["name"] for v in ok(owner.get("/volumes"))]
    refused(owner.post("/volumes", json={"name": "outputs"}), 400, "validation_error")
    ok(owner.delete(f"/volumes/{volume}"), 204)
    refused(owner.get(f"/volumes/{volume}"), 404, "not_found")


def test_storage_lifecycle(owner: httpx.Client) -> None:
    storage = name("s")
    body = {"name": storage, "type": "gcs", "bucket": "public-data", "credentials": {"anonymous": True}, "read_only": True}
    made = ok(owner.post("/storage", json=body), 201)
    assert made["type"] == "gcs" and made["read_only"] and made["mounted_at"] == f"/data/{storage}/"
    assert "credentials" not in made
    refused(owner.post("/storage", json={**body, "name": name("s"), "credentials": {}}), 400, "validation_error")
    assert storage in [s["name"] for s in ok(owner.get("/storage"))]
    ok(owner.delete(f"/storage/{storage}"), 204)
    refused(owner.delete(f"/storage/{storage}"), 404, "not_found")


def test_connector_lifecycle(owner: httpx.Client) -> None:
    connector = name("c")
    made = ok(owner.post("/connectors", json={
        "name": connector, "type": "http", "secret": "tok-123456", "hosts": ["api.example.com"], "env_var": "API_TOKEN",
    }), 201)
    assert made["type"] == "http" and "tok-123456" not in str(made)
    updated = ok(owner.patch(f"/connectors/{connector}", json={"secret": "tok-654321"}))
    assert updated["updated_at"] >= made["updated_at"] and "tok-654321" not in str(updated)
    assert connector in [c["name"] for c in ok(owner.get("/connectors"))]
    ok(owner.delete(f"/connectors/{connector}"), 204)
    refused(owner.get(f"/connectors/{connector}"), 404, "not_found")


def test_webhook_secret_is_shown_once_and_rotated(admin_server: Any) -> None:
    org = name("hooks")
    ok(httpx.post(f"{admin_server.url}{ADMIN}/orgs", json={"name": org}, timeout=30,
                  headers={"Authorization": f"Bearer {token_for(admin_server, 'owner')}"}), 201)
    with client(admin_server, token_for(admin_server, "owner", org)) as c:
        first = ok(c.post("/webhook-secret", json={}), 201)
        assert first["secret"].startswith("whsec_") and first["org"] == org
        refused(c.post("/webhook-secret", json={}), 400, "validation_error")
        second = ok(c.post("/webhook-secret", json={"rotate": True}), 201)
        assert second["rotated"] and second["secret"] != first["secret"]


def test_images_list_host_and_refuse_unknown(owner: httpx.Client) -> None:
    images = ok(owner.get("/images"))
    assert images[0]["name"] == "host" and "python" in images[0]["languages"]
    refused(owner.get("/images/host"), 400, "validation_error")
    refused(owner.delete("/images/no-such-image"), 404, "not_found")


def test_members_tokens_and_roles(admin_server: Any, owner: httpx.Client) -> None:
    email = f"ana-{uuid.uuid4().hex[:6]}@example.com"
    member = ok(owner.post("/members", json={"email": email, "role": "auditor"}), 201)
    assert member["role"] == "auditor" and not member["oidc"]
    issued = ok(owner.post(f"/members/{email}/tokens", json={"name": "laptop"}), 201)
    assert issued["secret"].startswith("sda-") and issued["secret"].startswith(issued["token"]["prefix"])
    assert issued["secret"] not in owner.get(f"/members/{email}/tokens").text
    with client(admin_server, issued["secret"]) as ana:
        assert ok(ana.get("/whoami"))["role"] == "auditor"
        ok(owner.patch(f"/members/{email}", json={"role": "admin"}))
        assert ok(ana.get("/whoami"))["role"] == "admin"  # at once
        ok(owner.delete(f"/members/{email}"), 204)
        refused(ana.get("/whoami"), 401, "unauthorized")


def test_an_owner_cannot_mint_a_token_for_a_colleague_who_already_signs_in(admin_server: Any) -> None:
    """A token acts as its member: minting one for a colleague with their own would let the
    maker act under the colleague's name. The first one (the invitation) is allowed."""
    org = name("mint")
    with client(admin_server, token_for(admin_server, "owner", org)) as boss:
        email = f"col-{uuid.uuid4().hex[:6]}@example.com"
        ok(boss.post("/members", json={"email": email, "role": "owner"}), 201)
        first = ok(boss.post(f"/members/{email}/tokens", json={"name": "invite"}), 201)["secret"]
        message = refused(boss.post(f"/members/{email}/tokens", json={"name": "mine now"}), 403, "forbidden")
        assert "only they can make" in message
        with client(admin_server, first) as colleague:  # they make their own
            ok(colleague.post(f"/members/{email}/tokens", json={"name": "laptop"}), 201)


def test_an_organizations_admin_sizes_sandboxes_within_the_host(admin_server: Any, owner: httpx.Client) -> None:
    org = name("big")
    with client(admin_server, token_for(admin_server, "admin", org)) as tenant:
        huge = {"name": name("huge"), "memory_mib": 1024 * 1024}
        assert "more than this host has" in refused(tenant.post("/sandboxes", json=huge), 403, "forbidden")
        cpus = {"name": name("wide"), "cpus": float((os.cpu_count() or 1) + 1)}
        assert "more than this host has" in refused(tenant.post("/sandboxes", json=cpus), 403, "forbidden")
        made = ok(tenant.post("/sandboxes", json={"name": name("fits"), "cpus": 1, "memory_mib": 256}), 201)
        refused(tenant.patch(f"/sandboxes/{made['name']}", json={"memory_mib": 1024 * 1024}), 403, "forbidden")
    # the installation's operator may (e.g. for larger executor nodes)
    ok(owner.post("/sandboxes", json={**huge, "name": name("op")}, params={"org": org}), 201)


# --- roles and organizations -----------------------------------------------------------------


def test_an_auditor_reads_but_may_not_create_a_key(admin_server: Any) -> None:
    with client(admin_server, token_for(admin_server, "auditor")) as auditor:
        assert isinstance(ok(auditor.get("/keys")), list)
        refused(auditor.post("/keys", json={"name": "nope"}), 403, "forbidden")
        refused(auditor.post("/sandboxes", json={"name": name("x")}), 403, "forbidden")


def test_a_member_may_not_read_the_configuration(admin_server: Any) -> None:
    with client(admin_server, token_for(admin_server, "member")) as member:
        for path in ("/sandboxes", "/keys", "/volumes", "/connectors", "/storage", "/images", "/members"):
            refused(member.get(path), 403, "forbidden")
        assert ok(member.get("/whoami"))["permissions"] == ["run"]


def test_an_admin_may_not_manage_members(admin_server: Any) -> None:
    with client(admin_server, token_for(admin_server, "admin")) as admin:
        refused(admin.post("/members", json={"email": "x@example.com", "role": "owner"}), 403, "forbidden")
        ok(admin.post("/keys", json={}), 201)


def test_another_organization_is_out_of_reach(admin_server: Any, owner: httpx.Client) -> None:
    org = name("acme")
    ok(owner.post("/orgs", json={"name": org}), 201)
    refused(owner.post("/orgs", json={"name": org}), 409, "conflict")
    theirs = ok(owner.post("/keys", json={"name": "default's"}), 201)["key"]
    with client(admin_server, token_for(admin_server, "owner", org)) as acme:
        assert [o["name"] for o in ok(acme.get("/orgs"))] == [org]
        refused(acme.post("/orgs", json={"name": name("mine")}), 403, "forbidden")
        refused(acme.get("/keys", params={"org": "default"}), 403, "forbidden")
        refused(acme.get(f"/keys/{theirs['id']}"), 404, "not_found")
        refused(acme.delete(f"/keys/{theirs['id']}"), 404, "not_found")
        assert theirs["id"] not in [k["id"] for k in ok(acme.get("/keys"))]
        mine = ok(acme.post("/keys", json={}), 201)["key"]
    # the operator (an owner of `default`) names the organization
    assert mine["id"] in [k["id"] for k in ok(owner.get("/keys", params={"org": org}))]
    refused(owner.get("/keys", params={"org": "no-such-org"}), 404, "not_found")


# --- credentials -----------------------------------------------------------------------------


def test_admin_tokens_and_api_keys_are_not_interchangeable(admin_server: Any, owner: httpx.Client) -> None:
    admin_token = owner.headers["Authorization"]
    run = {"code": "print(1)", "language": "python"}
    answer = httpx.post(f"{admin_server.url}/v1/sandbox/execute", json=run, headers={"Authorization": admin_token},
                        timeout=60)
    assert answer.status_code == 401, answer.text
    api_key = ok(owner.post("/keys", json={}), 201)["secret"]
    answer = httpx.get(f"{admin_server.url}{ADMIN}/whoami", headers={"Authorization": f"Bearer {api_key}"}, timeout=30)
    assert answer.status_code == 401, answer.text
    assert httpx.get(f"{admin_server.url}{ADMIN}/keys", timeout=30).status_code == 401


def test_failed_admin_authentication_counts_toward_the_lockout(server_factory: Any) -> None:
    server = server_factory(auth_failures_allowed=3, auth_lockout_s=60)
    good = token_for(server, "owner")
    bad = {"Authorization": "Bearer sda-" + "x" * 40}
    for _ in range(3):
        assert httpx.get(f"{server.url}{ADMIN}/whoami", headers=bad, timeout=30).status_code == 401
    locked = httpx.get(f"{server.url}{ADMIN}/whoami", headers=bad, timeout=30)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) >= 1
    # the same client's /v1 requests are locked out too
    assert httpx.post(f"{server.url}/v1/sandbox/execute", json={"code": "1"}, timeout=30).status_code == 429
    # a token that never worked from this client is refused during the lockout as well
    assert httpx.get(f"{server.url}{ADMIN}/whoami", headers={"Authorization": f"Bearer {good}"},
                     timeout=30).status_code == 429


# --- the audit log ---------------------------------------------------------------------------


def test_changes_are_in_the_audit_log_with_who_and_where_from(admin_server: Any, owner: httpx.Client) -> None:
    me = ok(owner.get("/whoami"))
    sandbox = name("audited")
    made = ok(owner.post("/sandboxes", json={"name": sandbox}), 201)
    ok(owner.patch(f"/sandboxes/{sandbox}", json={"memory_mib": 256}))
    created = ok(owner.post("/keys", json={"sandbox": sandbox}), 201)
    ok(owner.delete(f"/keys/{created['key']['id']}"))

    page = ok(owner.get("/audit", params={"kind": "admin", "newest_first": True, "limit": 50}))
    rows = {(r["action"], r["target"]): r for r in page["rows"]}
    update = rows[("sandbox.update", made["id"])]
    assert (update["actor_kind"], update["actor_id"], update["actor_name"]) == ("member", me["member_id"], me["name"])
    assert update["ip"] == "127.0.0.1"
    assert update["detail"]["before"]["memory_mib"] == 1024 and update["detail"]["after"]["memory_mib"] == 256
    key_row = rows[("key.create", created["key"]["id"])]
    assert key_row["detail"]["after"]["prefix"] == created["key"]["prefix"]
    assert rows[("key.revoke", created["key"]["id"])]["detail"]["after"]["status"] == "revoked"

    by_key = ok(owner.get("/audit", params={"action": "key.create", "newest_first": True}))["rows"]
    assert by_key[0]["target"] == created["key"]["id"]
    jsonl = owner.get("/audit/export", params={"kind": "admin"})
    assert jsonl.status_code == 200 and jsonl.headers["content-type"].startswith("application/x-ndjson")
    assert created["key"]["id"] in jsonl.text and created["secret"] not in jsonl.text
    csv = owner.get("/audit/export", params={"kind": "admin", "format": "csv"})
    assert csv.text.startswith("org_id,seq,at,") and made["id"] in csv.text
    refused(owner.get("/audit", params={"metadata": "no-equals-sign"}), 400, "validation_error")

    with client(admin_server, token_for(admin_server, "auditor")) as auditor:
        assert ok(auditor.get("/audit", params={"action": "sandbox.update"}))["rows"]
    with client(admin_server, token_for(admin_server, "member")) as member:
        refused(member.get("/audit"), 403, "forbidden")
    org = name("quiet")
    ok(owner.post("/orgs", json={"name": org}), 201)
    with client(admin_server, token_for(admin_server, "owner", org)) as other:
        assert ok(other.get("/audit"))["rows"] == []  # nothing of default's
        refused(other.get("/audit", params={"org": "default"}), 403, "forbidden")


def test_threads_are_listed_and_deleted(admin_server: Any, owner: httpx.Client) -> None:
    secret = ok(owner.post("/keys", json={}), 201)["secret"]
    thread = name("t")
    run = {"code": "open('/home/baponi/f', 'w').write('x')", "language": "python", "thread_id": thread}
    answer = httpx.post(f"{admin_server.url}/v1/sandbox/execute", json=run, timeout=120,
                        headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200 and answer.json()["success"], answer.text
    assert thread in [t["thread_id"] for t in ok(owner.get("/threads"))]
    ok(owner.delete(f"/threads/{thread}"), 204)
    assert thread not in [t["thread_id"] for t in ok(owner.get("/threads"))]
    refused(owner.delete(f"/threads/{thread}"), 404, "not_found")
    rows = ok(owner.get("/audit", params={"action": "thread.delete", "newest_first": True}))["rows"]
    assert rows[0]["target"] == thread


# --- plans and usage -------------------------------------------------------------------------


def test_plans_are_assigned_by_operators_and_hold_configs_and_keys(admin_server: Any, owner: httpx.Client) -> None:
    org = name("planned")
    ok(owner.post("/orgs", json={"name": org}), 201)
    plan = name("tiny")
    made = ok(owner.post("/plans", params={"org": org}, json={
        "name": plan, "limits": {"cpus": 1, "memory_mib": 512, "api_keys": 1},
    }), 201)
    assert made["custom"] and made["limits"]["memory_mib"] == 512 and made["limits"]["concurrent"] is None
    assert ok(owner.put("/plan", params={"org": org}, json={"name": plan}))["name"] == plan
    with client(admin_server, token_for(admin_server, "owner", org)) as theirs:
        shown = ok(theirs.get("/plan"))
        assert shown["plan"]["name"] == plan and shown["usage"]["executions"] == 0
        assert plan in [p["name"] for p in ok(theirs.get("/plans"))]
        # an owner who is not an operator may not change the terms
        refused(theirs.put("/plan", json={"name": "enterprise"}), 403, "forbidden")
        refused(theirs.post("/plans", json={"name": name("mine")}), 403, "forbidden")
        # the plan holds what the admin API creates, with the plan's words
        message = refused(theirs.post("/sandboxes", json={"name": "big", "memory_mib": 2048}), 403, "forbidden")
        assert "512" in message
        ok(theirs.post("/sandboxes", json={"name": "fits", "memory_mib": 512}), 201)
        refused(theirs.patch("/sandboxes/fits", json={"memory_mib": 1024}), 403, "forbidden")
        ok(theirs.post("/keys", json={}), 201)
        refused(theirs.post("/keys", json={}), 403, "forbidden")
        assert ok(theirs.get("/usage", params={"month": "2020-01"})) == {
            "month": "2020-01", "executions": 0, "cpu_seconds": 0.0, "gib_seconds": 0.0,
        }
        refused(theirs.get("/usage", params={"month": "2020-13"}), 400, "validation_error")
    rows = ok(owner.get("/audit", params={"org": org, "kind": "admin"}))["rows"]
    assert [r["action"] for r in rows][:2] == ["plan.create", "plan.assign"]
