"""The audit log: search (a page at a time) and export (JSONL or CSV), of one organization."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ...service.admin import audit_filters
from ...service.audit import FORMATS, KINDS, MAX_SEARCH
from .deps import AdminDep, OpsDep, OrgQuery
from .schemas import AuditPageOut
from ._common import answers

router = APIRouter()

_MEDIA = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}

TraceId = Annotated[str | None, Query(description="One execution's rows.")]
KeyId = Annotated[str | None, Query(description="Rows of one API key (its executions, and changes to it).")]
Kind = Annotated[str | None, Query(description="execution, admin or files.", json_schema_extra={"enum": list(KINDS)})]
Action = Annotated[str | None, Query(description="e.g. key.create, sandbox.update, execute.")]
Metadata = Annotated[list[str], Query(description="KEY=VALUE of an execution's metadata; repeatable, all must match.",
                                      json_schema_extra={"items": {"type": "string", "pattern": "^[^=]+=.*$"}})]
Since = Annotated[str | None, Query(description="From this time (RFC 3339, with a zone).",
                                    json_schema_extra={"format": "date-time"})]
Until = Annotated[str | None, Query(description="Before this time (RFC 3339, with a zone).",
                                    json_schema_extra={"format": "date-time"})]


@router.get("/audit", response_model=AuditPageOut, responses=answers(400, 404, 503),
            summary="Search the organization's audit log, oldest first (a page; `cursor` for the next)")
async def search_audit(
    p: AdminDep, ops: OpsDep, org: OrgQuery = None, trace_id: TraceId = None, key_id: KeyId = None,
    kind: Kind = None, action: Action = None, metadata: Metadata = [], since: Since = None, until: Until = None,
    newest_first: bool = False,
    limit: Annotated[int, Query(description="Rows per page.", json_schema_extra={"minimum": 1, "maximum": MAX_SEARCH})] = 100,
    cursor: Annotated[str | None, Query(description="The `cursor` of the previous page.")] = None,
) -> dict[str, Any]:
    filters = audit_filters(
        trace_id=trace_id, key_id=key_id, kind=kind, action=action, metadata=metadata, since=since, until=until,
        newest_first=newest_first,
    )
    return await ops.search_audit(p, filters, limit=limit, cursor=cursor, org=org)


@router.get(
    "/audit/export",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Every matching row, oldest first: JSON lines, or CSV with a header (detail as JSON)",
              "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                          "text/csv": {"schema": {"type": "string"}}}},
        **answers(400, 404, 503),
    },
    summary="Export the organization's audit log as JSONL or CSV",
)
async def export_audit(
    p: AdminDep, ops: OpsDep, org: OrgQuery = None,
    format: Annotated[str, Query(description="jsonl or csv.", json_schema_extra={"enum": list(FORMATS)})] = "jsonl",
    trace_id: TraceId = None, key_id: KeyId = None, kind: Kind = None, action: Action = None,
    metadata: Metadata = [], since: Since = None, until: Until = None,
) -> StreamingResponse:
    filters = audit_filters(
        trace_id=trace_id, key_id=key_id, kind=kind, action=action, metadata=metadata, since=since, until=until
    )
    lines = await ops.export_audit(p, filters, format=format, org=org)
    return StreamingResponse(lines, media_type=_MEDIA[format])
