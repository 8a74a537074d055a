"""The connector types, each defined once: what an admin gives, what is kept secret, and what
one execution gets.

- `env`: named variables, set in the sandbox as they are.
- `postgres` / `mysql`: a database URL. The sandbox gets the conventional variables pointing
  at a port the server forwards inside its network namespace (the database itself is reached
  by the server), so it works under network `none`.
- `http`: a secret the sandbox never holds. It gets a placeholder in one variable; the egress
  proxy puts the secret into requests to the connector's hosts only (runtime/network).

A connector's row keeps a `config` (never secret: what `show` prints) apart from its sealed
`secret` (connectors/keyring.py).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from ..envnames import reserved_env_name
from ..errors import InvalidRequest
from ..runtime.network import Brokered, Forward, parse_rule

KINDS = ("env", "postgres", "mysql", "http")
DATABASE_KINDS = ("postgres", "mysql")

#: Secrets given on stdin or in a file: enough for a service-account key, no more.
MAX_SECRET_BYTES = 64 * 1024
#: A brokered token: the broker scans every answer for it, so it stays short.
MAX_HTTP_SECRET_BYTES = 4096
MAX_VARIABLES = 50
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
_SCHEMES = {"postgres": ("postgres", "postgresql"), "mysql": ("mysql", "mariadb")}
_DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
DEFAULT_HEADER = "Authorization: Bearer {secret}"


@dataclass(frozen=True)
class Options:
    """What `connectors create` takes besides the secret (only `http` uses these)."""

    hosts: tuple[str, ...] = ()
    header: str | None = None
    env_var: str | None = None


@dataclass(frozen=True)
class Parsed:
    """A checked connector: its `config` (shown) and its `secret` (sealed)."""

    config: dict[str, Any]
    secret: dict[str, Any] = field(repr=False)


@dataclass
class RunParts:
    """What one execution gets from its connectors: the sandbox's variables, the runtime's
    forwards and brokered hosts, and the values to redact from its output, by connector name."""

    env: dict[str, str] = field(default_factory=dict)
    forwards: list[Forward] = field(default_factory=list)
    brokered: list[Brokered] = field(default_factory=list)
    redact: list[tuple[str, str]] = field(default_factory=list, repr=False)


def variables(config: dict[str, Any]) -> list[str]:
    """The variables a connector sets in the sandbox (names only)."""
    return list(config.get("variables", []))


def parse(kind: str, raw: bytes, options: Options) -> Parsed:
    """Check what an admin gave; every error names the field and never echoes a value."""
    if kind not in KINDS:
        raise InvalidRequest(f"connector type must be one of {', '.join(KINDS)}")
    if len(raw) > MAX_SECRET_BYTES:
        raise InvalidRequest(f"the secret must be at most {MAX_SECRET_BYTES} bytes")
    if kind != "http" and (options.hosts or options.header or options.env_var):
        raise InvalidRequest("--host, --header and --env-var are for type http only")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the secret must be UTF-8 text") from None
    if kind == "env":
        return _parse_env(text)
    if kind == "http":
        return _parse_http(text, options)
    return _parse_database(kind, text)


def run_parts(name: str, kind: str, config: dict[str, Any], secret: dict[str, Any], ports: set[int]) -> RunParts:
    """One connector's part of an execution. `ports` holds the sandbox ports already taken (the
    proxy's among them); a database connector takes its default port, or the next free one."""
    parts = RunParts()
    if kind == "env":
        parts.env = dict(secret["values"])
        parts.redact = [(name, v) for v in secret["values"].values()]
    elif kind == "http":
        placeholder = f"sandboxd-{name}-{secrets.token_hex(16)}"
        parts.env = {config["variables"][0]: placeholder}
        parts.brokered = [
            Brokered(
                connector=name,
                hosts=tuple(parse_rule(h) for h in config["hosts"]),
                header=config["header"],
                template=config["template"],
                placeholder=placeholder,
                secret=secret["secret"],
            )
        ]
        parts.redact = [(name, secret["secret"])]
    else:
        port = _DEFAULT_PORTS[kind]
        while port in ports:
            port += 1
        ports.add(port)
        url = urlsplit(secret["url"])
        parts.forwards = [Forward(connector=name, port=port, host=config["host"], upstream_port=config["port"])]
        parts.env = _database_env(kind, url, port)
        parts.redact = [(name, v) for v in _database_secrets(url)]
    return parts


# --- per kind ---------------------------------------------------------------------------------


