"""Plans: what an organization may use, and the answers when it asks for more.

The seed's Free / Pro / Enterprise table (reference/seed-api-overview.md "Plan limits") is
`PRESETS`, written once here. An installation's operator can give an organization a custom
plan of its own (`sandboxd plans create NAME --org ORG`); `create_custom(None, ...)` changes a
preset's figures for the whole installation (a row with no organization; no CLI for it yet). An organization with no plan assigned is on
the installation's default plan (SANDBOXD_DEFAULT_PLAN, `enterprise`: unlimited).

Each rule is one function of plain values, called from the one place its action happens:

- `concurrency_refused` — the admission limiter (service/admission.py), 429 with Retry-After;
- `check_delivery` — ExecutionService.submit, for REST (streaming, webhook) and MCP (progress);
- `timeout_cap` — ExecutionService.limits_for: a longer timeout is lowered, as over a config's cap;
- `check_sandbox_config` — creating or updating a sandbox config (service/tenancy.py), and
  admission (a config left over the plan by a downgrade: CPU and memory);
- `check_key_count` — KeyService.create; `check_image_count` — ImageService (import/pull/build).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable
from dataclasses import dataclass, fields

from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, RateLimited
from ..ids import NAME_PATTERN, NAME_RULE, new_id
from ..store import Org, Plan, PlanExists, Store, utcnow

_NAME = re.compile(NAME_PATTERN)
#: How long a refused request should wait before it tries again (a slot frees within seconds).
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class PlanLimits:
    """One plan's limits; None: unlimited. Units in the names."""

    cpus: float | None = None
    memory_mib: int | None = None
    concurrent: int | None = None
    timeout_s: int | None = None
    api_keys: int | None = None
    audit_retention_days: int | None = None
    images: int | None = None
    #: Streaming (NDJSON, MCP progress) and async (webhook) delivery allowed.
    streaming: bool = True

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "streaming" and value is not None and value <= 0:
                raise InvalidRequest(f"plan limit {f.name} must be positive (or unlimited)")


FREE, PRO, ENTERPRISE = "free", "pro", "enterprise"
#: The seed's table, in upgrade order.
PRESETS: dict[str, PlanLimits] = {
    FREE: PlanLimits(
        cpus=1, memory_mib=1024, concurrent=5, timeout_s=60, api_keys=10, audit_retention_days=1, images=1,
        streaming=False,
    ),
    PRO: PlanLimits(cpus=4, memory_mib=4096, concurrent=100, timeout_s=3600, audit_retention_days=30),
    ENTERPRISE: PlanLimits(),
}
_TITLES = {FREE: "Free", PRO: "Pro", ENTERPRISE: "Enterprise"}


@dataclass(frozen=True)
class OrgPlan:
    """The plan an organization is on, as its limits are enforced."""

    name: str
    limits: PlanLimits
    #: A custom plan of one organization (no upgrade hints: its terms are the operator's).
    custom: bool = False
    #: The next preset up and its limits, for upgrade hints; None at the top or on a custom plan.
    upgrade: tuple[str, PlanLimits] | None = None
    #: The organization of a custom plan (None for presets).
    org_id: str | None = None

    @property
    def title(self) -> str:
        """How a message names it: "the Free plan", "the custom plan 'acme-gold'"."""
        if self.custom:
            return f"the custom plan {self.name!r}"
        return f"the {_TITLES.get(self.name, self.name)} plan"


#: What a principal is on when nothing says otherwise (a test's KeyService without plans).
UNLIMITED = OrgPlan(ENTERPRISE, PRESETS[ENTERPRISE])


# --- the rules -------------------------------------------------------------------------------


def _hint(plan: OrgPlan, better: Callable[[PlanLimits], str | None]) -> str:
    """" Upgrade to Pro for 100 concurrent executions." when the next plan up does better."""
    if plan.upgrade is None:
        return ""
    name, limits = plan.upgrade
    offer = better(limits)
    return f" Upgrade to {_TITLES.get(name, name)} for {offer}." if offer else ""


def _figure(value: float | None, unit: str) -> str:
    return f"unlimited {unit}" if value is None else f"{value:g} {unit}"


def concurrency_refused(plan: OrgPlan, count: int, cap: int) -> RateLimited:
    """429: the organization has `count` of its plan's `cap` executions running or waiting."""
    mine = plan.limits.concurrent

    def better(up: PlanLimits) -> str | None:
        if up.concurrent is not None and mine is not None and up.concurrent <= mine:
            return None
        return _figure(up.concurrent, "concurrent executions")

    return RateLimited(f"concurrent execution limit reached ({count}/{cap})." + _hint(plan, better), RETRY_AFTER_S)


