"""Run one execution in a fresh bubblewrap sandbox and account for every process it made.

The launch order on one screen is `BwrapRunner.run`: network, sandbox (uid, cgroup, outputs
tmpfs, fds, spawn: `sandbox.py`), supervise, collect /data/outputs, dispose. Pre-spawned sandboxes are another runner's business
(`pooled.py` wraps this one); this one always starts cold.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from ..errors import SandboxSetupError
from . import session
from .cgroups import CgroupDriver
from .keeper import Keeper
from .languages import available_languages
from .lease import Lease
from .network import Attached, Network
from .outputs import Outputs
from .sandbox import Sandboxes
from .spec import ExecResult, ExecStatus, Language, OutputSink, SandboxSpec
from .users import UidPool


class BwrapRunner:
    """The default runner: bubblewrap + seccomp + cgroups + rlimits, one sandbox per execution."""

    def __init__(
        self,
        *,
        cgroups: CgroupDriver,
        uids: UidPool,
        seccomp_bpf: bytes,
        bwrap_path: str = "/usr/bin/bwrap",
        network: Network | None = None,
        lease: Lease | None = None,
        keeper: Keeper | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        self._network = network or Network()
        #: What this process owns on the host (cgroups, uids), and who sweeps it if we die.
        self.lease = lease
        self._keeper = keeper
        self.sandboxes = Sandboxes(
            cgroups=cgroups, uids=uids, seccomp_bpf=seccomp_bpf, bwrap_path=bwrap_path, outputs=outputs
        )
        self.languages: frozenset[Language] = available_languages()

    async def close(self) -> None:
        """The server is stopping: remove this instance's cgroups (the keeper ends any sandbox
        still running), give the lease up."""
        self.sandboxes.close()
        if self.sandboxes.outputs is not None:
            self.sandboxes.outputs.close()
        if self._keeper is not None:
            self._keeper.stop()
        if self.lease is not None:
            self.lease.close()

    async def run(
        self,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
        refill_later: bool = False,
    ) -> ExecResult:
        """Run `spec` in a sandbox started for it (`refill_later` is a pooled runner's business)."""
        self.check_language(spec)
        async with self._network.attach(spec.network, spec.egress) as net:
            box = await self.sandboxes.launch(spec, net)
            try:
                result = await self.sandboxes.supervise(box, spec, sink, cancel, started=box.spawned_at)
                result = await self.sandboxes.collect(box, spec, result)
            finally:
                await self.sandboxes.dispose(box)
        return _with_network(result, net)

    async def start_session(self, spec: SandboxSpec) -> session.SessionSandbox:
        """A persistent session's sandbox: started cold, its driver up (runtime/session.py)."""
        self.check_language(spec)
        return await session.start(self.sandboxes, self._network, spec, timeout_s=spec.limits.timeout_s)

    def refill(self, spec: SandboxSpec) -> None:
        """Nothing to refill: every run starts its own sandbox."""

    def check_language(self, spec: SandboxSpec) -> None:
        found = self.languages if spec.image.root is None else spec.image.languages
        if spec.language not in found:
            raise SandboxSetupError("interpreter", f"language {spec.language!r} is not in image {spec.image.name!r}")


def _with_network(result: ExecResult, net: Attached) -> ExecResult:
    """Attach the policy's decisions; a failure after a refused connection is `blocked`."""
    if not net.decisions:
        return result
    if result.status is ExecStatus.FAILED and net.refused_any:
        return replace(result, status=ExecStatus.BLOCKED, error="blocked", network=net.decisions)
    return replace(result, network=net.decisions)
