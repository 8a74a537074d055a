"""The schema, as SQLAlchemy Core tables. Migrations in `migrations/` create exactly this."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

metadata = MetaData()

orgs = Table(
    "orgs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("gid", Integer, nullable=True),
    Index("ix_orgs_gid", "gid", unique=True),
    # Audit rows of its executions keep the code itself, not only its SHA-256 (service/audit.py).
    Column("audit_code", Boolean, nullable=False, server_default=false()),
    # The plan's name (service/plans.py): a preset, or a custom plan of this organization;
    # NULL: the installation's default plan (SANDBOXD_DEFAULT_PLAN).
    Column("plan", String(64), nullable=True),
)

plans = Table(
    "plans",
    metadata,
    # Custom plans of one organization, or (org_id NULL) an installation's own figures for a
    # preset of the same name. Every limit NULL: unlimited (service/plans.py PlanLimits).
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("org_id", String(32), ForeignKey("orgs.id", ondelete="CASCADE"), nullable=True),
    Column("cpus", Float, nullable=True),
    Column("memory_mib", Integer, nullable=True),
    Column("concurrent", Integer, nullable=True),
    Column("timeout_s", Integer, nullable=True),
    Column("api_keys", Integer, nullable=True),
    Column("audit_retention_days", Integer, nullable=True),
    Column("images", Integer, nullable=True),
    Column("streaming", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("org_id", "name", name="uq_plans_org_name"),
)

usage = Table(
    "usage",
    metadata,
    # What an organization used in one calendar month (UTC), added to as each execution ends.
    Column("org_id", String(32), ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True),
    Column("month", String(7), primary_key=True),  # "YYYY-MM"
    Column("executions", BigInteger, nullable=False),
    Column("cpu_seconds", Float, nullable=False),
    Column("gib_seconds", Float, nullable=False),
)

sandboxes = Table(
    "sandboxes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("cpus", Float, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("network", String(16), nullable=False),
    Column("network_allow", JSON, nullable=True),
    Column("timeout_cap_s", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("org_id", "name", name="uq_sandboxes_org_name"),
    # The runtime image (images.id); NULL: the built-in `host` image.
    Column("image_id", String(32), nullable=True),
    # "stateless" or "persistent" (service/sessions.py SESSION_MODES).
    Column("session", String(16), nullable=False, server_default="stateless"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("sandbox_id", String(32), ForeignKey("sandboxes.id", ondelete="SET NULL"), nullable=True),
    Column("name", String(128), nullable=False),
    Column("region", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("display_prefix", String(24), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # Who made it: a member's id, "root" (the CLI); NULL for keys from before migration 0012.
    Column("created_by", String(64), nullable=True),
    # Refused from then on; NULL: never expires.
    Column("expires_at", DateTime(timezone=True), nullable=True),
    # Updated at most once a minute (a write per execution would cost every run).
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

members = Table(
    "members",
    metadata,
    # People who sign in to the admin API and the console (service/members.py).
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("email", String(254), nullable=False),
    # service/roles.py ROLES
    Column("role", String(16), nullable=False),
    # The OpenID provider's "<issuer> <sub>" once they signed in through it; NULL: not yet.
    Column("subject", String(512), nullable=True, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("org_id", "email", name="uq_members_org_email"),
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    # Admin API credentials (`sda-<40 base62>`), one member's each, stored as an HMAC digest.
    Column("id", String(32), primary_key=True),
    Column("member_id", String(32), ForeignKey("members.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("display_prefix", String(24), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    Column("last_used_at", DateTime(timezone=True), nullable=True),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    # A console sign-in: the cookie holds a random token; this row its digest (logout deletes it).
    Column("digest", String(64), primary_key=True),
    Column("member_id", String(32), ForeignKey("members.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("ip", String(64), nullable=True),
    # The admin token it was opened with: it ends when that token is revoked (NULL: OpenID).
    Column("admin_token_id", String(32), ForeignKey("admin_tokens.id", ondelete="CASCADE"), nullable=True),
)

executions = Table(
    "executions",
    metadata,
    Column("trace_id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("key_id", String(32), nullable=True),
    Column("language", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("exit_code", Integer, nullable=True),
    Column("stdout", Text, nullable=True),
    Column("stderr", Text, nullable=True),
    Column("output_truncated", Boolean, nullable=False, default=False),
    Column("error", String(64), nullable=True),
    Column("timeout_s", Integer, nullable=False),
    Column("delivery_mode", String(16), nullable=False),
    Column("client_id", String(128), nullable=True),
    Column("thread_id", String(128), nullable=True),
    Column("metadata", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("duration_ms", Integer, nullable=False, default=0),
    Column("webhook_url", String(2048), nullable=True),
    Column("webhook_delivery_status", String(16), nullable=True),
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("network_log", JSON, nullable=True),
    # True: the output is stored once, in the output events; stdout/stderr hold only what
    # came after the last output event (past the events cap). False: they hold it all.
    Column("output_in_events", Boolean, nullable=False, default=False),
    # The server (settings.node_id) that ran it: its start-up recovery ends it if left unfinished.
    Column("node_id", String(64), nullable=True),
    # The image it ran on, as it was then (the image may be deleted or replaced later).
    Column("image_name", String(128), nullable=True),
    Column("image_digest", String(80), nullable=True),
    # The storage it mounted, as it was then: [{"name", "kind", "path", "read_only"}]; NULL: none.
    Column("storage", JSON, nullable=True),
    # The connectors it was given, by name, as they were then: [{"name", "type"}]; NULL: none.
    Column("connectors", JSON, nullable=True),
    # What a result says besides the spec's fields: {"session", "outputs", "artifacts", "notes"}.
    Column("extras", JSON, nullable=True),
    Index("ix_executions_org_created", "org_id", "created_at"),
    Index("ix_executions_created", "created_at"),
)

thread_sessions = Table(
    "thread_sessions",
    metadata,
    # What became of a thread's persistent session in one language: the next run says so.
    Column("org_id", String(32), primary_key=True),
    Column("thread_id", String(128), primary_key=True),
    Column("language", String(16), primary_key=True),
    Column("state", String(8), nullable=False),  # "live" | "ended"
    Column("reason", String(16), nullable=True),  # why it ended (service/sessions.py REASONS)
    # The live session's token: a thread's home checkpointed by anyone else ends it.
    Column("token", String(32), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

execution_events = Table(
    "execution_events",
    metadata,
    Column("trace_id", String(32), ForeignKey("executions.trace_id", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("type", String(16), nullable=False),
    # Output events: stream and the raw UTF-8 text (no JSON escapes: a NUL costs one byte).
    # Every other event: its JSON body; a result's stdout/stderr are rebuilt from the output.
    Column("body", JSON, nullable=True),
    Column("stream", String(8), nullable=True),
    Column("data", LargeBinary, nullable=True),
)

webhook_secrets = Table(
    "webhook_secrets",
    metadata,
    Column("org_id", String(32), ForeignKey("orgs.id"), primary_key=True),
    Column("ciphertext", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("trace_id", String(32), ForeignKey("executions.trace_id"), nullable=False, unique=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("url", String(2048), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", String(512), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The server process attempting it now, until when: another may take it over after that.
    Column("claimed_by", String(64), nullable=True),
    Column("claim_expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_webhook_deliveries_status", "status", "next_attempt_at"),
)

threads = Table(
    "threads",
    metadata,
    Column("org_id", String(32), ForeignKey("orgs.id"), primary_key=True),
    Column("thread_id", String(128), primary_key=True),
    Column("uid", Integer, nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_used_at", DateTime(timezone=True), nullable=False),
    # A deleted thread stays as a tombstone so that its uid is never handed out again.
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    # The image the home was last used with (its `pip install --user` packages were built there).
    Column("image_digest", String(80), nullable=True),
)

volumes = Table(
    "volumes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("slug", String(64), nullable=False),
    Column("quota_mib", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("org_id", "slug", name="uq_volumes_org_slug"),
)

key_volumes = Table(
    "key_volumes",
    metadata,
    Column("key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("volume_id", String(32), ForeignKey("volumes.id", ondelete="CASCADE"), primary_key=True),
    Column("read_only", Boolean, nullable=False),
)

images = Table(
    "images",
    metadata,
    Column("id", String(32), primary_key=True),
    # NULL: a built-in image, usable by every organization.
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=True),
    Column("name", String(128), nullable=False),
    Column("digest", String(80), nullable=False),
    Column("source", String(1024), nullable=False),
    # {"env": {...}, "path": str, "binaries": {language: path}, "layers": [chain ids]}
    Column("config", JSON, nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_images_org_name", "org_id", "name"),
)

storage_connections = Table(
    "storage_connections",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    # The slug under /data/ (ids.NAME_PATTERN).
    Column("name", String(64), nullable=False),
    # buckets.providers.KINDS
    Column("kind", String(16), nullable=False),
    Column("bucket", String(255), nullable=False),
    Column("endpoint", String(1024), nullable=True),
    Column("region", String(64), nullable=True),
    # The connection's prefix inside the bucket ("" = the whole bucket).
    Column("prefix", String(1024), nullable=False),
    Column("read_only", Boolean, nullable=False),
    # The credentials, encrypted with a key derived from the server secret (service/sealing.py).
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("org_id", "name", name="uq_storage_connections_org_name"),
)

key_storage = Table(
    "key_storage",
    metadata,
    Column("key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("connection_id", String(32), ForeignKey("storage_connections.id"), primary_key=True),
    Column("read_only", Boolean, nullable=False),
    # The key's prefix below the connection's ("" = all the connection shows).
    Column("prefix", String(1024), nullable=False),
)

connectors = Table(
    "connectors",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("org_id", String(32), ForeignKey("orgs.id"), nullable=False),
    Column("name", String(64), nullable=False),
    # connectors.kinds.KINDS
    Column("kind", String(16), nullable=False),
    # What may be shown: hosts, header, variable names, database host (connectors/kinds.py).
    Column("config", JSON, nullable=False),
    # The secret, sealed with the connectors key file (connectors/keyring.py), bound to the id.
    Column("sealed", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("org_id", "name", name="uq_connectors_org_name"),
)

key_connectors = Table(
    "key_connectors",
    metadata,
    Column("key_id", String(32), ForeignKey("api_keys.id"), primary_key=True),
    Column("connector_id", String(32), ForeignKey("connectors.id"), primary_key=True),
)

registry_credentials = Table(
    "registry_credentials",
    metadata,
    Column("org_id", String(32), primary_key=True),
    Column("registry", String(255), primary_key=True),
    # "user:password", encrypted with a key derived from the server secret (service/sealing.py).
    Column("sealed", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

audit_log = Table(
    "audit_log",
    metadata,
    # Append-only hash chains, one per organization (service/audit.py); never updated.
    # The chain: the organization's id, "" for the installation's own rows (org creation).
    Column("org_id", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # "execution", "admin" or "files".
    Column("kind", String(16), nullable=False),
    # Who: "member", "cli", "system", or "key" (an API key: executions and files).
    Column("actor_kind", String(16), nullable=False),
    Column("actor_id", String(64), nullable=False),
    Column("actor_name", String(254), nullable=False),
    Column("ip", String(64), nullable=True),
    # "execution.finish", "key.create", "files.upload", ...
    Column("action", String(64), nullable=False),
    Column("target", String(512), nullable=False),
    # Search columns, copies of the detail's facts.
    Column("trace_id", String(32), nullable=True),
    Column("key_id", String(32), nullable=True),
    # before/after of an admin action; an execution's or a transfer's facts.
    Column("detail", JSON, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_org_at", "org_id", "at"),
    Index("ix_audit_log_at", "at"),
    Index("ix_audit_log_trace_id", "trace_id"),
    Index("ix_audit_log_key_id", "key_id", "at"),
)

audit_heads = Table(
    "audit_heads",
    metadata,
    # Each chain's last row, updated with every append (appenders serialize on this row), and
    # the anchor retention left: the last deleted row's seq and hash.
    Column("org_id", String(32), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("pruned_seq", BigInteger, nullable=False),
    Column("pruned_hash", String(64), nullable=False),
)
