"""The runner interface: what the service layer asks of a runtime.

`BwrapRunner` (cold starts), the pooled runner that wraps it, and the fake runner of the
service's unit tests all implement it; the service knows nothing else of the runtime.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .session import SessionSandbox
from .spec import ExecResult, Language, OutputSink, SandboxSpec


class Runner(Protocol):
    languages: frozenset[Language]

    async def run(
        self,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
        refill_later: bool = False,
    ) -> ExecResult: ...

    async def start_session(self, spec: SandboxSpec) -> SessionSandbox:
        """A persistent session's sandbox for `spec` (runtime/session.py), its interpreter up."""

    def refill(self, spec: SandboxSpec) -> None:
        """A run with `refill_later` is over: start what replaces its sandbox (if pooled)."""

    async def close(self) -> None:
        """Stop every sandbox this runner started; the runner is not used again."""
