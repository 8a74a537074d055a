"""Members, admin tokens, console sessions and the bootstrap owner (service/members.py), on a real
database, and through the CLI and a real server's first start."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import Server, run_cli

from sandboxd.app import Admin, open_admin
from sandboxd.config import Settings
from sandboxd.errors import Conflict, Forbidden, InvalidRequest, Unauthorized
from sandboxd.service.members import MemberService
from sandboxd.service.roles import MEMBERS, OPERATE, READ, RUN, WRITE
from sandboxd.store import utcnow


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    admin = await open_admin(Settings(data_dir=tmp_path / "data"))
    try:
        yield admin
    finally:
        await admin.close()


async def test_bootstrap_makes_one_owner_of_the_default_org_once(admin: Admin) -> None:
    token = await admin.members.bootstrap()
    assert token is not None and token.startswith("sda-") and len(token) == 44
    assert await admin.members.bootstrap() is None  # every later start
    principal = await admin.members.authenticate(token, "127.0.0.9")
    assert (principal.org.name, principal.role, principal.via) == ("default", "owner", "token")
    assert principal.actor.ip == "127.0.0.9" and principal.actor.kind == "member"
    assert principal.can(OPERATE) and principal.can(MEMBERS)


async def test_tokens_are_refused_when_unknown_revoked_expired_or_an_api_key(admin: Admin) -> None:
    org = await admin.tenancy.org("default")
    member = await admin.members.add(org, "ana@example.com", "admin")
    issued = await admin.members.issue_token(member, "ci")
    assert (await admin.members.authenticate(issued.secret)).role == "admin"
    key = await admin.keys.create(org=org, sandbox=await admin.tenancy.sandbox(org, "default"))
    for bad in (key.secret, "sda-" + "A" * 40, issued.secret[:-1], "", "Bearer " + issued.secret):
        with pytest.raises(Unauthorized):
            await admin.members.authenticate(bad)
    await admin.members.revoke_token(member, issued.record.id)
    with pytest.raises(Unauthorized):
        await admin.members.authenticate(issued.secret)
    soon = await admin.members.issue_token(member, "short", utcnow() + timedelta(seconds=60))
    assert (await admin.members.authenticate(soon.secret)).role == "admin"
    with sqlite3.connect(admin.settings.data_dir / "sandboxd.db") as db:
        db.execute("UPDATE admin_tokens SET expires_at = ? WHERE id = ?",
                   ((utcnow() - timedelta(seconds=1)).isoformat(), soon.record.id))
    with pytest.raises(Unauthorized):
        await admin.members.authenticate(soon.secret)
    with pytest.raises(InvalidRequest):
        await admin.members.issue_token(member, "past", utcnow() - timedelta(seconds=1))


async def test_a_tokens_digest_is_stored_never_the_token(admin: Admin) -> None:
    org = await admin.tenancy.org("default")
    issued = await admin.members.issue_token(await admin.members.add(org, "bo@example.com", "auditor"))
    raw = (admin.settings.data_dir / "sandboxd.db").read_bytes()
    assert issued.secret.encode() not in raw and issued.secret[4:].encode() not in raw
    assert issued.record.display_prefix == issued.secret[:12]


async def test_roles_change_at_once_and_a_removed_member_is_locked_out(admin: Admin) -> None:
    org = await admin.tenancy.org("default")
    await admin.members.add(org, "owner@example.com", "owner")
    member = await admin.members.add(org, "cy@example.com", "member")
    issued = await admin.members.issue_token(member)
    cookie = await admin.members.open_session(member, "127.0.0.2")
    principal = await admin.members.authenticate(issued.secret)
    assert principal.can(RUN) and not principal.can(READ) and not principal.can(WRITE)
    await admin.members.set_role(org, "cy@example.com", "auditor")
    principal = await admin.members.session(cookie)
    assert principal.role == "auditor" and principal.can(READ) and not principal.can(WRITE)
    await admin.members.remove(org, "cy@example.com")
    with pytest.raises(Unauthorized):
        await admin.members.authenticate(issued.secret)
    with pytest.raises(Unauthorized):
        await admin.members.session(cookie)


async def test_the_last_owner_stays_an_owner(admin: Admin) -> None:
    org = await admin.tenancy.org("default")
    await admin.members.add(org, "solo@example.com", "owner")
    with pytest.raises(Conflict):
        await admin.members.set_role(org, "solo@example.com", "admin")
    with pytest.raises(Conflict):
        await admin.members.remove(org, "solo@example.com")
    await admin.members.add(org, "two@example.com", "owner")
    await admin.members.set_role(org, "solo@example.com", "admin")
    with pytest.raises(Conflict):
        await admin.members.add(org, "two@example.com", "member")
    for bad in ("x y", "../members/a@b.c", "a/b@c.d", ".hidden", "a%2Fb@c.d", "a@b/c"):
        with pytest.raises(InvalidRequest):
            await admin.members.add(org, bad, "member")
    with pytest.raises(InvalidRequest):
        await admin.members.add(org, "z@example.com", "root")


async def test_console_sessions_end_at_logout_and_at_expiry(admin: Admin) -> None:
    org = await admin.tenancy.org("default")
    member = await admin.members.add(org, "di@example.com", "admin")
    cookie = await admin.members.open_session(member, "127.0.0.3")
    assert (await admin.members.session(cookie)).via == "session"
    raw = (admin.settings.data_dir / "sandboxd.db").read_bytes()
    assert cookie.encode() not in raw
    await admin.members.close_session(cookie)
    with pytest.raises(Unauthorized):
        await admin.members.session(cookie)
    issued = await admin.members.issue_token(member, "console", utcnow() + timedelta(seconds=30))
    principal = await admin.members.authenticate(issued.secret)
    assert principal.credential_id == issued.record.id
    cookie = await admin.members.open_session(member, admin_token_id=principal.credential_id)
    expires = await admin.members.session_expires(cookie)
    assert expires is not None and expires <= issued.record.expires_at  # type: ignore[operator]
    assert (await admin.members.session(cookie)).actor.id == member.id
    await admin.members.revoke_token(member, issued.record.id)  # the session ends with its token
    with pytest.raises(Unauthorized):
        await admin.members.session(cookie)
    short = MemberService(admin.store, b"p" * 32, session_ttl_s=0.001)
    cookie = await short.open_session(member)
    with pytest.raises(Unauthorized):
        await short.session(cookie)
    for bad in ("", "x" * 43, cookie + "x", "../etc"):
        with pytest.raises(Unauthorized):
            await admin.members.session(bad)


async def test_oidc_sign_in_follows_the_providers_claims(admin: Admin) -> None:
    org = await admin.tenancy.org("default")
    await admin.tenancy.ensure_org("acme")
    with pytest.raises(Forbidden, match="does not exist"):
        await admin.members.oidc_sign_in("https://idp sub-1", "e@x.io", "nope", "admin")
    with pytest.raises(Forbidden, match="role"):
        await admin.members.oidc_sign_in("https://idp sub-1", "e@x.io", "acme", "superuser")
    with pytest.raises(Forbidden, match="gave no role"):
        await admin.members.oidc_sign_in("https://idp sub-1", "e@x.io", "acme", None)
    first = await admin.members.oidc_sign_in("https://idp sub-1", "e@x.io", "acme", "auditor")
    assert first.role == "auditor" and first.subject == "https://idp sub-1"
    again = await admin.members.oidc_sign_in("https://idp sub-1", "e@x.io", "acme", "admin")
    assert again.id == first.id and again.role == "admin"
    kept = await admin.members.oidc_sign_in("https://idp sub-1", "e@x.io", None, None)
    assert kept.id == first.id and kept.role == "admin"
    invited = await admin.members.add(org, "fa@x.io", "auditor")  # invited by an owner, signs in later
    with pytest.raises(Forbidden):  # an email the provider did not verify links nothing
        await admin.members.oidc_sign_in("https://idp sub-2", "fa@x.io", "default", None)
    linked = await admin.members.oidc_sign_in("https://idp sub-2", "fa@x.io", "default", None, email_verified=True)
    assert linked.id == invited.id and linked.role == "auditor" and linked.subject == "https://idp sub-2"
    with pytest.raises(Forbidden, match="another organization"):
        await admin.members.oidc_sign_in("https://idp sub-2", "fa@x.io", "acme", "admin")


async def test_another_subject_with_a_members_email_never_takes_the_member_over(admin: Admin) -> None:
    await admin.tenancy.ensure_org("acme")
    victim = await admin.members.oidc_sign_in("https://idp victim", "ceo@acme.io", "acme", "owner", email_verified=True)
    for role in (None, "member"):
        with pytest.raises(Forbidden):
            await admin.members.oidc_sign_in("https://idp attacker", "ceo@acme.io", "acme", role, email_verified=True)
    again = await admin.members.oidc_sign_in("https://idp victim", "ceo@acme.io", "acme", None)
    assert again.id == victim.id and again.role == "owner" and again.subject == "https://idp victim"
    odd = await admin.members.oidc_sign_in("https://idp odd", "../members/ceo@acme.io", "acme", "member")
    assert odd.email.startswith("oidc-") and "/" not in odd.email  # never a path in a console URL


def test_cli_adds_lists_tokens_and_removes_members(server: Server) -> None:
    data = ("--data-dir", str(server.data_dir))
    added = run_cli("members", "add", "gil@example.com", "--role", "auditor", *data)
    assert added.returncode == 0, added.stderr
    listed = run_cli("members", "list", *data)
    assert "gil@example.com\tauditor" in listed.stdout
    token = run_cli("members", "token", "gil@example.com", "--name", "t", "--expires-in-days", "1", *data)
    assert token.returncode == 0 and token.stdout.startswith("sda-") and "not shown again" in token.stderr
    bad = run_cli("members", "add", "hal@example.com", "--role", "root", *data)
    assert bad.returncode == 1 and "role must be one of owner, admin, member, auditor" in bad.stderr
    assert run_cli("members", "set-role", "gil@example.com", "admin", *data).stdout.strip() == "gil@example.com\tadmin"
    assert run_cli("members", "remove", "gil@example.com", *data).returncode == 0
    gone = run_cli("members", "remove", "gil@example.com", *data)
    assert gone.returncode == 1 and "no member 'gil@example.com'" in gone.stderr
    audited = run_cli("audit", "search", "--kind", "admin", "--limit", "200", *data)
    rows = [json.loads(line) for line in audited.stdout.splitlines()]
    actions = [r["action"] for r in rows if r["actor_kind"] == "cli" and "gil@example.com" in json.dumps(r["detail"])]
    for action in ("member.add", "member.token", "member.set_role", "member.remove"):
        assert action in actions, (action, actions)
    assert token.stdout.strip() not in audited.stdout  # the token itself is never in the log


async def test_a_servers_first_start_hands_the_owner_token_over_in_a_root_only_file(server: Server) -> None:
    path = server.data_dir / "owner.token"
    assert path.stat().st_mode & 0o777 == 0o600
    token = path.read_text().strip()
    assert token not in server.log_path.read_text()  # not a TTY: only the file's path is printed
    assert str(path) in server.log_path.read_text()
    admin = await open_admin(server.settings)
    try:
        assert (await admin.members.authenticate(token)).role == "owner"
    finally:
        await admin.close()
