"""The admin API's request and response bodies.

Request models state types and the rules the services enforce (names, ranges, enums) so the
document is true; the services still check everything (the console and the CLI call them
without these models). Response models are the views of service/admin.py; none holds a secret
except the `secret` of a `...Created` answer, which is shown that once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...buckets.providers import KINDS as STORAGE_KINDS
from ...connectors.kinds import KINDS as CONNECTOR_KINDS
from ...ids import NAME_PATTERN
from ...runtime.network.policy import NETWORK_MODES
from ...service import members
from ...service.requests import MAX_TIMEOUT_S
from ...service.roles import ROLE_NAMES
from ...service.sessions import SESSION_MODES

_NAME: Any = {"pattern": NAME_PATTERN}
#: An RFC 3339 time with its zone; the service reads it (service/admin.py parse_time).
Time = Annotated[str | None, Field(json_schema_extra={"format": "date-time"})]


def _one_of(values: tuple[str, ...], default: Any = ..., description: str | None = None) -> Any:
    """A string the service checks is one of `values` (the document says so)."""
    return Field(default, description=description, json_schema_extra={"enum": list(values)})


def _range(default: Any, low: float, high: float, description: str | None = None) -> Any:
    """A number the service checks is within [low, high] (the document says so)."""
    return Field(default, description=description, json_schema_extra={"minimum": low, "maximum": high})


def _name(description: str) -> Any:
    return Field(description=f"{description}: 1-63 lowercase letters, digits, '_' or '-'.", json_schema_extra=_NAME)


class _Request(BaseModel):
    # strict: "1.5" is not a number here, as the document says (times are still read from strings)
    model_config = ConfigDict(extra="forbid", strict=True)


class _View(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- who am I, organizations, members ------------------------------------------------------


class WhoAmI(BaseModel):
    org: str
    role: str
    permissions: list[str]
    member_id: str
    name: str
    via: str


class OrgCreate(_Request):
    name: str = _name("The organization's name")


class OrgOut(BaseModel):
    id: str
    name: str
    created_at: datetime | None


class MemberCreate(_Request):
    email: str = Field(description="An address like ana@example.com (or a label such as `owner`).",
                       json_schema_extra={"pattern": members._EMAIL.pattern})  # the service's rule
    role: str = _one_of(ROLE_NAMES, "member")


class MemberUpdate(_Request):
    role: str = _one_of(ROLE_NAMES)


class MemberOut(BaseModel):
    id: str
    email: str
    role: str
    oidc: bool = Field(description="Signed in through the identity provider at least once.")
    created_at: datetime | None
    last_seen_at: datetime | None


class TokenCreate(_Request):
    name: str = Field("", max_length=128)
    expires_at: Time = Field(None, description="Stops working then (with a time zone; in the future).")


class TokenOut(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(BaseModel):
    token: TokenOut
    secret: str = Field(description="The admin token (`sda-...`): shown only this once.")


# --- API keys --------------------------------------------------------------------------------


class VolumeBindingIn(_Request):
    name: str
    read_only: bool = False


class StorageBindingIn(_Request):
    name: str
    read_only: bool = False
    prefix: str = Field("", description="The key's own prefix below the connection's: the key sees only that.")


class KeyCreate(_Request):
    name: str = Field("", max_length=128, description="A label for the key.")
    sandbox: str = Field("default", description="The sandbox config the key is bound to.")
    region: str = Field("local", description="Region code in the key (sk-<region>-...).",
                        json_schema_extra={"pattern": r"^[a-z0-9]{1,16}$"})
    volumes: list[VolumeBindingIn] = []
    storage: list[StorageBindingIn] = []
    connectors: list[str] = []
    expires_at: Time = Field(None, description="Refused (401) from then on; with a time zone.")


class VolumeBindingOut(BaseModel):
    name: str
    read_only: bool


class StorageBindingOut(BaseModel):
    name: str
    read_only: bool
    prefix: str


class KeyOut(BaseModel):
    id: str
    prefix: str = Field(description="The key's first characters (never the key).")
    name: str
    status: Literal["active", "revoked", "expired"]
    created_by: str | None = Field(description="A member's id; `root` for the CLI.")
    created_at: datetime | None
    last_used_at: datetime | None = Field(description="Recorded at most once a minute.")
    expires_at: datetime | None
    revoked_at: datetime | None
    sandbox: str | None
    image: str | None = Field(description="The image the bound sandbox config runs on.")
    volumes: list[VolumeBindingOut]
    storage: list[StorageBindingOut]
    connectors: list[str]


class KeyCreated(BaseModel):
    key: KeyOut
    secret: str = Field(description="The API key (`sk-...`): shown only this once.")


class VolumeBindingChange(_Request):
    read_only: bool = False


# --- sandbox configs -------------------------------------------------------------------------


class SandboxCreate(_Request):
    name: str = _name("The config's name")
    cpus: float = _range(1.0, 0.05, 64, "CPU quota in cores.")
    memory_mib: int = _range(1024, 32, 1024 * 1024, "Memory limit in MiB.")
    network: str = _one_of(NETWORK_MODES, "none")
    allow: list[str] = Field([], description="With network allowlist (at least one): pypi.org, *.example.com, host:port.")
    timeout_cap_s: int = _range(60, 1, MAX_TIMEOUT_S, "Longest timeout allowed, seconds.")
    image: str = Field("host", description="The runtime image; host: the host's /usr.")
    session: str = _one_of(SESSION_MODES, "stateless")


class SandboxUpdate(_Request):
    # Absent: unchanged (null is not a value of any of them).
    cpus: float = _range(None, 0.05, 64)
    memory_mib: int = _range(None, 32, 1024 * 1024)
    network: str = _one_of(NETWORK_MODES, None)
    allow: list[str] = Field(None, description="Replaces the allowlist.")  # type: ignore[arg-type]
    timeout_cap_s: int = _range(None, 1, MAX_TIMEOUT_S)
    image: str = Field(None, description="The runtime image; host: the host's /usr.")  # type: ignore[assignment]
    session: str = _one_of(SESSION_MODES, None)


class SandboxOut(BaseModel):
    name: str
    id: str
    cpus: float
    memory_mib: int
    network: str
    allow: list[str]
    timeout_cap_s: int
    image: str
    session: str


# --- images, volumes, storage, connectors, webhook secret ------------------------------------


class ImageOut(_View):
    name: str
    id: str | None
    org: str | None = Field(description="The owning organization's id; null: built in.")
    digest: str | None
    languages: list[str]
    source: str
    size_bytes: int | None = None
    created_at: datetime | None = None


class ImageDetail(ImageOut):
    disk_bytes: int
    layers: int
    compressed_bytes: int | None
    env: dict[str, str]
    binaries: dict[str, str]


class VolumeCreate(_Request):
    name: str = _name("The volume's name (its directory under /data/)")
    quota_mib: int = _range(1024, 1, 16 * 1024 * 1024, "Quota in MiB.")


class VolumeOut(BaseModel):
    name: str
    id: str
    quota_mib: int


class StorageCreate(_Request):
    name: str = _name("Its name: the directory under /data/")
    type: str = _one_of(STORAGE_KINDS)
    bucket: str = Field(description="The bucket (Azure: the container).")
    endpoint: str | None = Field(None, description="The service's URL: https, or http to loopback.")
    region: str | None = None
    prefix: str = Field("", description="Show only this path of the bucket to every key.")
    read_only: bool = False
    credentials: dict[str, Any] = Field(
        description="s3 {access_key_id, secret_access_key}; gcs a service-account key (or {\"anonymous\": true}); "
        "azure {account, key} or {account, sas_url}. Kept encrypted; never shown again."
    )


class StorageOut(_View):
    name: str
    type: str
    bucket: str
    endpoint: str | None
    region: str | None
    prefix: str
    read_only: bool
    mounted_at: str
    created_at: datetime


class StorageDetail(StorageOut):
    keys: list[str] = Field(description="The active keys bound to it.")


class ConnectorCreate(_Request):
    name: str = _name("Its name")
    type: str = _one_of(CONNECTOR_KINDS)
    secret: str | dict[str, str] = Field(
        description="env: an object {NAME: value} (or NAME=value lines); postgres/mysql: the database URL; "
        "http: the token. Kept encrypted; never shown again."
    )
    hosts: list[str] = Field([], description="http: the hosts the secret is for.")
    header: str | None = Field(None, description="http: the header that carries it [default 'Authorization: Bearer {secret}'].")
    env_var: str | None = Field(None, description="http: the variable that holds the placeholder in the sandbox.")


class ConnectorUpdate(_Request):
    secret: str | dict[str, str]


class ConnectorOut(_View):
    name: str
    type: str
    created_at: datetime
    updated_at: datetime


class ConnectorDetail(ConnectorOut):
    keys: list[str]


class ThreadOut(BaseModel):
    thread_id: str
    uid: int = Field(description="The host uid its sandboxes run as.")
    created_at: datetime | None
    last_used_at: datetime | None
    last_image: str | None = Field(description="The digest of the image its home was last used with.")


class WebhookSecretRequest(_Request):
    rotate: bool = Field(False, description="Replace the existing secret (without: refused if there is one).")


class WebhookSecretOut(BaseModel):
    org: str
    rotated: bool
    secret: str = Field(description="The signing secret (`whsec_...`): shown only this once.")


# --- audit -----------------------------------------------------------------------------------


class AuditRowOut(BaseModel):
    org_id: str = Field(description="The chain: the organization's id; empty for the installation's rows.")
    seq: int
    at: datetime
    kind: str = Field(description="execution, admin or files.")
    actor_kind: str
    actor_id: str
    actor_name: str
    ip: str | None
    action: str
    target: str
    trace_id: str | None
    key_id: str | None
    detail: dict[str, Any] = Field(description="admin rows: {before, after}, plain views without secrets.")
    prev_hash: str
    hash: str


class AuditPageOut(BaseModel):
    rows: list[AuditRowOut]
    cursor: str | None = Field(description="Pass as `cursor` for the next page; null: this was the last.")