def _parse_env(text: str) -> Parsed:
    """A JSON object `{"NAME": "value"}`, or `NAME=value` lines (a .env file)."""
    values: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidRequest("the secret is not valid JSON (expected {\"NAME\": \"value\", ...})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise InvalidRequest("an env connector's JSON must map names to string values")
        values = data
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise InvalidRequest(f"line {number} of the secret is not NAME=value")
            values[key.strip().removeprefix("export ").strip()] = value
    if not values:
        raise InvalidRequest("an env connector needs at least one variable")
    if len(values) > MAX_VARIABLES:
        raise InvalidRequest(f"an env connector may set at most {MAX_VARIABLES} variables")
    for number, (key, value) in enumerate(values.items(), 1):
        _check_env_name(key, f"variable {number}")
        if any(ord(c) < 0x20 and c not in "\t\n\r" for c in value) or len(value) > 16 * 1024:
            raise InvalidRequest(f"the value of {key} must be at most 16 KiB, without NUL or control characters")
    return Parsed({"variables": sorted(values)}, {"values": values})


def _parse_http(text: str, options: Options) -> Parsed:
    value = text.rstrip("\r\n")
    if not value:
        raise InvalidRequest("the secret is empty")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value.strip(" ")) or value != value.strip(" "):
        raise InvalidRequest("an http connector's secret must be one line of visible characters")
    if len(value.encode()) > MAX_HTTP_SECRET_BYTES:
        raise InvalidRequest(f"an http connector's secret must be at most {MAX_HTTP_SECRET_BYTES} bytes")
    if len(value) < 8:
        raise InvalidRequest("an http connector's secret must be at least 8 characters (shorter ones cannot be redacted safely)")
    if not options.hosts:
        raise InvalidRequest("an http connector needs at least one --host (e.g. api.example.com or *.example.com)")
    try:
        hosts = sorted({str(parse_rule(h)) for h in options.hosts})
    except ValueError as exc:
        raise InvalidRequest(str(exc).replace("allowlist entry", "host")) from None
    header_line = options.header or DEFAULT_HEADER
    header, sep, template = header_line.partition(":")
    template = template.strip()
    if not sep or not _HEADER_NAME.fullmatch(header.strip()) or template.count("{secret}") != 1:
        raise InvalidRequest("--header must be 'Name: value' with {secret} once in the value, e.g. "
                             f"{DEFAULT_HEADER!r}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in template):
        raise InvalidRequest("--header must be one line")
    if header.strip().lower() in ("host", "content-length", "transfer-encoding", "connection"):
        raise InvalidRequest(f"--header may not set {header.strip()}")
    if options.env_var is None:
        raise InvalidRequest("an http connector needs --env-var NAME: the variable that holds its placeholder")
    _check_env_name(options.env_var, "--env-var")
    config = {"hosts": hosts, "header": header.strip(), "template": template, "variables": [options.env_var]}
    return Parsed(config, {"secret": value})


def _parse_database(kind: str, text: str) -> Parsed:
    url = text.strip()
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS[kind]
    except ValueError:
        raise InvalidRequest(f"the {kind} URL is not valid (expected {_SCHEMES[kind][0]}://user:password@host:port/database)") from None
    if parts.scheme not in _SCHEMES[kind] or not parts.hostname:
        raise InvalidRequest(
            f"the secret must be a {kind} URL: {_SCHEMES[kind][0]}://user:password@host:port/database"
        )
    if any(ord(c) < 0x21 for c in url):
        raise InvalidRequest(f"the {kind} URL must be one line without spaces")
    config = {
        "host": parts.hostname,
        "port": port,
        "database": unquote(parts.path.lstrip("/")),
        "user": unquote(parts.username or ""),
        "variables": sorted(_database_env(kind, parts, port)),
    }
    return Parsed(config, {"url": url})


def _database_env(kind: str, url: Any, port: int) -> dict[str, str]:
    """The conventional variables, pointing at the forwarded port on the sandbox's 127.0.0.1."""
    user = unquote(url.username or "")
    password = unquote(url.password or "")
    database = unquote(url.path.lstrip("/"))
    auth = quote(user, safe="") + (":" + quote(password, safe="") if url.password is not None else "")
    netloc = (auth + "@" if url.username is not None else "") + f"127.0.0.1:{port}"
    env = {"DATABASE_URL": urlunsplit((url.scheme, netloc, url.path, url.query, ""))}
    if kind == "postgres":
        env |= {"PGHOST": "127.0.0.1", "PGPORT": str(port), "PGUSER": user, "PGPASSWORD": password,
                "PGDATABASE": database}
    else:
        env |= {"MYSQL_HOST": "127.0.0.1", "MYSQL_TCP_PORT": str(port), "MYSQL_USER": user,
                "MYSQL_PWD": password, "MYSQL_DATABASE": database}
    return {k: v for k, v in env.items() if v}


def _database_secrets(url: Any) -> list[str]:
    """The password, as given and decoded, and any password in the query (`?password=`)."""
    found = [url.password, unquote(url.password)] if url.password else []
    found += [v for k, values in parse_qs(url.query).items() if "pass" in k.lower() for v in values]
    return list(dict.fromkeys(found))


def _check_env_name(name: str, where: str) -> None:
    """A bad name is not echoed: it may be a secret pasted where a name was expected."""
    if not _ENV_NAME.fullmatch(name):
        raise InvalidRequest(f"the name of {where} must be an uppercase letter, then uppercase letters, digits or '_'")
    if reserved_env_name(name):
        raise InvalidRequest(f"variable {name!r} is reserved by the system")
