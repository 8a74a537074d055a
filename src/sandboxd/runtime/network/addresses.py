"""Which destination addresses sandbox egress may never reach, in one table.

The same table feeds the allowlist proxy (checked on every address a name resolves to) and
the nftables rules of `full` mode, so the two policies cannot drift. It lists the ranges
that lead into the operator's own network or to the host: loopback, private, shared (CGNAT),
link-local (cloud metadata lives there), multicast and reserved, and the host's own
addresses. Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)
are not routed anywhere, so they stay reachable: test rigs use them to stand in for "the
internet" inside namespaces they create.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

BLOCKED_V4: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (CGNAT; Alibaba metadata at 100.100.100.200)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (AWS/GCP/Azure metadata at 169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (Oracle metadata at 192.0.0.192)
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking, often used inside data centres
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved and broadcast
    )
)

BLOCKED_V6: tuple[ipaddress.IPv6Network, ...] = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/127",  # unspecified and loopback
        "fc00::/7",  # unique local (fd00:ec2::254 is AWS metadata)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_AZURE_WIRESERVER = ipaddress.IPv4Address("168.63.129.16")


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries to a v4 host (mapped, NAT64, 6to4), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def egress_refusal(ip: IPAddress, host_addresses: frozenset[IPAddress] = frozenset()) -> str | None:
    """Why sandbox egress to `ip` is refused, or None when it may go out."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return egress_refusal(inner, host_addresses)
    if ip == _AZURE_WIRESERVER:
        return "a cloud metadata address"
    table: tuple[IPNetwork, ...] = BLOCKED_V4 if isinstance(ip, ipaddress.IPv4Address) else BLOCKED_V6
    for net in table:
        if ip in net:
            return f"a non-public address ({net})"
    if ip in host_addresses:
        return "an address of this host"
    return None


def host_addresses() -> frozenset[IPAddress]:
    """This host's own addresses in the current network namespace (from /proc, no netlink)."""
    found: set[IPAddress] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for before, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL":
            found.add(ipaddress.IPv4Address(before.strip().split()[-1]))
    try:
        for row in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = row.split()[0]
            found.add(ipaddress.IPv6Address(":".join(raw[i : i + 4] for i in range(0, 32, 4))))
    except OSError:
        pass
    return frozenset(found)
