"""Who am I, organizations and members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from ...service.admin import parse_time
from .deps import AdminDep, OpsDep, OrgQuery
from .schemas import MemberCreate, MemberOut, MemberUpdate, OrgCreate, OrgOut, TokenCreate, TokenCreated, TokenOut, WhoAmI
from ._common import answers, links

router = APIRouter()


@router.get("/whoami", response_model=WhoAmI, responses=answers(), summary="The caller: organization, role, permissions")
async def whoami(p: AdminDep) -> WhoAmI:
    return WhoAmI(
        org=p.org.name, role=p.role, permissions=sorted(p.permissions), member_id=p.actor.id, name=p.actor.name,
        via=p.via,
    )


@router.get("/orgs", response_model=list[OrgOut], responses=answers(), summary="Organizations (operators: all)")
async def list_orgs(p: AdminDep, ops: OpsDep) -> list[dict[str, Any]]:
    return await ops.list_orgs(p)


@router.post("/orgs", status_code=201, response_model=OrgOut, responses=answers(400, 409),
             summary="Create an organization (operators)")
async def create_org(body: OrgCreate, p: AdminDep, ops: OpsDep) -> dict[str, Any]:
    return await ops.create_org(p, body.name)


@router.get("/members", response_model=list[MemberOut], responses=answers(404), summary="Members")
async def list_members(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_members(p, org=org)


_EMAIL = {"email": "$response.body#/email"}


@router.post("/members", status_code=201, response_model=MemberOut, responses=answers(400, 404, 409),
             summary="Add a member",
             openapi_extra=links(201, IssueToken=("issue_token", _EMAIL), SetMemberRole=("set_member_role", _EMAIL),
                                 RemoveMember=("remove_member", _EMAIL)))
async def add_member(body: MemberCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.add_member(p, body.email, body.role, org=org)


@router.patch("/members/{email}", response_model=MemberOut, responses=answers(400, 404, 409),
              summary="Change a member's role")
async def set_member_role(
    email: str, body: MemberUpdate, p: AdminDep, ops: OpsDep, org: OrgQuery = None
) -> dict[str, Any]:
    return await ops.set_member_role(p, email, body.role, org=org)


@router.delete("/members/{email}", status_code=204, response_class=Response, responses=answers(404, 409),
               summary="Remove a member (their tokens and sessions end)")
async def remove_member(email: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.remove_member(p, email, org=org)


@router.get("/members/{email}/tokens", response_model=list[TokenOut], responses=answers(404),
            summary="A member's admin tokens (never the tokens)")
async def list_tokens(email: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_member_tokens(p, email, org=org)


@router.post("/members/{email}/tokens", status_code=201, response_model=TokenCreated, responses=answers(400, 404),
             summary="Issue an admin token for a member (shown once)")
async def issue_token(
    email: str, body: TokenCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None
) -> TokenCreated:
    expires_at = parse_time(body.expires_at, "expires_at")
    issued = await ops.issue_member_token(p, email, name=body.name, expires_at=expires_at, org=org)
    return TokenCreated(token=TokenOut(**issued.view), secret=issued.secret)


@router.delete("/members/{email}/tokens/{token_id}", response_model=TokenOut, responses=answers(404),
               summary="Revoke an admin token")
async def revoke_token(email: str, token_id: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.revoke_member_token(p, email, token_id, org=org)
