"""The storage providers a connection can name, what each needs, and the rclone remote it becomes.

A connection is untrusted admin input that ends up in an rclone config file the server feeds
to a process running as root; so every field is checked here, once, against a table per kind,
and nothing reaches rclone that could add a line to its config or send it somewhere else.

Credentials, as read from a file or stdin (`parse_credentials`):

- **s3**: JSON `{"access_key_id": ..., "secret_access_key": ..., "session_token": ...}`
  (`session_token` optional: temporary STS credentials).
- **gcs**: a service-account key JSON as Google gives it (`"type": "service_account"`, with
  `client_email` and `private_key`), or `{"anonymous": true}` for public buckets and emulators.
  A key's `token_uri` obeys the endpoint rule (rclone posts the signed JWT there).
- **azure**: JSON `{"account": ..., "key": ...}` (a storage account key) or
  `{"account": ..., "sas_url": ...}` (a container SAS URL).

Endpoints (`check_endpoint`): `https://` anywhere; plain `http://` only to a loopback host
(127.0.0.0/8, ::1, localhost): credentials never cross a network in clear.

No error message here ever holds a credential value; they name the field and say what is wrong.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import InvalidRequest

KINDS = ("s3", "gcs", "azure")
"""The storage providers, in the order surfaces list them; the wire values of `--type`."""

# kind -> (required fields, optional fields), for the kinds given as a flat JSON object.
# gcs is not here: a service-account key is Google's document, checked by `_gcs_credentials`.
_FLAT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "s3": (("access_key_id", "secret_access_key"), ("session_token",)),
}
# The Azure shapes: a shared key, or a SAS URL (one of the two, never both).
_AZURE_SHAPES = ({"account", "key"}, {"account", "sas_url"})
# A service-account key's fields rclone needs; Google's others (project_id, client_id, ...) pass.
_GCS_REQUIRED = ("client_email", "private_key")

# kind -> bucket (container) name rule, and the provider's words for it.
_BUCKET_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    # S3: 3-63 of lowercase letters, digits, dots, hyphens (AWS); S3-compatible stores agree.
    "s3": (re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"), "3-63 lowercase letters, digits, '.' or '-'"),
    # GCS: 3-63 (dotted names up to 222) of lowercase letters, digits, '.', '-', '_'.
    "gcs": (re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]"), "3-222 lowercase letters, digits, '.', '-' or '_'"),
    # Azure containers: 3-63 lowercase letters, digits and single hyphens.
    "azure": (re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}"), "3-63 lowercase letters, digits or single '-'"),
}
_REGION = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_PATH_COMPONENT_BAD = re.compile(r"[\x00-\x1f\x7f\\]")
_MAX_CREDENTIALS_BYTES = 64 * 1024


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidRequest(f"unknown storage type {kind[:20]!r}: expected one of {', '.join(KINDS)}")
    return kind


def check_endpoint(url: str, *, what: str = "endpoint") -> str:
    """`url` if it is an https URL, or an http URL to a loopback host; InvalidRequest otherwise.

    The host is judged as written, never resolved: `localhost` and loopback IP literals only.
    No credentials, query or fragment in it (they would end up in rclone's config and logs).
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url) or len(url) > 2048:
        raise InvalidRequest(f"the {what} is not a URL (control characters, spaces or too long)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise InvalidRequest(f"the {what} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise InvalidRequest(f"the {what} must be an https:// URL (http:// only to a loopback host)")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(f"the {what} must not hold credentials (user:password@)")
    if parts.query or parts.fragment:
        raise InvalidRequest(f"the {what} must not have a query or fragment")
    if parts.scheme == "http" and not _is_loopback(host):
        raise InvalidRequest(
            f"the {what} uses plain http:// to a non-loopback host; use https:// "
            "(http:// is allowed only to 127.0.0.1, ::1 or localhost)"
        )
    return url


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bucket(kind: str, bucket: str) -> str:
    rule, words = _BUCKET_RULES[check_kind(kind)]
    if not rule.fullmatch(bucket) or ".." in bucket:
        noun = "container" if kind == "azure" else "bucket"
        raise InvalidRequest(f"invalid {noun} name {bucket[:70]!r}: {words}")
    return bucket


def check_region(region: str) -> str:
    if not _REGION.fullmatch(region):
        raise InvalidRequest(f"invalid region {region[:70]!r}: lowercase letters, digits and '-'")
    return region


def check_path_in_bucket(path: str) -> str:
    """A prefix inside a bucket, normalised to `a/b/c` ('' for the whole bucket).

    Refused: `.` or `..` components, backslashes, control characters; leading, trailing and
    doubled slashes are dropped. The result is what `rclone` is pointed at, below the bucket.
    """
    if len(path) > 1024:
        raise InvalidRequest("a path inside the bucket is at most 1024 characters")
    parts = [p for p in path.split("/") if p]
    for part in parts:
        if part in (".", "..") or _PATH_COMPONENT_BAD.search(part):
            raise InvalidRequest(
                f"invalid path inside the bucket {path[:80]!r}: no '.' or '..' components, "
                "backslashes or control characters"
            )
    return "/".join(parts)


def parse_credentials(kind: str, raw: bytes) -> dict[str, str]:
    """The credentials of a `kind` connection from the bytes of a file or stdin, checked.

    Returns rclone's own option names (`access_key_id`, `service_account_credentials`,
    `anonymous`, `account`, `key`, `sas_url`, ...) with their values. Raises InvalidRequest
    naming the missing, unknown or malformed field; never a value.
    """
    check_kind(kind)
    if len(raw) > _MAX_CREDENTIALS_BYTES:
        raise InvalidRequest(f"{kind} credentials are larger than {_MAX_CREDENTIALS_BYTES // 1024} KiB")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest(f"{kind} credentials must be a JSON object ({_SHAPES[kind]})") from None
    if not isinstance(doc, dict):
        raise InvalidRequest(f"{kind} credentials must be a JSON object ({_SHAPES[kind]})")
    if kind == "gcs":
        return _gcs_credentials(doc)
    if kind == "azure":
        return _azure_credentials(doc)
    required, optional = _FLAT_FIELDS[kind]
    return _flat(kind, doc, required, optional)


_SHAPES = {
    "s3": '{"access_key_id": ..., "secret_access_key": ..., "session_token": optional}',
    "gcs": 'a service-account key JSON ("type": "service_account") or {"anonymous": true}',
    "azure": '{"account": ..., "key": ...} or {"account": ..., "sas_url": ...}',
}


def _flat(kind: str, doc: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, str]:
    unknown = sorted(set(doc) - set(required) - set(optional))
    if unknown:
        raise InvalidRequest(f"unknown field in {kind} credentials: {_names(unknown)} (expected {_SHAPES[kind]})")
    missing = [name for name in required if name not in doc]
    if missing:
        raise InvalidRequest(f"missing field in {kind} credentials: {_names(missing)} (expected {_SHAPES[kind]})")
    return {name: _string(kind, name, value) for name, value in doc.items()}


def _azure_credentials(doc: dict[str, Any]) -> dict[str, str]:
    names = set(doc)
    if names not in _AZURE_SHAPES:
        unknown = sorted(names - {"account", "key", "sas_url"})
        if unknown:
            problem = f"unknown field {_names(unknown)}"
        elif {"key", "sas_url"} <= names:
            problem = "give either key or sas_url, not both"
        elif "account" not in names:
            problem = "missing field 'account'"
        else:
            problem = "missing field 'key' or 'sas_url'"
        raise InvalidRequest(f"azure credentials: {problem} (expected {_SHAPES['azure']})")
    creds = {name: _string("azure", name, value) for name, value in doc.items()}
    if not _ACCOUNT.fullmatch(creds["account"]):
        raise InvalidRequest("azure credentials: account must be 3-24 lowercase letters or digits")
    if "sas_url" in creds:
        check_endpoint(creds["sas_url"].split("?", 1)[0], what="sas_url")
        if "?" not in creds["sas_url"]:
            raise InvalidRequest("azure credentials: sas_url must be a SAS URL (it has no ?... token)")
    return creds


def _gcs_credentials(doc: dict[str, Any]) -> dict[str, str]:
    if "anonymous" in doc:
        if doc != {"anonymous": True}:
            raise InvalidRequest('gcs credentials: anonymous access is exactly {"anonymous": true}, with no other field')
        return {"anonymous": "true"}
    if doc.get("type") != "service_account":
        raise InvalidRequest(f'gcs credentials: field type must be "service_account" (expected {_SHAPES["gcs"]})')
    missing = [name for name in _GCS_REQUIRED if name not in doc]
    if missing:
        raise InvalidRequest(f"missing field in gcs credentials: {_names(missing)} (expected {_SHAPES['gcs']})")
    for name, value in doc.items():
        # Google's key has only strings; a nested value would be something else entirely.
        if not isinstance(value, str):
            raise InvalidRequest(f"gcs credentials: field {name[:40]!r} must be a string")
    if "-----BEGIN" not in doc["private_key"]:
        raise InvalidRequest("gcs credentials: private_key is not a PEM private key")
    for name in ("token_uri",):
        if name in doc:
            check_endpoint(doc[name], what=f"gcs credentials' {name}")
    # Compact, one line: it becomes one value in rclone's INI-style config (its \n stay escaped).
    return {"service_account_credentials": json.dumps(doc, separators=(",", ":"))}


def _string(kind: str, name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{kind} credentials: field {name!r} must be a non-empty string")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or value != value.strip():
        raise InvalidRequest(f"{kind} credentials: field {name!r} has control characters or surrounding spaces")
    return value


def _names(names: list[str]) -> str:
    return ", ".join(repr(n[:40]) for n in names[:5])


@dataclass(frozen=True)
class Remote:
    """One bucket (container) of one provider, with what it takes to reach it.

    Built from a stored connection; checked on construction, so a Remote that exists is safe
    to turn into rclone's config. `credentials` is `parse_credentials`'s output; it never
    shows in a repr.
    """

    kind: str
    bucket: str
    credentials: dict[str, str] = field(repr=False)
    endpoint: str | None = None
    region: str | None = None

    def __post_init__(self) -> None:
        check_bucket(self.kind, self.bucket)
        if self.endpoint is not None:
            check_endpoint(self.endpoint)
        if self.region is not None:
            if self.kind != "s3":
                raise InvalidRequest(f"a region applies only to s3 connections, not {self.kind}")
            check_region(self.region)
        allowed = {
            "s3": {"access_key_id", "secret_access_key", "session_token"},
            "gcs": {"anonymous", "service_account_credentials"},
            "azure": {"account", "key", "sas_url"},
        }[self.kind]
        if not self.credentials or set(self.credentials) - allowed:
            raise InvalidRequest(f"credentials do not fit a {self.kind} connection")

    def rclone_options(self) -> dict[str, str]:
        """The options of this remote's section in rclone's config (`type` first).

        Every kind turns its provider's ambient credential lookup off (env_auth, instance
        metadata): the server's own identity must never be what a connection uses.
        """
        if self.kind == "s3":
            options = {
                "type": "s3",
                "provider": "Other" if self.endpoint else "AWS",
                "env_auth": "false",
                # The bucket exists or the mount fails: never create one as a side effect.
                "no_check_bucket": "true",
                **self.credentials,
            }
            if self.endpoint:
                # S3-compatible stores (SeaweedFS, MinIO, ...) want path-style addressing.
                options |= {"endpoint": self.endpoint, "force_path_style": "true"}
            options["region"] = self.region or "us-east-1"
            return options
        if self.kind == "gcs":
            options = {"type": "google cloud storage", "env_auth": "false", "bucket_policy_only": "true", **self.credentials}
            if self.endpoint:
                options["endpoint"] = self.endpoint
            return options
        options = {"type": "azureblob", "env_auth": "false", **self.credentials}
        if self.endpoint:
            options["endpoint"] = self.endpoint
        return options

    def secrets(self) -> list[str]:
        """Every credential value and its parts worth scrubbing from any text rclone prints."""
        values: list[str] = []
        for name, value in self.credentials.items():
            if name in ("anonymous", "account"):  # not secrets: a flag, a public account name
                continue
            values.append(value)
            if name == "service_account_credentials":
                key = json.loads(value)
                values.append(key["private_key"])
                values += [line for line in key["private_key"].splitlines() if len(line) >= 16]
                values += [v for k, v in key.items() if k in ("private_key_id",)]
            if name == "sas_url" and "?" in value:
                values.append(value.split("?", 1)[1])
                sigs = [p.split("=", 1)[1] for p in value.split("?", 1)[1].split("&") if p.startswith("sig=")]
                values += sigs + [unquote(sig) for sig in sigs]
        return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)
