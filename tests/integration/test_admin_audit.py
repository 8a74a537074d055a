"""Every admin change is recorded (service/admin.py): the CLI's, as root, and the admin
operations' of a member, with before/after views that never hold a secret.

An in-memory recorder (`RecordingAudit`) stands in for the audit log: the CLI commands run
in-process (typer's runner) on a data dir of their own, with the recorder put in their Admin.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from typer.testing import CliRunner

import sandboxd.commands.common as common
from sandboxd.app import Admin, open_admin
from sandboxd.cli import app
from sandboxd.config import Settings
from sandboxd.errors import Forbidden, NotFound
from sandboxd.service.admin import KeySpec
from sandboxd.service.roles import CLI_ACTOR, Actor, AdminPrincipal



@dataclass(frozen=True)
class AuditCall:
    actor: Actor
    action: str
    org_id: str | None
    target: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any] | None


@dataclass
class RecordingAudit:
    """An in-memory audit log, for tests: what was recorded, in order."""

    calls: list[AuditCall] = field(default_factory=list)
    #: Bound on what is kept in memory.
    keep: int = 10_000

    async def admin(
        self, actor: Actor, action: str, *, org_id: str | None, target: str,
        before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
    ) -> None:
        self.calls.append(AuditCall(actor, action, org_id, target, before, after))
        del self.calls[: max(0, len(self.calls) - self.keep)]


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RecordingAudit, Any]]:
    audit = RecordingAudit()
    real = common.open_admin

    async def with_recorder(settings: Settings) -> Admin:
        admin = await real(settings)
        admin.audit = audit
        return admin

    monkeypatch.setattr(common, "open_admin", with_recorder)
    runner = CliRunner()
    data_dir = str(tmp_path / "d")

    def cli(*args: str, input: str | None = None) -> Any:
        result = runner.invoke(app, [*args, "--data-dir", data_dir], input=input)
        assert result.exit_code == 0, result.output
        return result

    yield audit, cli


def test_cli_changes_are_audited_without_secrets(recorded: tuple[RecordingAudit, Any], tmp_path: Path) -> None:
    audit, cli = recorded
    cli("sandboxes", "create", "small", "--memory", "256")
    cli("sandboxes", "update", "small", "--memory", "512")
    key = cli("keys", "create", "--sandbox", "small", "--name", "ci")
    secret = re.search(r"sk-local-\S+", key.output).group(0)  # type: ignore[union-attr]
    key_id = re.search(r"key id (\S+)", key.output).group(1)  # type: ignore[union-attr]
    cli("keys", "list")  # a read: not recorded
    secret_file = tmp_path / "secret.json"
    secret_file.write_text('{"TOKEN": "t0ps3cret"}')
    cli("connectors", "create", "tok", "--type", "env", "--secret-file", str(secret_file))
    hook = cli("webhooks", "secret")
    cli("keys", "revoke", key_id)
    cli("orgs", "create", "acme")
    cli("orgs", "create", "acme")  # there already: nothing changed, nothing recorded
    assert [c.action for c in audit.calls] == [
        "sandbox.create", "sandbox.update", "key.create", "connector.create", "webhook.create", "key.revoke",
        "org.create",
    ]
    assert all(c.actor == CLI_ACTOR for c in audit.calls)
    update = audit.calls[1]
    assert update.before is not None and update.after is not None
    assert (update.before["memory_mib"], update.after["memory_mib"]) == (256, 512)
    created, revoked = audit.calls[2], audit.calls[5]
    assert created.target == key_id and created.after is not None and secret.startswith(created.after["prefix"])
    assert created.after["created_by"] == "root"
    assert revoked.before is not None and revoked.after is not None
    assert (revoked.before["status"], revoked.after["status"]) == ("active", "revoked")
    recorded_text = repr(audit.calls)
    whsec = re.search(r"whsec_\S+", hook.output).group(0)  # type: ignore[union-attr]
    for value in (secret, "t0ps3cret", whsec):
        assert value not in recorded_text


def test_a_members_changes_are_audited_with_where_from(tmp_path: Path) -> None:
    async def go() -> None:
        admin = await open_admin(Settings(data_dir=tmp_path / "d"))
        try:
            audit = RecordingAudit()
            admin.audit = audit
            org = await admin.tenancy.org("default")
            other = await admin.tenancy.ensure_org("other")
            ana = Actor(kind="member", id="mbr_ana", name="ana@example.com", ip="127.0.0.9")
            admin_p = AdminPrincipal(org=org, role="admin", actor=ana, via="token")
            made = await admin.ops.create_key(admin_p, KeySpec(name="x"))
            assert [(c.action, c.actor.ip, c.org_id) for c in audit.calls] == [("key.create", "127.0.0.9", org.id)]
            assert made.secret not in repr(audit.calls) and made.view["created_by"] == "mbr_ana"
            # an auditor is refused before anything happens; another organization's key is not found
            auditor = AdminPrincipal(org=org, role="auditor", actor=ana, via="token")
            with pytest.raises(Forbidden):
                await admin.ops.create_key(auditor, KeySpec())
            with pytest.raises(Forbidden):
                await admin.ops.list_keys(admin_p, org="other")  # not an operator
            theirs = AdminPrincipal(org=other, role="owner", actor=ana, via="token")
            with pytest.raises(NotFound):
                await admin.ops.revoke_key(theirs, made.view["id"])
            assert len(audit.calls) == 1
        finally:
            await admin.close()

    asyncio.run(go())


def test_a_cli_change_lands_in_the_audit_log(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "d")
    created = run_cli("keys", "create", "--name", "from-cli", "--data-dir", data_dir)
    assert created.returncode == 0, created.stderr
    key_id = re.search(r"key id (\S+)", created.stderr).group(1)  # type: ignore[union-attr]
    found = run_cli("audit", "search", "--action", "key.create", "--data-dir", data_dir)
    assert found.returncode == 0, found.stderr
    rows = [json.loads(line) for line in found.stdout.splitlines()]
    assert [(r["actor_kind"], r["target"]) for r in rows] == [("cli", key_id)]
    assert created.stdout.strip() not in found.stdout
    assert rows[0]["detail"]["after"]["name"] == "from-cli"
