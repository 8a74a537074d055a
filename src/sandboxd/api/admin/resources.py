"""What keys bind: sandbox configs, images, volumes, storage connections, connectors; and the
organization's webhook signing secret. Secrets are write-only: given in a request, never answered
(the webhook secret once, when made)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response

from ...connectors.kinds import Options
from ...service.admin import SandboxChanges
from ...service.storage import ConnectionSpec
from ...service.tenancy import SandboxConfig
from .deps import AdminDep, OpsDep, OrgQuery
from .schemas import (
    ConnectorCreate,
    ConnectorDetail,
    ConnectorOut,
    ConnectorUpdate,
    ImageDetail,
    ImageOut,
    SandboxCreate,
    SandboxOut,
    SandboxUpdate,
    StorageCreate,
    StorageDetail,
    StorageOut,
    ThreadOut,
    VolumeCreate,
    VolumeOut,
    WebhookSecretOut,
    WebhookSecretRequest,
)
from ._common import answers, links

router = APIRouter()
#: What a creation's answer gives the operations on the thing it made (OpenAPI links).
_NAME = {"name": "$response.body#/name"}

# --- sandbox configs -------------------------------------------------------------------------


@router.get("/sandboxes", response_model=list[SandboxOut], responses=answers(404), summary="Sandbox configs")
async def list_sandboxes(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_sandboxes(p, org=org)


@router.post("/sandboxes", status_code=201, response_model=SandboxOut, responses=answers(400, 404, 409),
             summary="Create a sandbox config",
             openapi_extra=links(201, ShowSandbox=("show_sandbox", _NAME), UpdateSandbox=("update_sandbox", _NAME),
                                 DeleteSandbox=("delete_sandbox", _NAME)))
async def create_sandbox(body: SandboxCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    config = SandboxConfig(
        name=body.name, cpus=body.cpus, memory_mib=body.memory_mib, network=body.network,
        timeout_cap_s=body.timeout_cap_s, allow=tuple(body.allow), session=body.session,
    )
    return await ops.create_sandbox(p, config, image=body.image, org=org)


@router.get("/sandboxes/{name}", response_model=SandboxOut, responses=answers(404), summary="One sandbox config")
async def show_sandbox(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.show_sandbox(p, name, org=org)


@router.patch("/sandboxes/{name}", response_model=SandboxOut, responses=answers(400, 404),
              summary="Change a sandbox config (what is given); its keys' next executions use it")
async def update_sandbox(
    name: str, body: SandboxUpdate, p: AdminDep, ops: OpsDep, org: OrgQuery = None
) -> dict[str, Any]:
    given = body.model_dump(exclude_unset=True)
    if "allow" in given:
        given["allow"] = tuple(given["allow"])
    return await ops.update_sandbox(p, name, SandboxChanges(**given), org=org)


@router.delete("/sandboxes/{name}", status_code=204, response_class=Response, responses=answers(404, 409),
               summary="Delete a sandbox config no active key is bound to")
async def delete_sandbox(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.delete_sandbox(p, name, org=org)


# --- images ----------------------------------------------------------------------------------


@router.get("/images", response_model=list[ImageOut], responses=answers(404, 503),
            summary="Images: `host`, the organization's and the built-in ones")
async def list_images(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_images(p, org=org)


@router.get("/images/{name}", response_model=ImageDetail, responses=answers(400, 404, 503), summary="One image")
async def show_image(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.show_image(p, name, org=org)


@router.delete("/images/{name}", status_code=204, response_class=Response, responses=answers(404, 409, 503),
               summary="Delete an image of the organization that no sandbox config uses")
async def delete_image(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.delete_image(p, name, org=org)


# --- volumes ---------------------------------------------------------------------------------


@router.get("/volumes", response_model=list[VolumeOut], responses=answers(404), summary="Volumes")
async def list_volumes(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_volumes(p, org=org)


@router.post("/volumes", status_code=201, response_model=VolumeOut, responses=answers(400, 404, 409, 503),
             summary="Create a volume (shown at /data/<name>/ to the keys bound to it)",
             openapi_extra=links(201, ShowVolume=("show_volume", _NAME), DeleteVolume=("delete_volume", _NAME)))
async def create_volume(body: VolumeCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.create_volume(p, body.name, body.quota_mib, org=org)


@router.get("/volumes/{name}", response_model=VolumeOut, responses=answers(404), summary="One volume")
async def show_volume(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.show_volume(p, name, org=org)


@router.delete("/volumes/{name}", status_code=204, response_class=Response, responses=answers(404, 409, 503),
               summary="Delete a volume no active key is bound to, with its files")
async def delete_volume(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.delete_volume(p, name, org=org)


# --- storage connections ---------------------------------------------------------------------


@router.get("/storage", response_model=list[StorageOut], responses=answers(404),
            summary="Storage connections (never their credentials)")
async def list_storage(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_storage(p, org=org)


@router.post("/storage", status_code=201, response_model=StorageOut, responses=answers(400, 404, 409),
             summary="Connect a bucket (the credentials are kept encrypted, never shown again)",
             openapi_extra=links(201, ShowStorage=("show_storage", _NAME), DeleteStorage=("delete_storage", _NAME)))
async def create_storage(body: StorageCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    spec = ConnectionSpec(body.name, body.type, body.bucket, body.endpoint, body.region, body.prefix, body.read_only)
    return await ops.create_storage(p, spec, json.dumps(body.credentials).encode(), org=org)


@router.get("/storage/{name}", response_model=StorageDetail, responses=answers(404),
            summary="One storage connection and the active keys bound to it")
async def show_storage(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.show_storage(p, name, org=org)


@router.delete("/storage/{name}", status_code=204, response_class=Response, responses=answers(404, 409),
               summary="Delete a storage connection no active key is bound to (the bucket is not touched)")
async def delete_storage(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.delete_storage(p, name, org=org)


# --- connectors ------------------------------------------------------------------------------


def _secret(value: str | dict[str, str]) -> bytes:
    return (json.dumps(value) if isinstance(value, dict) else value).encode()


@router.get("/connectors", response_model=list[ConnectorOut], responses=answers(404),
            summary="Connectors (never their secrets)")
async def list_connectors(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_connectors(p, org=org)


@router.post("/connectors", status_code=201, response_model=ConnectorOut, responses=answers(400, 404, 409),
             summary="Create a connector (the secret is kept encrypted, never shown again)",
             openapi_extra=links(201, ShowConnector=("show_connector", _NAME), UpdateConnector=("update_connector", _NAME),
                                 DeleteConnector=("delete_connector", _NAME)))
async def create_connector(body: ConnectorCreate, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    options = Options(hosts=tuple(body.hosts), header=body.header, env_var=body.env_var)
    return await ops.create_connector(p, body.name, body.type, _secret(body.secret), options, org=org)


@router.get("/connectors/{name}", response_model=ConnectorDetail, responses=answers(404),
            summary="One connector and the active keys bound to it")
async def show_connector(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> dict[str, Any]:
    return await ops.show_connector(p, name, org=org)


@router.patch("/connectors/{name}", response_model=ConnectorOut, responses=answers(400, 404),
              summary="Replace a connector's secret")
async def update_connector(
    name: str, body: ConnectorUpdate, p: AdminDep, ops: OpsDep, org: OrgQuery = None
) -> dict[str, Any]:
    return await ops.update_connector(p, name, _secret(body.secret), org=org)


@router.delete("/connectors/{name}", status_code=204, response_class=Response, responses=answers(404, 409),
               summary="Delete a connector no active key is bound to")
async def delete_connector(name: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.delete_connector(p, name, org=org)


# --- threads ---------------------------------------------------------------------------------


@router.get("/threads", response_model=list[ThreadOut], responses=answers(404),
            summary="Threads: each thread_id's persistent /home/baponi")
async def list_threads(p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> list[dict[str, Any]]:
    return await ops.list_threads(p, org=org)


@router.delete("/threads/{thread_id}", status_code=204, response_class=Response, responses=answers(404, 409, 503),
               summary="Delete a thread and its home (409 while an execution uses it)")
async def delete_thread(thread_id: str, p: AdminDep, ops: OpsDep, org: OrgQuery = None) -> None:
    await ops.delete_thread(p, thread_id, org=org)


# --- webhook signing secret ------------------------------------------------------------------


@router.post("/webhook-secret", status_code=201, response_model=WebhookSecretOut, responses=answers(400, 404),
             summary="Create (or rotate) the organization's webhook signing secret (shown once)")
async def webhook_secret(
    body: WebhookSecretRequest, p: AdminDep, ops: OpsDep, org: OrgQuery = None
) -> WebhookSecretOut:
    made = await ops.webhook_secret(p, rotate=body.rotate, org=org)
    return WebhookSecretOut(org=made.view["org"], rotated=made.view["rotated"], secret=made.secret)
