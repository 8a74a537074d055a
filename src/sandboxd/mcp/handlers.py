"""tools/list and tools/call: parse the arguments, call one service, shape the result.

Errors, as the MCP spec (2025-11-25, "Error Handling") splits them:
- an unknown tool is a protocol error (JSON-RPC -32602);
- everything the model can act on is a tool result with `isError: true`: a program that failed
  (with its full structured result), a validation error naming the field, a busy thread, a
  missing file, a rate limit; the text starts with the REST API's error code.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeVar

import mcp_types as types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from ..errors import InvalidRequest, RateLimited, SandboxdError
from ..service import Outcome, Principal, parse_execute_request, validation_message
from ..service.paths import normalize_path
from . import tools
from .results import execute_content
from .gate import PRINCIPAL

if TYPE_CHECKING:
    from ..app import Services

log = logging.getLogger("sandboxd.mcp")

DELIVERY_MODE = "mcp"

_Model = TypeVar("_Model", bound=BaseModel)


class Handlers:
    """The lowlevel server's `on_list_tools` and `on_call_tool`, bound to the services."""

    def __init__(self, services: Services) -> None:
        self._services = services

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = _principal(ctx)
        return types.ListToolsResult(
            tools=tools.tool_list(
                principal,
                self._services.executions.languages_for(principal),
                self._services.settings.output_limit_bytes,
                self._services.settings.mcp_inline_max_bytes,
            )
        )

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        call = {
            tools.EXECUTE: self._execute,
            tools.FILES_LIST: self._files_list,
            tools.FILES_DOWNLOAD: self._files_download,
            tools.FILES_UPLOAD: self._files_upload,
        }.get(params.name)
        if call is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name!r}")
        try:
            return await call(ctx, _principal(ctx), params.arguments or {})
        except SandboxdError as exc:
            return _tool_error(exc)

    # --- the tools ---------------------------------------------------------------------------

    async def _execute(
        self, ctx: ServerRequestContext[Any, Any], principal: Principal, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        for name in arguments:
            if name not in tools.EXECUTE_FIELDS:
                raise InvalidRequest(f"unknown field {name!r}")
        request = parse_execute_request(arguments)
        submission = await self._services.executions.submit(
            principal, request, delivery_mode=DELIVERY_MODE, client_id=_client_id(ctx),
            base_url=str(_request(ctx).base_url), client_ip=_client_ip(ctx), progress=_wants_progress(ctx),
        )
        # Output as progress notifications while it runs (a no-op unless the client sent a
        # progressToken). A caller that goes away stops only this loop, never the run.
        sent = 0
        async for event in submission.log.follow(0):
            if event.type == "output" and event.body["data"]:
                sent += len(event.body["data"])
                prefix = "[stderr] " if event.body["stream"] == "stderr" else ""
                await ctx.session.report_progress(sent, None, prefix + event.body["data"])
        outcome = await submission.outcome()
        structured = tools.ExecuteResult(**_result_fields(outcome))
        return types.CallToolResult(
            content=execute_content(outcome),
            structured_content=structured.model_dump(),
            is_error=not outcome.success,
        )

    async def _files_list(
        self, ctx: ServerRequestContext[Any, Any], principal: Principal, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        args = _parse(tools.FilesListArgs, arguments)
        entries = await self._services.files.list(principal, args.source, args.id, args.path)
        listing = tools.FileList(files=[tools.FileEntry(**e) for e in entries])
        return types.CallToolResult(
            content=[types.TextContent(text=_list_text(args.source, args.id, args.path, listing))],
            structured_content=listing.model_dump(),
        )

    async def _files_download(
        self, ctx: ServerRequestContext[Any, Any], principal: Principal, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        args = _parse(tools.FilesDownloadArgs, arguments)
        files = self._services.files
        signed = await files.download_url(
            principal, args.source, args.id, args.path, base_url=str(_request(ctx).base_url)
        )
        cap = self._services.settings.mcp_inline_max_bytes
        size, head = await files.read_head(principal, args.source, args.id, args.path, cap + 1, ip=_client_ip(ctx))
        content, why_not = _inline_text(head, size, cap)
        download = tools.Download(url=signed["url"], expires_at=signed["expires_at"], size=size, content=content)
        return types.CallToolResult(
            content=[types.TextContent(text=_download_text(args.path, download, why_not))],
            structured_content=download.model_dump(),
        )


    async def _files_upload(
        self, ctx: ServerRequestContext[Any, Any], principal: Principal, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        args = _parse(tools.FilesUploadArgs, arguments)
        files = self._services.files
        if args.content is not None:
            cap = self._services.settings.mcp_inline_max_bytes
            if cap == 0:
                raise InvalidRequest("inline content is turned off on this server; omit content and give content_length")
            data = args.data(cap)
            path = await files.write(principal, args.source, args.id, args.path, data, ip=_client_ip(ctx))
            upload = tools.Upload(path=path, written=True, size=len(data))
            text = f"Wrote {len(data)} bytes to {args.source} {args.id!r} at {path!r}."
        else:
            if args.content_length is None:
                raise InvalidRequest("give content (the file inline) or content_length (for a signed upload URL)")
            signed = await files.upload_url(
                principal, args.source, args.id, args.path, args.content_length, args.content_type,
                base_url=str(_request(ctx).base_url),
            )
            upload = tools.Upload(
                path=normalize_path(args.path, source=args.source, id=args.id), written=False,
                size=args.content_length, url=signed["url"],
                headers=[tools.UploadHeader(**h) for h in signed["headers"]], expires_at=signed["expires_at"],
            )
            headers = "".join(f"\n{h.name}: {h.value}" for h in upload.headers)
            text = (
                f"PUT exactly {args.content_length} bytes to this URL, without credentials, before "
                f"{upload.expires_at}, with the headers below:\n{upload.url}{headers}"
            )
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=upload.model_dump()
        )


# --- request context ---------------------------------------------------------------------------


def _request(ctx: ServerRequestContext[Any, Any]) -> Request:
    if not isinstance(ctx.request, Request):  # every request here comes through the HTTP gate
        raise MCPError(types.INTERNAL_ERROR, "no HTTP request")
    return ctx.request


def _principal(ctx: ServerRequestContext[Any, Any]) -> Principal:
    principal = _request(ctx).scope.get(PRINCIPAL)
    if not isinstance(principal, Principal):
        raise MCPError(types.INTERNAL_ERROR, "request was not authenticated")
    return principal


def _client_ip(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The client's address: the peer, or what a trusted proxy forwarded (server.py)."""
    client = _request(ctx).client
    return client.host if client else None


def _client_id(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """Who is calling, for the execution record: `X-Client-Id`, else the MCP client's own name
    and version (sent on 2026-07-28 requests), else its User-Agent."""
    headers = _request(ctx).headers
    if header := headers.get("x-client-id"):
        return header
    client = ctx.session.client_params.client_info if ctx.session.client_params else None
    if client is not None:
        return f"{client.name}/{client.version}"
    return headers.get("user-agent")


# --- arguments and results -----------------------------------------------------------------------


def _parse(model: type[_Model], arguments: dict[str, Any]) -> _Model:
    try:
        return model.model_validate(arguments)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from None


def _wants_progress(ctx: ServerRequestContext[Any, Any]) -> bool:
    """The caller asked for the output as progress notifications (its call's progressToken)."""
    return ctx.meta is not None and ctx.meta.get("progress_token") is not None


def _tool_error(exc: SandboxdError) -> types.CallToolResult:
    text = f"{exc.code}: {exc.message}"
    if isinstance(exc, RateLimited):
        text += f" (retry after {exc.retry_after} s)"
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def _result_fields(outcome: Outcome) -> dict[str, Any]:
    return {
        **outcome.result(),
        "trace_id": outcome.trace_id,
        "duration_ms": outcome.duration_ms,
        "output_truncated": outcome.output_truncated,
    }


def _list_text(source: str, id: str, path: str | None, listing: tools.FileList) -> str:
    where = f"{source} {id!r}" + (f" under {path!r}" if path else "")
    if not listing.files:
        return f"No files in {where}."
    relative = f", relative to {path!r}" if path else ""
    lines = [f"{len(listing.files)} entries in {where} (path{relative}, size in bytes, modified):"]
    for f in listing.files:
        lines.append(f"{f.path}/" if f.is_directory else f"{f.path}\t{f.size}\t{f.modified}")
    return "\n".join(lines)


def _inline_text(head: bytes, size: int, cap: int) -> tuple[str | None, str | None]:
    """(content, None) for small UTF-8 text; (None, why not) otherwise."""
    if cap == 0:
        return None, "inline content is turned off on this server"
    if size > cap or len(head) > cap:
        return None, f"larger than the inline limit of {cap} bytes"
    if b"\x00" in head:
        return None, "binary"
    try:
        return head.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, "not UTF-8 text"


def _download_text(path: str, download: tools.Download, why_not: str | None) -> str:
    text = (
        f"Download URL for {path!r} ({download.size} bytes), GET without credentials until "
        f"{download.expires_at}:\n{download.url}"
    )
    if download.content is not None:
        return text + f"\n\nContent of {path!r}:\n{download.content}"
    return text + f"\n\n(content not included: {why_not})"