#: Delivery modes that stream or answer later (api/routes/execute.py, mcp/handlers.py).
STREAMING_MODES = {"streaming": "streaming", "webhook": "webhook (async)", "mcp-progress": "streaming (MCP progress)"}


def check_delivery(plan: OrgPlan, mode: str) -> None:
    """403 for streaming or webhook delivery on a plan without it, naming the plans with it."""
    if plan.limits.streaming or mode not in STREAMING_MODES:
        return
    allowing = [_TITLES[name] for name, limits in PRESETS.items() if limits.streaming]
    raise Forbidden(
        f"{STREAMING_MODES[mode]} delivery is not available on {plan.title}; "
        f"the {' and '.join(allowing)} plans allow it"
    )


def timeout_cap(plan: OrgPlan, config_cap_s: int) -> tuple[int, str | None]:
    """The longest timeout a run may have, and who set it when it is the plan (for the note
    that says a longer request was lowered: service/notes.py)."""
    limit = plan.limits.timeout_s
    if limit is not None and limit < config_cap_s:
        return limit, f"{plan.title}'s limit"
    return config_cap_s, None


def check_sandbox_config(
    plan: OrgPlan, *, cpus: float, memory_mib: int, timeout_cap_s: int | None = None, name: str = ""
) -> None:
    """403 when a sandbox config asks for more CPU, memory or timeout than the plan allows
    (`timeout_cap_s` None: not checked, as at admission, where a longer timeout is lowered)."""
    limits = plan.limits
    config = f"sandbox config {name!r}" if name else "the sandbox config"
    if limits.cpus is not None and cpus > limits.cpus:
        raise Forbidden(
            f"{config} asks for {cpus:g} CPUs; {plan.title} allows {limits.cpus:g} per sandbox."
            + _hint(plan, lambda up: _figure(up.cpus, "CPUs per sandbox"))
        )
    if limits.memory_mib is not None and memory_mib > limits.memory_mib:
        raise Forbidden(
            f"{config} asks for {memory_mib} MiB of memory; {plan.title} allows {limits.memory_mib} MiB "
            "per sandbox." + _hint(plan, lambda up: _figure(up.memory_mib, "MiB per sandbox"))
        )
    if timeout_cap_s is not None and limits.timeout_s is not None and timeout_cap_s > limits.timeout_s:
        raise Forbidden(
            f"{config} asks for a timeout cap of {timeout_cap_s} s; {plan.title} allows {limits.timeout_s} s."
            + _hint(plan, lambda up: _figure(up.timeout_s, "s timeouts"))
        )


def check_key_count(plan: OrgPlan, active: int) -> None:
    """403 when the organization already has as many active API keys as its plan allows."""
    cap = plan.limits.api_keys
    if cap is not None and active >= cap:
        raise Forbidden(
            f"API key limit reached ({active}/{cap}): {plan.title} allows {cap} API keys; revoke one first."
            + _hint(plan, lambda up: _figure(up.api_keys, "API keys"))
        )


def check_image_count(plan: OrgPlan, count: int) -> None:
    """403 when the organization already has as many custom images as its plan allows."""
    cap = plan.limits.images
    if cap is not None and count >= cap:
        raise Forbidden(
            f"custom image limit reached ({count}/{cap}): {plan.title} allows {cap} custom images; "
            "delete one first." + _hint(plan, lambda up: _figure(up.images, "custom images"))
        )


# --- the service -----------------------------------------------------------------------------


def _limits(row: Plan) -> PlanLimits:
    return PlanLimits(**{f.name: getattr(row, f.name) for f in fields(PlanLimits)})


