"""Organizations and sandbox configs: what an API key is bound to."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import Conflict, InvalidRequest, NotFound
from ..ids import NAME_PATTERN, NAME_RULE, new_id
from ..runtime import Limits
from ..runtime.network import NetworkPolicy
from ..store import DuplicateError, Image, Org, Sandbox, Store, utcnow
from .plans import PlanService, check_sandbox_config
from .requests import MAX_TIMEOUT_S
from .sessions import SESSION_MODES

DEFAULT_ORG = "default"
DEFAULT_SANDBOX = "default"
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class SandboxConfig:
    """A sandbox config as an operator writes it; units in the names."""

    name: str = DEFAULT_SANDBOX
    cpus: float = Limits.cpus
    memory_mib: int = Limits.memory_mib
    network: str = "none"
    timeout_cap_s: int = 60
    #: Allowlist entries for network "allowlist": `pypi.org`, `*.example.com`, `host:port`.
    allow: tuple[str, ...] = ()
    #: "persistent": a thread's interpreter state is kept between its executions.
    session: str = "stateless"

    def check(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise InvalidRequest(f"sandbox name must be {NAME_RULE}")
        if not 0.05 <= self.cpus <= 64:
            raise InvalidRequest("cpus must be between 0.05 and 64")
        if not 32 <= self.memory_mib <= 1024 * 1024:
            raise InvalidRequest("memory_mib must be between 32 and 1048576")
        try:
            policy = NetworkPolicy.parse(self.network, self.allow)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        if policy.mode == "allowlist" and not policy.allow:
            raise InvalidRequest("network 'allowlist' needs at least one allowed domain (--allow)")
        if not 1 <= self.timeout_cap_s <= MAX_TIMEOUT_S:
            raise InvalidRequest(f"timeout_cap_s must be between 1 and {MAX_TIMEOUT_S}")
        if self.session not in SESSION_MODES:
            raise InvalidRequest(f"session must be one of {', '.join(SESSION_MODES)}")


class TenancyService:
    def __init__(
        self, store: Store, changed: Callable[[], None] = lambda: None, plans: PlanService | None = None
    ) -> None:
        """`changed` is told when a sandbox config changes (cached principals hold it); `plans`:
        configs over the organization's plan are refused (None: no plan limits)."""
        self._store = store
        self._changed = changed
        self._plans = plans

    async def ensure_defaults(self) -> Org:
        """First start: the default organization with its default sandbox (1 CPU, 1 GiB, 60 s)."""
        return await self.ensure_org(DEFAULT_ORG)

    async def ensure_org(self, name: str) -> Org:
        org = await self._store.orgs.by_name(name)
        if org is None:
            if not _NAME.fullmatch(name):
                raise InvalidRequest(f"organization name must be {NAME_RULE}")
            try:
                org = await self._store.orgs.add(new_id("org"), name)
            except DuplicateError:
                org = await self._store.orgs.by_name(name)
                assert org is not None
        if await self._store.sandboxes.by_name(org.id, DEFAULT_SANDBOX) is None:
            try:
                await self.create_sandbox(org, SandboxConfig())
            except Conflict:
                pass
        return org

    async def org(self, name: str) -> Org:
        org = await self._store.orgs.by_name(name)
        if org is None:
            raise NotFound(f"no organization {name!r}")
        return org

    async def list_orgs(self) -> list[Org]:
        return await self._store.orgs.list()

    async def create_sandbox(self, org: Org, config: SandboxConfig, image: Image | None = None) -> Sandbox:
        """`image` (service/images.py `find`): None runs on `host`."""
        config.check()
        await self._within_plan(org, config.name, config.cpus, config.memory_mib, config.timeout_cap_s)
        sandbox = Sandbox(
            id=new_id("sbx"),
            org_id=org.id,
            name=config.name,
            cpus=config.cpus,
            memory_mib=config.memory_mib,
            network=config.network,
            timeout_cap_s=config.timeout_cap_s,
            created_at=utcnow(),
            network_allow=[str(rule) for rule in NetworkPolicy.parse(config.network, config.allow).allow] or None,
            image_id=image.id if image is not None else None,
            session=config.session,
        )
        try:
            return await self._store.sandboxes.add(sandbox)
        except DuplicateError:
            raise Conflict(f"sandbox {config.name!r} already exists") from None

    async def sandbox(self, org: Org, name: str) -> Sandbox:
        sandbox = await self._store.sandboxes.by_name(org.id, name)
        if sandbox is None:
            raise NotFound(f"no sandbox {name!r} in organization {org.name!r}")
        return sandbox

    async def set_image(self, org: Org, name: str, image: Image | None) -> Sandbox:
        """Run the config's next executions on `image` (None: `host`); threads keep their homes."""
        sandbox = await self.sandbox(org, name)
        await self._within_plan(org, name, sandbox.cpus, sandbox.memory_mib, sandbox.timeout_cap_s)
        if not await self._store.sandboxes.set_image(sandbox.id, image.id if image is not None else None):
            raise NotFound(f"image {image.name if image else ''!r} was deleted meanwhile")
        self._changed()
        return await self.sandbox(org, name)

    async def update_sandbox(self, org: Org, config: SandboxConfig, image: Image | None) -> Sandbox:
        """Replace the limits of the config `config.name` and its image (None: `host`); its keys'
        next executions use them (threads keep their homes)."""
        config.check()
        sandbox = await self.sandbox(org, config.name)
        await self._within_plan(org, config.name, config.cpus, config.memory_mib, config.timeout_cap_s)
        allow = [str(rule) for rule in NetworkPolicy.parse(config.network, config.allow).allow] or None
        changed = await self._store.sandboxes.update(
            sandbox.id, cpus=config.cpus, memory_mib=config.memory_mib, network=config.network,
            network_allow=allow, timeout_cap_s=config.timeout_cap_s, session=config.session,
            image_id=image.id if image is not None else None,
        )
        if not changed:
            raise NotFound(f"image {image.name if image else ''!r} was deleted meanwhile")
        self._changed()
        return await self.sandbox(org, config.name)

    async def _within_plan(self, org: Org, name: str, cpus: float, memory_mib: int, timeout_cap_s: int) -> None:
        """403 naming the plan's limit when a config asks for more than the plan allows."""
        if self._plans is not None:
            plan = await self._plans.plan_of(org)
            check_sandbox_config(plan, cpus=cpus, memory_mib=memory_mib, timeout_cap_s=timeout_cap_s, name=name)

    async def list_sandboxes(self, org: Org) -> list[Sandbox]:
        return await self._store.sandboxes.list(org.id)

    async def delete_sandbox(self, org: Org, name: str) -> None:
        sandbox = await self.sandbox(org, name)
        if await self._store.sandboxes.in_use(sandbox.id):
            raise Conflict(f"sandbox {name!r} is bound to active API keys; revoke them first")
        await self._store.sandboxes.delete(sandbox.id)
