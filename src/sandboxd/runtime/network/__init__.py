"""Network policy for sandboxes: `none`, `allowlist` (egress proxy) or `full` (slirp4netns).

`Network.attach(policy, egress)` makes what one execution needs and returns an `Attached`:
the namespace for the launcher to join (None for `none` without connectors: bubblewrap makes
an empty one), the environment, resolv.conf, extra /etc/hosts lines and CA bundle to put in
the sandbox, and, after the run, the decisions for the audit record. The host side (proxy,
broker, forwards, slirp4netns, rules) never runs inside the sandbox.

Connectors (`Egress`) add to any mode: each `Forward` is a listener on 127.0.0.1:port in the
namespace (forward.py); `Brokered` connectors get the egress proxy (with an allowlist of
nothing under `none`, letting any checked name through under `full`), which brokers their
hosts (broker.py) with leaves of the server's CA (ca.py), plus a TLS listener on
127.0.0.1:443 (or the rule's port) that /etc/hosts points each exact connector host at, for
clients that ignore proxy variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ...errors import SandboxSetupError

from . import netns as _netns
from .addresses import IPAddress, egress_refusal, embedded_ipv4, host_addresses
from .ca import CertificateAuthority
from .forward import Forwarder
from .policy import (
    DEFAULT_PORTS,
    NETWORK_MODES,
    AllowRule,
    Brokered,
    Egress,
    Forward,
    NetworkDecision,
    NetworkMode,
    NetworkPolicy,
    parse_rule,
)
from .proxy import LISTEN, PROXY_URL, EgressProxy, Resolver, system_resolver
from .usernet import RESOLV_CONF, UserNet

__all__ = [
    "DEFAULT_PORTS",
    "NETWORK_MODES",
    "AllowRule",
    "BROKER_ENV_NAMES",
    "Attached",
    "Brokered",
    "CA_BUNDLE_PATH",
    "CertificateAuthority",
    "Egress",
    "Forward",
    "Network",
    "NetworkDecision",
    "NetworkMode",
    "NetworkPolicy",
    "egress_refusal",
    "embedded_ipv4",
    "parse_rule",
]

_T = TypeVar("_T")

_PROXY_ENV = {
    name: PROXY_URL for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "npm_config_proxy", "npm_config_https_proxy")
} | {"NO_PROXY": "localhost,127.0.0.1,::1", "no_proxy": "localhost,127.0.0.1,::1"}

#: Where a sandbox with brokered connectors finds the CA bundle it trusts (bwrap.py binds it).
CA_BUNDLE_PATH = "/run/sandboxd/ca.pem"
_CA_ENV = {
    name: CA_BUNDLE_PATH for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")
} | {"NODE_USE_ENV_PROXY": "1"}
#: What a sandbox with brokered connectors has set by the network, over any other value.
BROKER_ENV_NAMES = frozenset(_CA_ENV)
#: The port a connector host's transparent listener takes when its rule names none.
_TLS_PORT = 443


@dataclass
class Attached:
    """One execution's network, ready for the launcher."""

    netns_fd: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    resolv_conf: bytes = b""
    #: Lines for the sandbox's /etc/hosts (connector hosts at 127.0.0.1).
    hosts: bytes = b""
    #: The CA bundle to bind at `CA_BUNDLE_PATH` (brokered connectors only).
    ca_bundle: bytes = b""
    decisions: tuple[NetworkDecision, ...] = ()
    #: The decisions so far, while attached (a session's run reads what it added); None where
    #: they are only known at the end (policy `full`'s refusals come from nftables then).
    so_far: Callable[[], tuple[NetworkDecision, ...]] | None = None

    @property
    def refused_any(self) -> bool:
        return any(not d.allowed for d in self.decisions)