class PlanService:
    def __init__(self, store: Store, default: str = ENTERPRISE, changed: Callable[[], None] = lambda: None) -> None:
        """`default`: the plan of an organization with none assigned; `changed` is told when an
        organization's plan changes (cached principals hold it: service/keycache.py)."""
        if default not in PRESETS:
            raise ValueError(f"the default plan must be one of {', '.join(PRESETS)}")
        self._store = store
        self._default = default
        self.changed = changed

    @property
    def default(self) -> str:
        return self._default

    async def plan_of(self, org: Org) -> OrgPlan:
        """The plan `org` is on (its assigned one, else the installation's default)."""
        found = await self._resolve(org.plan or self._default, org.id)
        if found is None:  # its custom plan is gone (it cannot be: plans are not deleted)
            raise NotFound(f"organization {org.name!r} is on plan {org.plan!r}, which does not exist")
        return found

    async def assign(self, org: Org, name: str) -> OrgPlan:
        """Put `org` on plan `name` (a preset, an installation plan or one of its custom plans);
        its next requests are held to it. Configs over it are refused at admission (403)."""
        plan = await self._resolve(name, org.id)
        if plan is None:
            raise NotFound(f"no plan {name!r} for organization {org.name!r} (`sandboxd plans list`)")
        await self._store.orgs.set_plan(org.id, name)
        self.changed()
        return plan

    async def create_custom(self, org: Org | None, name: str, limits: PlanLimits) -> OrgPlan:
        """A custom plan of `org` (None: the installation's own figures for the preset `name`,
        or a plan every organization can be assigned)."""
        if not _NAME.fullmatch(name):
            raise InvalidRequest(f"plan name must be {NAME_RULE}")
        if org is not None and name in PRESETS:
            raise Conflict(f"{name!r} is a preset's name; choose another for a custom plan")
        limits.check()
        row = Plan(
            id=new_id("pln"), name=name, org_id=org.id if org else None, created_at=utcnow(),
            **{f.name: getattr(limits, f.name) for f in fields(PlanLimits)},
        )
        try:
            await self._store.plans.add(row)
        except PlanExists:
            where = f"organization {org.name!r}" if org else "this installation"
            raise Conflict(f"{where} already has a plan {name!r}") from None
        self.changed()
        found = await self._resolve(name, row.org_id)
        assert found is not None
        return found

    async def list(self, org: Org | None = None) -> list[OrgPlan]:
        """The presets (with this installation's figures) and the custom plans (of `org`; None:
        of every organization)."""
        rows = await self._store.plans.all(org.id if org else None)
        shared = {r.name: r for r in rows if r.org_id is None}
        out = [self._preset(name, shared) for name in PRESETS]
        out += [self._of(r, shared) for r in rows if r.org_id is None and r.name not in PRESETS]
        out += [self._of(r, shared) for r in rows if r.org_id is not None]
        return out

    async def show(self, name: str, org: Org | None = None) -> OrgPlan:
        plan = await self._resolve(name, org.id if org else None)
        if plan is None:
            raise NotFound(f"no plan {name!r}" + (f" for organization {org.name!r}" if org else ""))
        return plan

    async def retention_days(self, org: Org) -> int | None:
        """How long the organization's audit log is kept (days); None: for ever."""
        return (await self.plan_of(org)).limits.audit_retention_days

    async def retention_days_of(self) -> Callable[[Org], int | None]:
        """`retention_days` for many organizations at once, from one read of the plans (the
        audit log's sweeper: `AuditLog.sweep(await plans.retention_days_of())`). An organization
        whose plan cannot be found keeps its rows."""
        rows = await self._store.plans.all()

        def of(org: Org) -> int | None:
            plan = self._pick(org.plan or self._default, org.id, rows)
            return plan.limits.audit_retention_days if plan is not None else None

        return of

    # --- private ----------------------------------------------------------------------------

    async def _resolve(self, name: str, org_id: str | None) -> OrgPlan | None:
        return self._pick(name, org_id, await self._store.plans.all(org_id))

    def _pick(self, name: str, org_id: str | None, rows: builtins.list[Plan]) -> OrgPlan | None:
        """The organization's own plan of that name, else the installation's, else the preset."""
        shared = {r.name: r for r in rows if r.org_id is None}
        own = next((r for r in rows if r.org_id is not None and r.org_id == org_id and r.name == name), None)
        if own is not None:
            return self._of(own, shared)
        if name in PRESETS:
            return self._preset(name, shared)
        if name in shared:
            return self._of(shared[name], shared)
        return None

    def _preset(self, name: str, shared: dict[str, Plan]) -> OrgPlan:
        ladder = list(PRESETS)
        up = ladder[ladder.index(name) + 1] if ladder.index(name) + 1 < len(ladder) else None
        limits = _limits(shared[name]) if name in shared else PRESETS[name]
        upgrade = (up, _limits(shared[up]) if up in shared else PRESETS[up]) if up else None
        return OrgPlan(name, limits, upgrade=upgrade)

    def _of(self, row: Plan, shared: dict[str, Plan]) -> OrgPlan:
        return OrgPlan(row.name, _limits(row), custom=True, org_id=row.org_id)

