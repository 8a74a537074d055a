"""`full` egress: slirp4netns user-mode networking plus nftables rules the sandbox cannot change.

slirp4netns gives the namespace a tap device (10.0.2.100, gateway 10.0.2.2, DNS 10.0.2.3) and
turns the sandbox's packets into ordinary sockets of its own process on the host, so nothing
routes from the sandbox into the host's network stack. `--disable-host-loopback` stops the
gateway address from reaching the host's 127.0.0.1. Before slirp4netns starts, an nftables
table in the sandbox's namespace rejects every packet to `addresses.BLOCKED_V4`, the host's
own addresses, and all IPv6 except loopback; the namespace belongs to the host's user
namespace, so the code inside holds no capability to change it. Refused destinations are
collected in a dynamic set and read back for the audit record.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address

from . import netns as _netns
from .addresses import BLOCKED_V4, IPAddress
from .policy import NetworkDecision

GATEWAY_DNS = "10.0.2.3"
RESOLV_CONF = f"nameserver {GATEWAY_DNS}\noptions timeout:2 attempts:2\n".encode()
_TABLE = "sandboxd"


def rules(host_addresses: frozenset[IPAddress]) -> str:
    blocked = [str(net) for net in BLOCKED_V4]
    blocked += sorted(str(a) for a in host_addresses if isinstance(a, IPv4Address) and not a.is_loopback)
    return f"""
table inet {_TABLE} {{
  set blocked4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {", ".join(blocked)} }} }}
  set refused {{ type ipv4_addr . inet_service; flags dynamic; size 256; }}
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    ip daddr {GATEWAY_DNS} meta l4proto {{ tcp, udp }} th dport 53 accept
    ip daddr @blocked4 meta l4proto {{ tcp, udp }} add @refused {{ ip daddr . th dport }}
    ip daddr @blocked4 reject with icmpx admin-prohibited
    meta nfproto ipv6 reject with icmpx admin-prohibited
  }}
}}
"""


@dataclass
class UserNet:
    """A running slirp4netns for one namespace; `close()` ends it (it also dies with us)."""

    ns: _netns.NetNamespace
    proc: subprocess.Popen[bytes]
    exit_fd: int
    nft: str

    @classmethod
    def start(
        cls,
        ns: _netns.NetNamespace,
        host_addresses: frozenset[IPAddress],
        *,
        slirp4netns: str = "slirp4netns",
        nft: str = "nft",
    ) -> UserNet:
        """Rules first, then the tap device: no packet leaves before the filter is in place."""
        _in_ns(ns, [nft, "-f", "-"], rules(host_addresses).encode())
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        try:
            proc = subprocess.Popen(
                [
                    slirp4netns, "--configure", "--mtu=65520", "--disable-host-loopback",
                    "--enable-sandbox", "--enable-seccomp",
                    f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                    "--netns-type=path", f"/proc/self/fd/{ns.fd}", "tap0",
                ],
                pass_fds=(ready_w, exit_r, ns.fd),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={},
            )
        except BaseException:
            os.close(exit_w)
            raise
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            ready = os.read(ready_r, 1)
        finally:
            os.close(ready_r)
        net = cls(ns, proc, exit_w, nft)
        if ready != b"1":
            stderr = net.close()
            raise OSError(f"slirp4netns did not start: {stderr.strip()[-300:]}")
        return net

    def refused(self) -> tuple[NetworkDecision, ...]:
        """The blocked destinations the sandbox tried (address and port), from the rules' set."""
        listing = _in_ns(self.ns, [self.nft, "-j", "list", "set", "inet", _TABLE, "refused"], b"")
        found = []
        for item in json.loads(listing).get("nftables", []):
            for element in item.get("set", {}).get("elem", []):
                address, port = element["concat"] if "concat" in element else element["elem"]["val"]["concat"]
                found.append(NetworkDecision(str(address), int(port), False, "non-public address"))
        return tuple(found)

    def close(self) -> str:
        if self.exit_fd >= 0:
            os.close(self.exit_fd)  # slirp4netns exits when this closes
            self.exit_fd = -1
        try:
            _, stderr = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, stderr = self.proc.communicate()
        return (stderr or b"").decode(errors="replace")


def _in_ns(ns: _netns.NetNamespace, argv: list[str], stdin: bytes) -> str:
    done = subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        pass_fds=(ns.fd,),
        preexec_fn=lambda: _netns.setns(ns.fd),
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        timeout=10,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(f"{argv[0]} in the sandbox namespace failed: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode()
