"""Network policy for sandboxes: `none`, `allowlist` (egress proxy) or `full` (slirp4netns).

`Network.attach(policy)` makes what one execution needs and returns an `Attached`: the
namespace for the launcher to join (None for `none`: bubblewrap makes an empty one), the
environment and resolv.conf to put in the sandbox, and, after the run, the decisions for the
audit record. The host side (proxy, slirp4netns, rules) never runs inside the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from ...errors import SandboxSetupError

from . import netns as _netns
from .addresses import IPAddress, egress_refusal, embedded_ipv4, host_addresses
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
    "Attached",
    "Brokered",
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


@dataclass
class Attached:
    """One execution's network, ready for the launcher."""

    netns_fd: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    resolv_conf: bytes = b""
    decisions: tuple[NetworkDecision, ...] = ()

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
    ) -> None:
        self._resolver = resolver
        self._slirp4netns = _which(slirp4netns)
        self._nft = _which(nft)
        self._host_addresses: frozenset[IPAddress] = host_addresses()

    @contextlib.asynccontextmanager
    async def attach(self, policy: NetworkPolicy) -> AsyncIterator[Attached]:
        """Set the policy up; on exit record what the sandbox tried and tear everything down."""
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
            attached = Attached(netns_fd=ns.fd, env=dict(_PROXY_ENV))
            try:
                yield attached
            finally:
                attached.decisions = proxy.decisions
        finally:
            await proxy.close()
            ns.close()

    @contextlib.asynccontextmanager
    async def _full(self) -> AsyncIterator[Attached]:
        for tool in (self._slirp4netns, self._nft):
            if shutil.which(tool) is None:
                raise SandboxSetupError("network", f"network policy 'full' needs {tool}, which is not installed")
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


def _which(tool: str) -> str:
    """The tool's path, also where root's tools live when the server's PATH lacks sbin."""
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin") or tool


async def _setup(fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
    """Run a blocking setup step off the event loop; its OS errors are setup errors."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise SandboxSetupError("network", str(exc)) from exc
