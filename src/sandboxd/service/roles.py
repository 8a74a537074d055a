"""Who may do what in the admin surfaces (admin API, console, CLI): roles, permissions, actors.

One table says which role holds which permission; every admin operation asks `require` once.
The CLI is root on the server's host: it holds every permission in every organization.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import Forbidden
from ..store import Org

#: Read sandbox configs, keys (never a secret), images, volumes, storage, connectors, executions, usage.
READ = "read"
#: Create, change and delete them; revoke keys; set the webhook secret.
WRITE = "write"
#: Add, change and remove the organization's members.
MEMBERS = "members"
#: Query and export the audit log.
AUDIT = "audit"
#: Run code from the console ("try it") with one of the organization's keys.
RUN = "run"
#: The installation's operator: organizations and their plans (owners of the `default` organization).
OPERATE = "operate"

ROLES: dict[str, frozenset[str]] = {
    "owner": frozenset({READ, WRITE, MEMBERS, AUDIT, RUN}),
    "admin": frozenset({READ, WRITE, AUDIT, RUN}),
    # Runs code through keys only: it may sign in and use "try it", nothing else.
    "member": frozenset({RUN}),
    # Read-only, the audit log included.
    "auditor": frozenset({READ, AUDIT}),
}
ROLE_NAMES: tuple[str, ...] = tuple(ROLES)
#: The organization whose owners operate the installation (service/tenancy.py DEFAULT_ORG).
OPERATOR_ORG = "default"


@dataclass(frozen=True)
class Actor:
    """Who did something, as the audit log records it."""

    #: "member" (admin API token or console session), "cli" (root on the host), "system".
    kind: str
    #: The member's id; "root" for the CLI; the component for "system".
    id: str
    #: What a person reads: the member's email or name; "cli".
    name: str
    #: Where from (the client's address); None for the CLI.
    ip: str | None = None


CLI_ACTOR = Actor(kind="cli", id="root", name="cli")


@dataclass(frozen=True)
class AdminPrincipal:
    """A signed-in member (or the CLI) acting in one organization."""

    org: Org
    role: str
    actor: Actor
    #: "token" (admin API), "session" (console), "cli".
    via: str
    #: The admin token presented (via "token"): a console session opened with it ends with it.
    credential_id: str | None = None

    @property
    def permissions(self) -> frozenset[str]:
        granted = ROLES.get(self.role, frozenset())
        if self.via == "cli":
            return frozenset({READ, WRITE, MEMBERS, AUDIT, RUN, OPERATE})
        if self.role == "owner" and self.org.name == OPERATOR_ORG:
            return granted | {OPERATE}
        return granted

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def cli_principal(org: Org) -> AdminPrincipal:
    return AdminPrincipal(org=org, role="owner", actor=CLI_ACTOR, via="cli")


def require(principal: AdminPrincipal, permission: str) -> None:
    """Raise 403 naming what is missing."""
    if not principal.can(permission):
        raise Forbidden(f"the {principal.role} role may not {_VERBS[permission]}")


_VERBS = {
    READ: "read this organization's configuration",
    WRITE: "change this organization's configuration",
    MEMBERS: "manage members",
    AUDIT: "read the audit log",
    RUN: "run code",
    OPERATE: "manage organizations or plans (owners of the default organization do)",
}
