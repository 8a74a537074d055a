"""API keys: create (the key shown once), list, show, revoke; volume bindings."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ...service.admin import KeySpec, StorageRef, VolumeRef, parse_time
from .deps import AdminDep, OpsDep, OrgQuery
from .schemas import KeyCreate, KeyCreated, KeyOut, VolumeBindingChange
from ._common import answers, links

router = APIRouter()


_KEY_ID = {"key_id": "$response.body#/key/id"}


@router.post("/keys", status_code=201, response_model=KeyCreated, responses=answers(400, 404, 409),
             summary="Create an API key (the key is in this answer only)",
             openapi_extra=links(201, ShowKey=("show_key", _KEY_ID), RevokeKey=("revoke_key", _KEY_ID)))
async def create_key(body: KeyCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> KeyCreated:
    spec = KeySpec(
        name=body.name, sandbox=body.sandbox, region=body.region,
        volumes=tuple(VolumeRef(v.name, v.read_only) for v in body.volumes),
        storage=tuple(StorageRef(s.name, s.read_only, s.prefix) for s in body.storage),
        connectors=tuple(body.connectors), expires_at=parse_time(body.expires_at, "expires_at"),
    )
    created = await ops.create_key(p, spec, org=org)
    return KeyCreated(key=KeyOut(**created.view), secret=created.secret)


@router.get("/keys", response_model=list[KeyOut], responses=answers(404),
            summary="API keys with what each binds (never the keys)")
async def list_keys(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_keys(p, org=org)


@router.get("/keys/{key_id}", response_model=KeyOut, responses=answers(404), summary="One API key")
async def show_key(key_id: str, p: AdminDep, ops: OpsDep) -> dict[str, Any]:
    return await ops.show_key(p, key_id)


@router.delete("/keys/{key_id}", response_model=KeyOut, responses=answers(404),
               summary="Revoke an API key (at once); the answer is the revoked key")
async def revoke_key(key_id: str, p: AdminDep, ops: OpsDep) -> dict[str, Any]:
    return await ops.revoke_key(p, key_id)


@router.put("/keys/{key_id}/volumes/{volume}", response_model=KeyOut, responses=answers(400, 404, 409),
            summary="Bind a key to a volume, or change the binding's mode")
async def bind_volume(
    key_id: str, volume: str, body: VolumeBindingChange, p: AdminDep, ops: OpsDep
) -> dict[str, Any]:
    return await ops.bind_volume(p, key_id, volume, read_only=body.read_only)


@router.delete("/keys/{key_id}/volumes/{volume}", response_model=KeyOut, responses=answers(404),
               summary="Unbind a key from a volume")
async def unbind_volume(key_id: str, volume: str, p: AdminDep, ops: OpsDep) -> dict[str, Any]:
    return await ops.unbind_volume(p, key_id, volume)
