"""Who a client is, for the per-client limits (connection caps, failed-auth lockout).

A client is its IP address; an IPv6 client is its /64, the block one host or site usually
gets, so that rotating addresses inside it escapes no limit. Forwarded headers
(X-Forwarded-For) name the client only when the peer is a configured trusted proxy
(`trusted_proxies`); uvicorn's ProxyHeadersMiddleware applies them (server.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_key(host: str) -> str:
    """The unit a per-client limit counts: an IPv4 address, or an IPv6 address's /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # not an address (a unix socket's name): itself
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class TrustedProxies:
    """The peers whose forwarded headers are believed; none by default."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(e, strict=False) for e in entries)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str) or not self._networks:
            return False
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def as_uvicorn(self) -> list[str]:
        """The form uvicorn's `forwarded_allow_ips` takes."""
        return [str(n) for n in self._networks]
