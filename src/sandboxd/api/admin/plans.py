"""Plans (what an organization may use) and usage (what it used); operators assign and create."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ...service.plans import PlanLimits
from .deps import AdminDep, OpsDep, OrgQuery
from .schemas import OrgPlanOut, PlanAssign, PlanCreate, PlanOut, UsageOut
from ._common import answers

router = APIRouter()


@router.get("/plan", response_model=OrgPlanOut, responses=answers(404),
            summary="The organization's plan and this month's usage")
async def show_plan(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.show_plan(p, org=org)


@router.put("/plan", response_model=PlanOut, responses=answers(400, 404),
            summary="Put the organization on a plan (operators); its next requests are held to it")
async def assign_plan(body: PlanAssign, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.assign_plan(p, body.name, org=org)


@router.get("/plans", response_model=list[PlanOut], responses=answers(404),
            summary="The presets and the organization's custom plans")
async def list_plans(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_plans(p, org=org)


@router.post("/plans", status_code=201, response_model=PlanOut, responses=answers(400, 404, 409),
             summary="Create a custom plan for the organization (operators)")
async def create_plan(body: PlanCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.create_plan(p, body.name, PlanLimits(**body.limits.model_dump()), org=org)


@router.get("/usage", response_model=UsageOut, responses=answers(400, 404),
            summary="What the organization used in a month: executions, CPU-seconds, GiB-seconds")
async def usage(
    p: AdminDep, ops: OpsDep, org: OrgQuery = None,
    month: Annotated[str | None, Query(description="YYYY-MM (UTC; default: this month).",
                                       json_schema_extra={"pattern": r"^\d{4}-(0[1-9]|1[0-2])$"})] = None,
) -> dict[str, Any]:
    return await ops.usage(p, month=month, org=org)