class Network:
    def __init__(
        self,
        *,
        resolver: Resolver = system_resolver,
        slirp4netns: str = "slirp4netns",
        nft: str = "nft",
        ca_dir: Path | None = None,
        upstream_ca_file: Path | None = None,
    ) -> None:
        """`ca_dir` holds the server's CA for brokered connectors (made on first use; without
        it, brokered connectors are refused); `upstream_ca_file` is trusted for connector
        hosts besides the system store (a private CA, or a test's)."""
        self._resolver = resolver
        self._slirp4netns = _which(slirp4netns)
        self._nft = _which(nft)
        self._host_addresses: frozenset[IPAddress] = host_addresses()
        self._ca_dir = ca_dir
        self._upstream_ca_file = upstream_ca_file
        self._ca: CertificateAuthority | None = None
        self._upstream_tls: ssl.SSLContext | None = None
        self._bundle = b""

    @contextlib.asynccontextmanager
    async def attach(self, policy: NetworkPolicy, egress: Egress = Egress()) -> AsyncIterator[Attached]:
        """Set the policy up; on exit record what the sandbox tried and tear everything down."""
        if egress:
            async with self._with_egress(policy, egress) as attached:
                yield attached
            return
        if policy.mode == "none":
            yield Attached()
            return
        if policy.mode == "allowlist":
            async with self._allowlist(policy) as attached:
                yield attached
            return
        async with self._full() as attached:
            yield attached

    @contextlib.asynccontextmanager
    async def _allowlist(self, policy: NetworkPolicy) -> AsyncIterator[Attached]:
        ns = await _setup(_netns.create, listen=(LISTEN,))
        proxy = EgressProxy(policy, resolver=self._resolver, host_addresses=self._host_addresses)
        try:
            await proxy.start(ns.listeners[0])
            attached = Attached(netns_fd=ns.fd, env=dict(_PROXY_ENV), so_far=lambda: proxy.decisions)
            try:
                yield attached
            finally:
                attached.decisions = proxy.decisions
        finally:
            await proxy.close()
            ns.close()

    @contextlib.asynccontextmanager
    async def _full(self) -> AsyncIterator[Attached]:
        self._check_full_tools()
        ns = await _setup(_netns.create)
        try:
            net = await _setup(
                UserNet.start, ns, self._host_addresses, slirp4netns=self._slirp4netns, nft=self._nft
            )
            try:
                attached = Attached(netns_fd=ns.fd, resolv_conf=RESOLV_CONF)
                try:
                    yield attached
                finally:
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        attached.decisions = await asyncio.to_thread(net.refused)
            finally:
                await asyncio.to_thread(net.close)
        finally:
            ns.close()


    @contextlib.asynccontextmanager
    async def _with_egress(self, policy: NetworkPolicy, egress: Egress) -> AsyncIterator[Attached]:
        """Any mode plus connectors: one namespace holding the proxy (when there is one), the
        transparent TLS listeners and the forwards' listeners."""
        ca = await self._authority() if egress.brokered else None
        proxied = policy.mode == "allowlist" or bool(egress.brokered)
        tls_ports: dict[int, list[str]] = {}
        for rule in egress.brokered:
            for host in rule.hosts:
                if not host.pattern.startswith("*."):
                    tls_ports.setdefault(host.port or _TLS_PORT, []).append(host.pattern)
        taken = {LISTEN[1], *(f.port for f in egress.forwards)}
        tls_ports = {port: hosts for port, hosts in tls_ports.items() if port not in taken}
        listen = (
            *((LISTEN,) if proxied else ()),
            *((LISTEN[0], port) for port in tls_ports),
            *((LISTEN[0], f.port) for f in egress.forwards),
        )
        if policy.mode == "full":
            self._check_full_tools()
        ns = await _setup(_netns.create, listen=listen)
        listeners = list(ns.listeners)
        net: UserNet | None = None
        proxy: EgressProxy | None = None
        forwarder = Forwarder()
        try:
            if policy.mode == "full":
                net = await _setup(
                    UserNet.start, ns, self._host_addresses, slirp4netns=self._slirp4netns, nft=self._nft
                )
            attached = Attached(netns_fd=ns.fd, resolv_conf=RESOLV_CONF if net is not None else b"")
            if net is None:
                attached.so_far = lambda: (*(proxy.decisions if proxy is not None else ()), *forwarder.decisions)
            if proxied:
                proxy = EgressProxy(
                    policy if policy.mode == "allowlist" else NetworkPolicy("allowlist"),
                    resolver=self._resolver, host_addresses=self._host_addresses,
                    egress=egress, ca=ca, upstream_tls=self._upstream_tls, permit_any=policy.mode == "full",
                )
                await proxy.start(listeners.pop(0))
                attached.env.update(_PROXY_ENV)
            if ca is not None and proxy is not None:
                for port, hosts in tls_ports.items():
                    contexts = {h: await asyncio.to_thread(ca.server_context, h) for h in hosts}
                    await proxy.start_transparent(listeners.pop(0), contexts)
                names = sorted({h for hosts in tls_ports.values() for h in hosts})
                attached.hosts = "".join(f"127.0.0.1 {h}\n" for h in names).encode()
                attached.ca_bundle = self._bundle
                attached.env.update(_CA_ENV)
            for forward in egress.forwards:
                await forwarder.start(forward, listeners.pop(0))
            try:
                yield attached
            finally:
                decisions = list(proxy.decisions if proxy is not None else ())
                decisions += forwarder.decisions
                if net is not None:
                    with contextlib.suppress(OSError, ValueError, KeyError):
                        decisions += await asyncio.to_thread(net.refused)
                attached.decisions = tuple(decisions)
        finally:
            await forwarder.close()
            if proxy is not None:
                await proxy.close()
            if net is not None:
                await asyncio.to_thread(net.close)
            ns.close()

    async def _authority(self) -> CertificateAuthority:
        """The server's CA (made or loaded once), its bundle for sandboxes, and the context that
        checks connector hosts."""
        if self._ca is None:
            if self._ca_dir is None:
                raise SandboxSetupError("network", "brokered connectors need the server's CA directory")
            try:
                ca = await _setup(CertificateAuthority.load_or_create, self._ca_dir)
            except ValueError as exc:
                raise SandboxSetupError("network", f"the server's CA in {self._ca_dir}: {exc}") from exc
            tls = ssl.create_default_context()
            if self._upstream_ca_file is not None:
                await _setup(tls.load_verify_locations, str(self._upstream_ca_file))
            self._bundle = await asyncio.to_thread(ca.bundle)
            self._upstream_tls, self._ca = tls, ca  # together: a concurrent attach sees both
        return self._ca

    def _check_full_tools(self) -> None:
        for tool in (self._slirp4netns, self._nft):
            if shutil.which(tool) is None:
                raise SandboxSetupError("network", f"network policy 'full' needs {tool}, which is not installed")


def _which(tool: str) -> str:
    """The tool's path, also where root's tools live when the server's PATH lacks sbin."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin") or tool


async def _setup(fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """Run a blocking setup step off the event loop; its OS errors are setup errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise SandboxSetupError("network", str(exc)) from exc
