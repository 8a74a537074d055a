"""Rows as plain frozen dataclasses: what the repositories return to the service layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    created_at: datetime
    gid: int | None = None
    #: Audit rows of its executions keep the code, not only its SHA-256.
    audit_code: bool = False
    #: Its plan's name (service/plans.py); None: the installation's default plan.
    plan: str | None = None


@dataclass(frozen=True)
class Plan:
    """A plan's limits; None: unlimited. `org_id`: the organization of a custom plan, None for
    an installation's figures for a preset (service/plans.py)."""

    id: str
    name: str
    org_id: str | None
    cpus: float | None
    memory_mib: int | None
    concurrent: int | None
    timeout_s: int | None
    api_keys: int | None
    audit_retention_days: int | None
    images: int | None
    streaming: bool
    created_at: datetime


@dataclass(frozen=True)
class Usage:
    """What an organization used in one month ("YYYY-MM", UTC)."""

    org_id: str
    month: str
    executions: int
    cpu_seconds: float
    gib_seconds: float


@dataclass(frozen=True)
class Sandbox:
    id: str
    org_id: str
    name: str
    cpus: float
    memory_mib: int
    network: str
    timeout_cap_s: int
    created_at: datetime
    #: allowlist entries (`pypi.org`, `*.example.com:8443`) when network is "allowlist".
    network_allow: list[str] | None = None
    #: The runtime image (Image.id); None: the built-in `host`.
    image_id: str | None = None
    #: "stateless" or "persistent": a thread's interpreter kept between its executions.
    session: str = "stateless"


@dataclass(frozen=True)
class ApiKey:
    id: str
    org_id: str
    sandbox_id: str | None
    name: str
    region: str
    digest: str
    display_prefix: str
    created_at: datetime
    revoked_at: datetime | None
    #: A member's id, "root" (the CLI); None for keys from before migration 0012.
    created_by: str | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class Member:
    id: str
    org_id: str
    email: str
    role: str
    subject: str | None
    created_at: datetime
    last_seen_at: datetime | None = None


@dataclass(frozen=True)
class AdminToken:
    id: str
    member_id: str
    name: str
    digest: str
    display_prefix: str
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class ConsoleSession:
    digest: str
    member_id: str
    created_at: datetime
    expires_at: datetime
    ip: str | None = None
    #: The admin token it was opened with (None: through the identity provider).
    admin_token_id: str | None = None


@dataclass(frozen=True)
class Execution:
    trace_id: str
    org_id: str
    key_id: str | None
    language: str
    status: str
    timeout_s: int
    delivery_mode: str
    created_at: datetime
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    output_truncated: bool = False
    error: str | None = None
    client_id: str | None = None
    thread_id: str | None = None
    metadata: dict[str, str] | None = field(default=None)
    completed_at: datetime | None = None
    duration_ms: int = 0
    webhook_url: str | None = None
    webhook_delivery_status: str | None = None
    webhook_attempts: int = 0
    #: The network policy's decisions: [{"host", "port", "allowed", "reason", "count"}].
    network_log: list[dict[str, Any]] | None = None
    #: The server that ran it (settings.node_id); None for rows from before migration 0007.
    node_id: str | None = None
    #: The image it ran on (None for rows from before migration 0008).
    image_name: str | None = None
    image_digest: str | None = None
    #: The storage it mounted: [{"name", "kind", "path", "read_only"}] (None: none).
    storage: list[dict[str, Any]] | None = None
    #: The connectors it was given: [{"name", "type"}] (None: none).
    connectors: list[dict[str, Any]] | None = None
    #: What the result says besides the spec's fields: {"session", "outputs", "artifacts", "notes"}.
    extras: dict[str, Any] | None = None


@dataclass(frozen=True)
class WebhookDelivery:
    id: str
    trace_id: str
    org_id: str
    url: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    #: Who is attempting it now, and until when (a lease: service/webhook_claims.py).
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None


@dataclass(frozen=True)
class Thread:
    org_id: str
    thread_id: str
    uid: int
    created_at: datetime
    last_used_at: datetime
    #: The image its home was last used with (None: not since migration 0008).
    image_digest: str | None = None


@dataclass(frozen=True)
class Volume:
    id: str
    org_id: str
    slug: str
    quota_mib: int
    created_at: datetime


@dataclass(frozen=True)
class VolumeBinding:
    key_id: str
    volume_id: str
    read_only: bool


@dataclass(frozen=True)
class Image:
    id: str
    #: None: a built-in image, usable by every organization.
    org_id: str | None
    name: str
    #: The manifest's digest (`sha256:…`).
    digest: str
    #: Where it came from: a registry reference, a file, or the packages it was built from.
    source: str
    #: {"env": {...}, "path": str, "binaries": {language: path}, "layers": [chain ids]}
    config: dict[str, Any]
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class StorageConnection:
    """An organization's bucket, shown at /data/<name>/ to the keys bound to it."""

    id: str
    org_id: str
    name: str
    kind: str
    bucket: str
    endpoint: str | None
    region: str | None
    #: The connection's prefix in the bucket, without leading or trailing '/' ("" = all of it).
    prefix: str
    read_only: bool
    #: The credentials, encrypted (service/sealing.py); never leaves the service layer.
    sealed: bytes
    created_at: datetime


@dataclass(frozen=True)
class StorageBinding:
    """A key's binding to a storage connection: read-only or not, and the key's own prefix."""

    key_id: str
    connection_id: str
    read_only: bool
    #: Below the connection's prefix, without leading or trailing '/' ("" = all it shows).
    prefix: str


@dataclass(frozen=True)
class Connector:
    """An organization's credential, given to the executions of the keys bound to it."""

    id: str
    org_id: str
    name: str
    kind: str
    #: What may be shown (connectors/kinds.py); never the secret.
    config: dict[str, Any]
    #: The secret, sealed (connectors/keyring.py); never leaves the service layer.
    sealed: bytes = field(repr=False)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ThreadSession:
    """What became of a thread's persistent session in one language (service/sessions.py)."""

    org_id: str
    thread_id: str
    language: str
    #: "live" or "ended".
    state: str
    updated_at: datetime
    reason: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class AuditRow:
    """One row of an organization's audit chain (service/audit.py); never updated."""

    #: The chain: the organization's id; "" for the installation's own rows (org creation).
    org_id: str
    #: Its place in the chain, from 1; 0 until appended.
    seq: int
    at: datetime
    #: "execution", "admin" or "files".
    kind: str
    #: "member", "cli", "system" or "key".
    actor_kind: str
    actor_id: str
    actor_name: str
    ip: str | None
    action: str
    target: str
    trace_id: str | None
    key_id: str | None
    detail: dict[str, Any]
    #: The hash of the row before it in the chain ("" for the first).
    prev_hash: str = ""
    hash: str = ""


@dataclass(frozen=True)
class AuditHead:
    """A chain's last row and retention's anchor: the last row it deleted (0, "": none)."""

    org_id: str
    seq: int
    hash: str
    pruned_seq: int
    pruned_hash: str
