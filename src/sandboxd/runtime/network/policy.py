"""A sandbox's network policy as the runtime carries it out, and what the sandbox tried.

`none` is an empty namespace (loopback only); `allowlist` is an empty namespace whose only way
out is the egress proxy listening inside it; `full` is user-mode networking (slirp4netns) with
nftables rules in the namespace that drop the operator's own ranges.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal

NetworkMode = Literal["none", "allowlist", "full"]
NETWORK_MODES: tuple[NetworkMode, ...] = ("none", "allowlist", "full")
#: Ports an allowlist entry without `:port` opens: HTTP and HTTPS.
DEFAULT_PORTS = (80, 443)

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
#: A name a sandbox may ask for (after IDNA): `_` allowed, as in real DNS names, and nothing
#: else outside [a-z0-9-_.]; a NUL or a control character would let the resolver (which stops
#: at a NUL) see another name than the rules did.
_HOST = re.compile(r"[a-z0-9_-]{1,63}(\.[a-z0-9_-]{1,63})*")


@dataclass(frozen=True)
class AllowRule:
    """One allowlist entry: `example.com` (that name only) or `*.example.com` (any subdomain,
    not the apex), on one port or on `DEFAULT_PORTS`."""

    pattern: str
    port: int | None = None

    def matches(self, host: str, port: int) -> bool:
        if not is_host_name(host):  # the caller checked with host_name(); once more, cheaply
            return False
        if port not in ((self.port,) if self.port is not None else DEFAULT_PORTS):
            return False
        if self.pattern.startswith("*."):
            return host.endswith(self.pattern[1:]) and host != self.pattern[2:]
        return host == self.pattern

    def __str__(self) -> str:
        return self.pattern if self.port is None else f"{self.pattern}:{self.port}"


def parse_rule(text: str) -> AllowRule:
    """`pypi.org`, `*.example.com`, `files.example.com:8443`; raises ValueError with the reason."""
    entry = text.strip().lower().rstrip(".")
    pattern, _, port_text = entry.partition(":")
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"allowlist entry {text!r}: port must be 1-65535")
        port = int(port_text)
    try:
        ipaddress.ip_address(pattern)
    except ValueError:
        pass
    else:
        raise ValueError(f"allowlist entry {text!r}: IP addresses are not allowed, name a domain")
    try:
        pattern = pattern.encode("idna").decode("ascii") if not pattern.isascii() else pattern
    except UnicodeError:
        raise ValueError(f"allowlist entry {text!r} is not a valid domain name") from None
    if len(pattern) > 253 or not _DOMAIN.fullmatch(pattern) or "." not in pattern.lstrip("*."):
        raise ValueError(
            f"allowlist entry {text!r} must be a domain such as pypi.org or *.example.com, "
            "with an optional :port"
        )
    return AllowRule(pattern, port)


def host_name(name: str | None) -> str:
    """The name a sandbox asked for, checked and normalised: lower case, one trailing dot
    dropped, IDNA, labels of [a-z0-9_-]{1,63}, at most 253 characters, no empty label; or an
    IP literal (for the caller to refuse by name). ValueError otherwise."""
    if not name:
        raise ValueError("no host")
    name = name.lower()
    name = name[:-1] if name.endswith(".") else name
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return name
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("not a valid host name") from None
    if not is_host_name(name):
        raise ValueError("not a valid host name")
    return name


def is_host_name(name: str) -> bool:
    return len(name) <= 253 and _HOST.fullmatch(name) is not None


@dataclass(frozen=True)
class NetworkPolicy:
    mode: NetworkMode = "none"
    allow: tuple[AllowRule, ...] = ()

    @classmethod
    def parse(cls, mode: str, allow: list[str] | tuple[str, ...] = ()) -> NetworkPolicy:
        if mode not in NETWORK_MODES:
            raise ValueError(f"network must be one of: {', '.join(NETWORK_MODES)}")
        if allow and mode != "allowlist":
            raise ValueError("allowed domains need network policy 'allowlist'")
        return cls(mode, tuple(parse_rule(a) for a in allow))

    def permits(self, host: str, port: int) -> bool:
        return any(rule.matches(host, port) for rule in self.allow)


@dataclass(frozen=True)
class NetworkDecision:
    """One destination the sandbox asked for and what the policy said (for the audit log)."""

    host: str
    port: int
    allowed: bool
    reason: str
    count: int = 1
    #: A connector's traffic: its name; for a brokered request also its method and the
    #: upstream's status (None when no answer came).
    connector: str | None = None
    method: str | None = None
    status: int | None = None


@dataclass(frozen=True)
class Brokered:
    """An HTTP connector: the sandbox holds `placeholder`; requests to `hosts` get `secret`."""

    connector: str
    #: Host patterns (exact or `*.domain`, on a port or on `DEFAULT_PORTS`).
    hosts: tuple[AllowRule, ...]
    #: The header that carries the secret, e.g. "Authorization".
    header: str
    #: The header's value, e.g. "Bearer {secret}" (contains "{secret}" once).
    template: str
    #: Random per execution: what the sandbox's variable holds instead of the secret.
    placeholder: str
    secret: str = field(repr=False)

    def matches(self, host: str, port: int) -> bool:
        return any(rule.matches(host, port) for rule in self.hosts)

    def header_value(self) -> str:
        return self.template.replace("{secret}", self.secret, 1)


@dataclass(frozen=True)
class Forward:
    """A database connector: 127.0.0.1:`port` inside the sandbox reaches host:upstream_port."""

    connector: str
    port: int
    #: Admin-configured: a name or an address, loopback allowed.
    host: str
    upstream_port: int


@dataclass(frozen=True)
class Egress:
    """What an execution's connectors need from the network: brokered hosts, forwarded ports."""

    brokered: tuple[Brokered, ...] = ()
    forwards: tuple[Forward, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.brokered or self.forwards)

    def broker_for(self, host: str, port: int) -> Brokered | None:
        """The connector that brokers host:port, if any (the first one listed wins)."""
        return next((b for b in self.brokered if b.matches(host, port)), None)
