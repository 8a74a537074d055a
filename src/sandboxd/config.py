"""Settings: one model, read from `SANDBOXD_*` environment variables and CLI flags.

Every field has a safe default and its unit in its name. A sandbox limit that is a server
setting has the name the runtime's `Limits` gives it, and takes its default from there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .ids import NODE_ID_PATTERN
from .runtime.spec import Limits

_CPUS = os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOXD_", extra="ignore")

    data_dir: Path = Field(
        default=Path("/var/lib/sandboxd"),
        description="Where the database, the server secret and runtime files live.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite (WAL) at <data_dir>/sandboxd.db. "
        "PostgreSQL: postgresql+asyncpg://user:pass@host/db",
    )
    node_id: str | None = Field(
        default=None,
        pattern=NODE_ID_PATTERN,
        description="This server's name among servers sharing one database: a restart recovers "
        "only the executions of its own node. Default: an id made once and kept in <data_dir>/node-id.",
    )
    host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port the API listens on.")

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Lowest level of log lines written to stderr (`sandboxd run`: warning, unless debug).",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: JSON lines, or readable lines when stderr is a terminal; json; console.",
    )
    metrics_enabled: bool = Field(
        default=True,
        description="Serve Prometheus metrics at /metrics, unauthenticated (on the API port "
        "unless metrics_port is set).",
    )
    metrics_port: int = Field(
        default=0, ge=0, le=65535,
        description="0: /metrics on the API port; else only on this port, on metrics_host.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address of the metrics_port listener.")

    output_limit_bytes: int = Field(
        default=Limits.output_limit_bytes, ge=1024, description="Cap on captured stdout and on stderr, each."
    )
    output_event_interval_ms: float = Field(
        default=10.0, ge=0,
        description="Output of one stream becomes at most one event per this interval (the "
        "first bytes after a quiet spell go out at once); pipe reads in between are joined.",
    )
    output_event_max_bytes: int = Field(
        default=64 * 1024, ge=1024, description="An output event is sent early once this many bytes wait."
    )
    max_output_events: int = Field(
        default=10_000, ge=1,
        description="Output events per execution; past it output is no longer streamed or "
        "stored as events, but still reaches the execution's result (up to output_limit_bytes).",
    )
    event_flush_interval_ms: float = Field(
        default=100.0, gt=0,
        description="A running execution's events are stored at most this often (after a "
        "short burst), once it has a follower or has run this long; a follower sees an event "
        "only once it is stored, so a reconnect after a crash continues where it stopped.",
    )
    execution_retention_days: int = Field(
        default=30, ge=0,
        description="Finished executions older than this are deleted, with their event logs "
        "and webhook deliveries (a sweep at start, then hourly). 0 keeps every execution "
        "(no sweep).",
    )
    max_concurrent: int = Field(
        default=max(4, 4 * _CPUS), ge=1, description="Executions running at once, all orgs.",
        json_schema_extra={"default_doc": "4 × CPUs, at least 4"},
    )
    max_concurrent_per_org: int = Field(
        default=0, ge=0,
        description="Executions running or waiting at once per organization (a plan limit: one "
        "more is refused at once); 0 = max_concurrent + half of admission_queue_max, so one org "
        "can fill the server but not the whole queue. The running share is fair by itself: a "
        "freed slot goes to the waiting org with the fewest running, and admission_reserve_slots "
        "admit an org with nothing running at once. An org's plan's concurrency limit (service/plans.py) overrides it.",
        json_schema_extra={"default_doc": "max_concurrent + admission_queue_max / 2"},
    )
    admission_reserve_slots: int = Field(
        default=1, ge=0,
        description="Slots kept for organizations with nothing running: an org that already runs "
        "executions takes a slot only while more than this many are free.",
    )
    admission_wait_s: float = Field(
        default=5.0, ge=0,
        description="A request within its org's cap that finds the server full waits this long "
        "for a slot (fewest-running org first, then oldest) before 429; 0 = refuse at once.",
    )
    admission_queue_max: int = Field(
        default=0, ge=0,
        description="Requests waiting for a slot at once, all orgs; beyond it 429 at once. "
        "0 = 16 × max_concurrent.",
        json_schema_extra={"default_doc": "16 × max_concurrent"},
    )
    auth_failures_allowed: int = Field(default=3, ge=1, description="Failed auths per IP per window.")
    auth_failure_window_s: int = Field(default=60, ge=1, description="The window of auth_failures_allowed.")
    auth_lockout_s: int = Field(
        default=60, ge=1,
        description="How long an address is refused after that (except for keys that have "
        "already authenticated from it; docs/security.md).",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or CIDR networks of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (comma-separated); from any other peer they are ignored.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="A request's headers must arrive within this long of the connection opening "
        "(or of the request's first byte); else 408 and close.",
    )
    keepalive_timeout_s: int = Field(
        default=20, ge=1,
        description="An idle kept-alive connection is closed after this long. Longer than "
        "clients' own expiry (httpx, which the baponi SDK uses: 5 s), so a client never sends "
        "a request on a connection the server is closing.",
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Longest silence while a request body arrives; else 408 and close. Responses "
        "(streams, long runs) are never timed.",
    )
    body_min_rate_bytes_s: int = Field(
        default=4096, ge=0,
        description="After the first body_timeout_s, a request body must average at least this "
        "rate (0: no minimum).",
    )
    max_connections: int = Field(
        default=10_000, ge=1,
        description="Open client connections at once; more are answered 503 and closed. Lowered "
        "at start to fit the open-file limit.",
    )
    max_connections_per_client: int = Field(
        default=256, ge=1,
        description="Open connections from one client address (IPv6: one /64); more are answered "
        "429 and closed. Trusted proxies count only toward max_connections.",
    )
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Request bodies above this are refused (413)."
    )

    keepalive_interval_s: float = Field(
        default=15.0, gt=0, description="NDJSON streams: a keepalive event after this much silence."
    )
    # --- members and console sign-in (service/members.py) ---
    console_session_ttl_s: float = Field(
        default=8 * 3600, gt=0, le=30 * 86400,
        description="A console sign-in ends this long after it began (sign in again then).",
    )
    # --- web console (sandboxd/console): its address and OpenID Connect sign-in ---
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="The address browsers reach this server at (e.g. https://sandboxd.example.com): "
        "the OpenID redirect URI is <public_url>/console/auth/callback, and console cookies are "
        "Secure when it is https. Default: the address of each request.",
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OpenID Connect provider (its issuer URL; discovery at "
        "<issuer>/.well-known/openid-configuration). Unset: the console signs in with admin tokens only.",
    )
    oidc_client_id: str | None = Field(default=None, description="This console's client id at the provider.")
    oidc_client_secret_file: Path | None = Field(
        default=None,
        description="A file holding the client secret (none: a public client, PKCE alone).",
    )
    oidc_org_claim: str = Field(
        default="org", description="The ID token claim naming the member's organization."
    )
    oidc_role_claim: str = Field(
        default="role", description="The ID token claim naming the member's role (owner, admin, member, auditor)."
    )
    oidc_scopes: str = Field(default="openid email profile", description="Scopes the console asks the provider for.")

    key_cache_ttl_s: float = Field(
        default=30.0,
        ge=0,
        description="How long an authenticated key is remembered without a database lookup; a "
        "revocation (server or CLI on this data dir) clears it at once.",
    )
    pool_enabled: bool = Field(
        default=True,
        description="Serve runs from pre-spawned single-use sandboxes (same isolation, the start "
        "moved off the request's path): stateless runs, and each thread's next run.",
    )
    pool_max_per_key: int = Field(
        default=4, ge=1, description="Most sandboxes kept warm for one (sandbox config, language)."
    )
    pool_max_total: int = Field(default=16, ge=1, description="Most sandboxes kept warm in all.")
    pool_memory_budget_mib: int = Field(
        default=512, ge=16, description="No more warm sandboxes while those waiting use this much memory."
    )
    pool_idle_s: float = Field(
        default=120.0,
        gt=0,
        description="A pool unused this long is emptied (an idle thread's warm sandbox retires); "
        "its size shrinks as demand falls.",
    )
    storage_mount_idle_s: float = Field(
        default=300.0,
        gt=0,
        description="A bucket mount (storage connection) no execution used this long is unmounted; "
        "the next execution that needs it mounts it again.",
    )
    storage_cache_max_mib: int = Field(
        default=4096,
        ge=64,
        description="Disk one bucket mount may use for files written and not yet uploaded (under "
        "<data_dir>/bucket-cache; rclone drops uploaded files first and keeps 1 GiB of the disk free).",
    )
    connectors_key_file: Path | None = Field(
        default=None,
        description="The key file connectors' secrets are sealed with (rotate it with `sandboxd "
        "connectors rotate-key`); default <data_dir>/connectors.key. Keep it apart from the database "
        "(e.g. on another disk or a secrets mount); servers sharing a database need the same file.",
    )
    shutdown_grace_s: float = Field(
        default=10.0,
        ge=0,
        description="On stop, running executions get this long to finish before they are "
        "killed and recorded failed/interrupted; then open HTTP responses get as long again.",
    )
    platform_error_threshold: int = Field(
        default=3,
        ge=0,
        description="Platform errors of the sandbox runtime in a row (no sandbox ran between them, "
        "all within platform_error_window_s) that turn /ready to 503 until a fresh self-check "
        "sandbox passes; executions are still admitted meanwhile. 0 = never.",
    )
    platform_error_window_s: float = Field(
        default=60.0, gt=0, description="The window of platform_error_threshold."
    )
    selfcheck_interval_s: float = Field(
        default=5.0, gt=0, description="While not ready after platform errors: time between self-checks."
    )
    webhook_allow_insecure: bool = Field(
        default=False,
        description="Development only: allow http:// webhook URLs and loopback/private targets.",
    )
    webhook_max_attempts: int = Field(default=6, ge=1, description="Delivery attempts per webhook.")
    webhook_backoff_s: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles after each failed attempt."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="Per delivery attempt.")

    storage_size_gib: int = Field(
        default=64, ge=1, description="Size of the sparse btrfs image that holds thread homes."
    )
    thread_quota_mib: int = Field(default=1024, ge=1, description="Disk quota of one thread's home.")
    org_storage_quota_mib: int = Field(
        default=0,
        ge=0,
        description="Disk cap of one organization: all its threads and volumes together (a write "
        "beyond it fails with EDQUOT; a new thread or volume is refused, 403); 0 = half of "
        "storage_size_gib, so that no organization can fill the shared image.",
        json_schema_extra={"default_doc": "half of storage_size_gib"},
    )
    max_threads_per_org: int = Field(default=1000, ge=1, description="Threads an organization may have.")

    # --- Plans (service/plans.py, docs/plans.md) -------------------------------------------------
    default_plan: Literal["free", "pro", "enterprise"] = Field(
        default="enterprise",
        description="The plan of an organization that has none assigned (`sandboxd plans assign`): "
        "its limits on CPU and memory per sandbox, concurrent executions, timeout, API keys, "
        "custom images, audit retention and streaming/async delivery. enterprise: unlimited.",
    )
    max_image_size_mib: int = Field(
        default=32768, ge=1,
        description="Largest unpacked image (all its layers' files); a bigger one, or a "
        "decompression bomb, is refused while it unpacks and nothing of it is kept.",
    )
    max_image_files: int = Field(
        default=2_000_000, ge=1, description="Most entries (files, directories, links) in one image, all layers."
    )
    session_idle_s: float = Field(
        default=600.0, gt=0,
        description="A persistent session (sandbox config --session persistent) unused this long ends; "
        "the thread's next result says reset (idle).",
    )
    session_memory_budget_mib: int = Field(
        default=4096, ge=64,
        description="Idle persistent sessions may hold this much memory in all; past it the oldest end "
        "(reset, evicted).",
    )
    session_max_per_org: int = Field(
        default=64, ge=1,
        description="Live persistent sessions of one organization; a new one past it ends the "
        "organization's oldest idle session (reset, evicted).",
    )
    thread_retention_days: int = Field(
        default=30, ge=1, description="Threads idle longer than this are deleted."
    )
    thread_uid_base: int = Field(
        default=1_000_000, ge=1000, description="First host uid given to threads (one each)."
    )

    sandbox_uid_base: int = Field(
        default=200_000, ge=1000, description="First unprivileged host uid used for sandboxes."
    )
    tmp_size_mib: int = Field(default=Limits.tmp_size_mib, ge=1, description="Size of /tmp inside a sandbox.")
    workdir_size_mib: int = Field(default=Limits.workdir_size_mib, ge=1, description="Size of /data inside a sandbox.")
    home_size_mib: int = Field(default=Limits.home_size_mib, ge=1, description="Size of a stateless /home/baponi.")
    outputs_size_mib: int = Field(
        default=Limits.outputs_size_mib, ge=0,
        description="Size of /data/outputs inside a sandbox (a tmpfs of its own; its files are "
        "kept as the execution's artifacts); 0 = sandboxes have no /data/outputs.",
    )
    outputs_max_files: int = Field(
        default=Limits.outputs_max_files, ge=1,
        description="Most files in /data/outputs, and kept as artifacts of one execution.",
    )
    artifact_retention_s: int = Field(
        default=86400, ge=60,
        description="How long the files an execution left in /data/outputs are kept (and their "
        "signed download URLs valid); they go earlier with the execution (execution_retention_days).",
    )
    file_size_mib: int = Field(default=Limits.file_size_mib, ge=1, description="RLIMIT_FSIZE inside a sandbox.")
    open_files_max: int = Field(default=Limits.open_files_max, ge=64, description="RLIMIT_NOFILE inside a sandbox.")
    pids_max: int = Field(default=Limits.pids_max, ge=16, description="Processes per sandbox (cgroup pids.max).")

    broker_upstream_ca_file: Path | None = Field(
        default=None,
        description="A PEM file of CA certificates trusted, besides the system trust store, for "
        "the hosts of brokered (HTTP) connectors: a private CA, or a test's. The sandbox never "
        "sees it.",
    )

    public_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names clients use to reach this server (comma-separated; `host` or "
        "`host:port`, IPv6 in brackets), besides localhost and --host. /mcp refuses other Host "
        "headers (DNS-rebinding protection); `*` accepts any.",
    )
    mcp_inline_max_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        description="MCP files_download also returns a file's content inline when it is UTF-8 text "
        "of at most this many bytes, and files_upload takes content inline up to this size; 0 = never.",
    )

    @field_validator("public_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, v: Any) -> Any:
        if isinstance(v, str):
            return [h.strip() for h in v.split(",") if h.strip()]
        return v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, v: Any) -> Any:
        return cls._split_hosts(v)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: list[str]) -> list[str]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is not an IP address or CIDR network") from None
        return v

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().absolute()
        if self.connectors_key_file is not None:
            self.connectors_key_file = self.connectors_key_file.expanduser().absolute()
        if self.org_storage_quota_mib == 0:
            self.org_storage_quota_mib = max(1, self.storage_size_gib * 1024 // 2)
        if self.admission_queue_max == 0:
            self.admission_queue_max = 16 * self.max_concurrent
        if self.max_concurrent_per_org == 0:
            self.max_concurrent_per_org = self.max_concurrent + self.admission_queue_max // 2
        return self

    @property
    def instance_id(self) -> str:
        """Tells this server's host resources (cgroups, mounts) from another's on one machine."""
        return hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]

    @property
    def run_dir(self) -> Path:
        """This server's mount points: under /run, which every sandbox uid can traverse (a data
        dir under /root could not be), so the data dir itself stays 0700."""
        return Path("/run/sandboxd") / self.instance_id

    @property
    def storage_mount_point(self) -> Path:
        """Where thread homes and volumes are mounted."""
        return self.run_dir / "storage"

    @property
    def effective_connectors_key_file(self) -> Path:
        return self.connectors_key_file or self.data_dir / "connectors.key"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'sandboxd.db'}"
