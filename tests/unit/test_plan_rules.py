"""The plan rules (service/plans.py) as plain functions: the exact answers and upgrade hints,
and the admission limiter using the plan's answer over its cap."""

from __future__ import annotations

import pytest

from sandboxd.errors import Forbidden, RateLimited
from sandboxd.service import plans
from sandboxd.service.admission import ConcurrencyLimiter
from sandboxd.service.plans import PRESETS, OrgPlan, PlanLimits

FREE = OrgPlan("free", PRESETS["free"], upgrade=("pro", PRESETS["pro"]))
PRO = OrgPlan("pro", PRESETS["pro"], upgrade=("enterprise", PRESETS["enterprise"]))
ENTERPRISE = OrgPlan("enterprise", PRESETS["enterprise"])
CUSTOM = OrgPlan("gold", PlanLimits(concurrent=2, cpus=2, streaming=False), custom=True, org_id="org_1")


def test_concurrency_answer_names_the_next_plan_and_its_figure() -> None:
    refused = plans.concurrency_refused(FREE, 5, 5)
    assert refused.message == "concurrent execution limit reached (5/5). Upgrade to Pro for 100 concurrent executions."
    assert refused.retry_after == 1
    assert plans.concurrency_refused(PRO, 100, 100).message == (
        "concurrent execution limit reached (100/100). Upgrade to Enterprise for unlimited concurrent executions."
    )
    assert plans.concurrency_refused(CUSTOM, 2, 2).message == "concurrent execution limit reached (2/2)."


def test_delivery_streaming_and_webhook_refused_only_without_streaming() -> None:
    for mode, words in (("streaming", "streaming"), ("webhook", "webhook (async)"), ("mcp-progress", "streaming (MCP progress)")):
        with pytest.raises(Forbidden) as info:
            plans.check_delivery(FREE, mode)
        assert info.value.message == f"{words} delivery is not available on the Free plan; the Pro and Enterprise plans allow it"
    plans.check_delivery(FREE, "inline")
    plans.check_delivery(FREE, "mcp")
    plans.check_delivery(PRO, "streaming")
    with pytest.raises(Forbidden, match="not available on the custom plan 'gold'"):
        plans.check_delivery(CUSTOM, "webhook")


def test_timeout_cap_is_the_lower_of_config_and_plan() -> None:
    assert plans.timeout_cap(FREE, 600) == (60, "the Free plan's limit")
    assert plans.timeout_cap(FREE, 30) == (30, None)
    assert plans.timeout_cap(ENTERPRISE, 600) == (600, None)


def test_sandbox_config_limits() -> None:
    with pytest.raises(Forbidden) as info:
        plans.check_sandbox_config(FREE, cpus=1.5, memory_mib=512, name="x")
    assert info.value.message == (
        "sandbox config 'x' asks for 1.5 CPUs; the Free plan allows 1 per sandbox. Upgrade to Pro for 4 CPUs per sandbox."
    )
    with pytest.raises(Forbidden, match="allows 4096 MiB per sandbox. Upgrade to Enterprise for unlimited MiB"):
        plans.check_sandbox_config(PRO, cpus=1, memory_mib=8192)
    plans.check_sandbox_config(FREE, cpus=1, memory_mib=1024, timeout_cap_s=60)
    plans.check_sandbox_config(FREE, cpus=1, memory_mib=1024, timeout_cap_s=None)  # admission: lowered, not refused
    plans.check_sandbox_config(ENTERPRISE, cpus=64, memory_mib=1024 * 1024, timeout_cap_s=3600)


def test_key_and_image_counts() -> None:
    plans.check_key_count(FREE, 9)
    with pytest.raises(Forbidden, match=r"API key limit reached \(10/10\)"):
        plans.check_key_count(FREE, 10)
    plans.check_key_count(PRO, 10_000)
    plans.check_image_count(FREE, 0)
    with pytest.raises(Forbidden) as info:
        plans.check_image_count(FREE, 1)
    assert info.value.message == (
        "custom image limit reached (1/1): the Free plan allows 1 custom images; delete one first. "
        "Upgrade to Pro for unlimited custom images."
    )


def test_plan_limits_must_be_positive() -> None:
    with pytest.raises(Exception, match="must be positive"):
        PlanLimits(concurrent=0).check()


async def test_limiter_answers_with_the_plans_refusal_over_the_plans_cap() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=3)
    releases = [await limiter.acquire("org", 2, lambda n, cap: plans.concurrency_refused(CUSTOM, n, cap)) for _ in range(2)]
    with pytest.raises(RateLimited) as info:
        await limiter.acquire("org", 2, lambda n, cap: plans.concurrency_refused(CUSTOM, n, cap))
    assert info.value.message == "concurrent execution limit reached (2/2)."
    for release in releases:
        release()
    # unlimited plan: the server's own cap per organization, with its own answer
    held = [await limiter.acquire("other", None) for _ in range(3)]
    with pytest.raises(RateLimited, match="already has 3 executions running or waiting"):
        await limiter.acquire("other", None)
    for release in held:
        release()
