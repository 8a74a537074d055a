"""SSRF guard for outbound webhook requests.

A webhook URL is chosen by the API caller, and the server POSTs to it from inside the
operator's network. So: https only, and every address the name resolves to must be public
(not loopback, private, link-local, shared, reserved, multicast, or a cloud metadata
address). The delivery then connects to the address that was checked, never re-resolving
(no DNS rebinding between check and connect). `allow_insecure` (development and tests)
permits plain http and loopback/private targets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from ..errors import Forbidden, InvalidRequest
from ..runtime.network.addresses import embedded_ipv4

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Metadata services that sit at addresses `ipaddress` would call global.
_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "168.63.129.16", "100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Target:
    """Where to connect: the checked address, and the name for Host and TLS."""

    url: str
    scheme: str
    host: str
    port: int
    address: str
    path: str

    @property
    def pinned_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def is_public(ip: IPAddress) -> bool:
    inner = embedded_ipv4(ip)
    if inner is not None:
        return is_public(inner)
    return ip.is_global and not ip.is_multicast and ip not in _METADATA


class UrlGuard:
    def __init__(self, *, allow_insecure: bool = False, resolver: Resolver = system_resolver) -> None:
        self.allow_insecure = allow_insecure
        self._resolve = resolver

    def check_url(self, url: str) -> None:
        """Syntax and scheme, and the address when the host is an IP literal (no DNS here)."""
        parts = self._split(url)
        try:
            literal = ipaddress.ip_address(parts.hostname or "")
        except ValueError:
            return
        self._check_address(literal)

    async def resolve(self, url: str) -> Target:
        """Resolve and check every address; raises Forbidden when any is not allowed."""
        parts = self._split(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise Forbidden(f"webhook host {host!r} does not resolve: {exc}") from None
        if not addresses:
            raise Forbidden(f"webhook host {host!r} does not resolve")
        checked = [ipaddress.ip_address(a) for a in addresses]
        for ip in checked:
            self._check_address(ip)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Target(url=url, scheme=parts.scheme, host=host, port=port, address=str(checked[0]), path=path)

    def _split(self, url: str) -> SplitResult:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise InvalidRequest("webhook_url is not a valid URL") from None
        allowed = ("https", "http") if self.allow_insecure else ("https",)
        if parts.scheme not in allowed:
            raise InvalidRequest("webhook_url must be an https:// URL")
        if not parts.hostname:
            raise InvalidRequest("webhook_url must include a host")
        if parts.username or parts.password:
            raise InvalidRequest("webhook_url must not contain credentials")
        return parts

    def _check_address(self, ip: IPAddress) -> None:
        if is_public(ip):
            return
        if self.allow_insecure and (embedded_ipv4(ip) or ip) not in _METADATA:
            return
        raise Forbidden(f"webhook_url resolves to a non-public address ({ip}); refused")
