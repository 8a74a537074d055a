"""The MCP tools: names, JSON Schemas and descriptions written for the model that calls them.

Input validation is not here: `sandbox_execute` arguments become the REST API's
`ExecuteRequest` (service/requests.py), so rules and messages are the same on both surfaces,
and its input schema is that model's (only the descriptions are the tool's own); the files
tools' arguments are checked by the small models below, as the REST files routes do.
Descriptions are per API key: they state that key's own limits (timeout cap, CPU, memory,
network, volumes), so the model knows what it can rely on.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..api.schemas import (
    ARTIFACTS_FIELD,
    NOTES_FIELD,
    OUTPUTS_FIELD,
    SESSION_FIELD,
    Artifact,
    OutputItem,
    SessionBody,
)
from ..errors import InvalidRequest

from ..runtime import INTERPRETERS, spoken
from ..service.plans import timeout_cap
from ..service import Principal
from ..service.files import CONTENT_TYPE_PATTERN, MAX_FILE_BYTES
from ..service.requests import MAX_CODE_BYTES, ExecuteRequest, JsonInt
from ..service.connectors import ConnectorBinding, usage
from ..service.storage_kind import StorageKind, StorageKindParam

EXECUTE = "sandbox_execute"
FILES_LIST = "files_list"
FILES_DOWNLOAD = "files_download"
FILES_UPLOAD = "files_upload"

#: The execute fields an LLM may set, in the tool schema's order (spec §21.4: `sub_paths` and
#: `webhook_url` are not exposed).
EXECUTE_FIELDS = ("code", "language", "timeout", "thread_id", "env_vars", "metadata")

#: Per field, written for the model that calls the tool (the rules come from the REST model).
_EXECUTE_DESCRIPTIONS = {
    "code": f"The program's source code (1 byte to {MAX_CODE_BYTES // 1024 // 1024} MB of UTF-8). "
    "Print what you want to see: only stdout and stderr come back.",
    "language": spoken(i.summary for i in INTERPRETERS.values()) + ".",
    "timeout": "Wall-clock limit in seconds; lowered to this API key's cap. The whole process tree "
    "is killed when it runs out.",
    "thread_id": "Reuse the same id to keep /home/baponi between calls (files, and anything "
    "installed under it). Pick a unique id per task, e.g. a descriptive prefix plus a random "
    "suffix. Omit it for a throwaway run.",
    "env_vars": "Environment variables for the program; UPPERCASE names. System names (PATH, HOME, "
    "LD_*, PYTHON*, ...) are reserved and refused.",
    "metadata": "Up to 10 string labels kept with the execution record (audit).",
}

#: Parts of the REST schema left out of the tool's: the reserved variable names (about 70) would
#: cost every session's context; the description says it in words, and the server refuses them.
_EXECUTE_OMITTED = (("env_vars", "propertyNames", "not"),)


def _execute_input() -> dict[str, Any]:
    """`sandbox_execute`'s input schema: the REST request model's, for the fields an LLM may
    set. A field the model may leave null is just left out here (null is not offered)."""
    rest = ExecuteRequest.model_json_schema()
    properties: dict[str, Any] = {}
    for name in EXECUTE_FIELDS:
        field = dict(rest["properties"][name])
        variants = [v for v in field.pop("anyOf", ()) if v != {"type": "null"}]
        if variants:
            (only,) = variants
            field.update(only)
        if field.get("default", ...) is None:
            del field["default"]
        field.pop("title", None)
        field["description"] = _EXECUTE_DESCRIPTIONS[name]
        properties[name] = field
    for name, *path, key in _EXECUTE_OMITTED:
        node = properties[name]
        for step in path:
            node = node[step]
        del node[key]
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in rest["required"] if name in EXECUTE_FIELDS],
        "additionalProperties": False,
    }


EXECUTE_INPUT = _execute_input()


_SOURCE = Field(
    default=StorageKind.THREAD,
    description="'thread' (id = a thread_id) or 'volume' (id = the volume's name).",
)


class _Args(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class FilesListArgs(_Args):
    source: StorageKindParam = _SOURCE
    id: StrictStr = Field(description="The thread_id used with sandbox_execute, or the volume's name.")
    path: StrictStr | None = Field(
        default=None,
        description="A directory (or file) to list, relative to the root (/home/baponi for a "
        "thread); default: everything, recursively.",
    )


class FilesDownloadArgs(_Args):
    source: StorageKindParam = _SOURCE
    id: StrictStr = Field(description="The thread_id used with sandbox_execute, or the volume's name.")
    path: StrictStr = Field(
        description="The file, relative to the root: 'out/report.csv' and "
        "'/home/baponi/out/report.csv' name the same file of a thread."
    )


class FilesUploadArgs(_Args):
    source: StorageKindParam = _SOURCE
    id: StrictStr = Field(
        description="The thread_id to use with sandbox_execute (a new one is created), or the volume's name."
    )
    path: StrictStr = Field(
        description="Where to write, relative to the root: 'in/data.csv' is /home/baponi/in/data.csv "
        "of a thread (directories are created)."
    )
    content: StrictStr | None = Field(
        default=None,
        description="The whole file, as text or base64 (see encoding), up to the inline limit. Omit it "
        "to get a signed upload URL instead (then give content_length).",
    )
    encoding: Literal["utf-8", "base64"] = Field(
        default="utf-8", description="How `content` is given: 'utf-8' text, or 'base64' for binary files."
    )
    content_length: JsonInt | None = Field(
        default=None,
        description="Without content: the exact size in bytes of the file to PUT to the signed URL.",
        json_schema_extra={"minimum": 0, "maximum": MAX_FILE_BYTES},
    )
    content_type: StrictStr | None = Field(
        default=None,
        description="Without content: the Content-Type the PUT must send (default application/octet-stream).",
        json_schema_extra={"pattern": CONTENT_TYPE_PATTERN},
    )

    def data(self, max_bytes: int) -> bytes:
        """The inline content's bytes, at most `max_bytes` of them."""
        assert self.content is not None
        if self.encoding == "base64":
            try:
                data = base64.b64decode(self.content, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidRequest("content is not valid base64 (encoding: 'base64')") from None
        else:
            data = self.content.encode("utf-8", errors="surrogatepass")
        if len(data) > max_bytes:
            raise InvalidRequest(
                f"content has {len(data)} bytes, over the inline limit of {max_bytes}; omit content and "
                "give content_length to get a signed upload URL"
            )
        return data


class ExecuteResult(BaseModel):
    """The REST API's SandboxResult, field for field (tests/integration/test_mcp.py checks)."""

    success: bool = Field(description="True when the program exited 0.")
    stdout: str
    stderr: str
    exit_code: int = Field(description="-1 when the program never ran (a platform error).")
    error: str | None = Field(
        description="Why the platform stopped it: timeout, memory_limit_exceeded, cancelled, ...; "
        "null for an ordinary exit."
    )
    error_message: str | None = Field(
        default=None,
        description="A platform error's message naming the layer that failed (exit_code -1: the "
        "program did not run, not a fault of the code); null otherwise.",
    )
    trace_id: str = Field(description="The execution's id (GET /v1/executions/{trace_id}).")
    duration_ms: int
    output_truncated: bool = Field(description="stdout or stderr went past the server's cap and was cut.")
    session: SessionBody | None = SESSION_FIELD
    outputs: list[OutputItem] = OUTPUTS_FIELD
    artifacts: list[Artifact] = ARTIFACTS_FIELD
    notes: list[str] = NOTES_FIELD


class FileEntry(BaseModel):
    name: str
    path: str = Field(
        description="Relative to the listed directory: for files_download, prefix the path you "
        "listed (listing 'out' gives 'a.txt', downloaded as 'out/a.txt')."
    )
    size: int = Field(description="Bytes; 0 for directories.")
    modified: str = Field(description="ISO 8601, UTC.")
    is_directory: bool


class FileList(BaseModel):
    files: list[FileEntry]


class Download(BaseModel):
    url: str = Field(description="GET it with no credentials before expires_at.")
    expires_at: str
    size: int = Field(description="The file's size in bytes.")
    content: str | None = Field(description="The file's text, when it is small UTF-8 text; else null.")


class UploadHeader(BaseModel):
    name: str
    value: str


class Upload(BaseModel):
    path: str = Field(description="The file's path, relative to the root.")
    written: bool = Field(description="True: the inline content was written; false: PUT it to `url`.")
    size: int | None = Field(description="Bytes written (inline), or the content_length to PUT.")
    url: str | None = Field(default=None, description="Without content: PUT the bytes here, no credentials.")
    headers: list[UploadHeader] = Field(default_factory=list, description="Headers the PUT must send.")
    expires_at: str | None = Field(default=None, description="When the URL stops working.")


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _limits(principal: Principal, languages: frozenset[str], output_limit_bytes: int) -> str:
    sandbox = principal.sandbox
    if sandbox.network == "allowlist":
        network = (
            "HTTP(S) only to " + ", ".join(sandbox.network_allow or ())
            + " through the proxy set in HTTP_PROXY/HTTPS_PROXY (other hosts are refused: status 'blocked')"
        )
    elif sandbox.network == "full":
        network = "outbound internet access (private and cloud-metadata addresses are refused)"
    else:
        network = "no network access at all (package downloads fail)"
    volumes = (
        "Volumes: "
        + ", ".join(f"/data/{v.slug}/ ({'read-only' if ro else 'read-write'})" for v, ro in principal.volumes)
        + " hold shared, persistent files."
        if principal.volumes
        else ""
    )
    buckets = (
        "Buckets: "
        + ", ".join(
            f"/data/{c.name}/ ({c.kind}, {'read-only' if b.read_only or c.read_only else 'read-write'})"
            for c, b in principal.storage
        )
        + " are cloud storage shown as local directories (no SDK or credentials needed)."
        if principal.storage
        else ""
    )
    bound = ConnectorBinding.of(principal)
    connectors = (
        "Connectors (credentials the platform provides; never print them): "
        + "; ".join(usage(b) for b in bound) + "."
        if bound
        else ""
    )
    image = principal.image.name if principal.image is not None else "host"
    return (
        f"This API key's sandbox: {', '.join(sorted(languages))} on the image {image!r}; timeout at most "
        f"{timeout_cap(principal.plan, sandbox.timeout_cap_s)[0]} s; {sandbox.cpus:g} CPU; {sandbox.memory_mib} MiB memory; {network}. "
        f"stdout and stderr are each kept up to {output_limit_bytes} bytes (the rest is cut and "
        "output_truncated is true). " + " ".join(part for part in (volumes, buckets, connectors) if part)
    ).strip()


def _state(principal: Principal) -> str:
    """What survives between calls, for the key's session mode (service/sessions.py)."""
    if principal.sandbox.session == "persistent":
        return (
            "With a thread_id, the interpreter persists between calls of that thread (per language): "
            "variables, imports, functions and the working directory are kept, and the last "
            "expression of a Python call is shown, as in a notebook; the result says 'session: kept', "
            "or 'session: reset (why)' when the state was lost. Without thread_id every call is a new "
            "process. "
        )
    return "Every call is a new process: no variables or imports survive between calls. "


def tool_list(
    principal: Principal, languages: frozenset[str], output_limit_bytes: int, inline_max_bytes: int = 0
) -> list[types.Tool]:
    """The four tools, described for `principal`'s sandbox."""
    limits = _limits(principal, languages, output_limit_bytes)
    inline = (
        f"Give the content inline (up to {inline_max_bytes} bytes: text, or base64 with encoding "
        "'base64'), or "
        if inline_max_bytes
        else "Inline content is turned off on this server: "
    )
    return [
        types.Tool(
            name=EXECUTE,
            title="Run code in a sandbox",
            description=(
                f"Run {spoken(i.title for i in INTERPRETERS.values())} code in an isolated sandbox and get its stdout, "
                "stderr and exit code; figures and images the code shows come back as images, HTML "
                "tables and markdown as text. " + _state(principal) + "The working directory is /data; "
                "/data and /tmp are never saved (a new process starts with them empty). "
                "Without thread_id nothing persists. With a thread_id, /home/baponi is kept for the "
                "next call with the same thread_id: write files you need later there (list and fetch "
                "them with files_list and files_download). One call per thread at a time: a second "
                "concurrent one fails with 'conflict'. A program that fails (non-zero exit, timeout, "
                "out of memory) is returned as an error result with its output. " + limits
            ),
            input_schema=EXECUTE_INPUT,
            output_schema=_schema(ExecuteResult),
            annotations=types.ToolAnnotations(
                title="Run code in a sandbox",
                read_only_hint=False,
                destructive_hint=False,
                idempotent_hint=False,
                open_world_hint=principal.sandbox.network != "none",
            ),
        ),
        types.Tool(
            name=FILES_LIST,
            title="List a thread's or volume's files",
            description=(
                "List the files of a thread (what sandbox_execute runs with that thread_id kept under "
                "/home/baponi) or of a volume (/data/<name>/), recursively. Each path is relative "
                "to the directory you listed: listing 'out' gives 'a.txt', which files_download "
                "takes as 'out/a.txt'."
            ),
            input_schema=_schema(FilesListArgs),
            output_schema=_schema(FileList),
            annotations=types.ToolAnnotations(
                title="List files", read_only_hint=True, idempotent_hint=True, open_world_hint=False
            ),
        ),
        types.Tool(
            name=FILES_DOWNLOAD,
            title="Download a file from a thread or volume",
            description=(
                "Get a signed download URL for one file of a thread (under /home/baponi) or a volume: "
                "anyone with the URL can GET the file without credentials until it expires (1 hour). "
                "When the file is small UTF-8 text its content is returned too, so you can read it "
                "directly."
            ),
            input_schema=_schema(FilesDownloadArgs),
            output_schema=_schema(Download),
            annotations=types.ToolAnnotations(
                title="Download a file", read_only_hint=True, idempotent_hint=True, open_world_hint=False
            ),
        ),
        types.Tool(
            name=FILES_UPLOAD,
            title="Upload a file to a thread or volume",
            description=(
                "Write one file into a thread (under /home/baponi, where sandbox_execute with that "
                "thread_id finds it; a thread that has not run yet is created) or a read-write volume. "
                + inline
                + "omit content and give content_length to get a signed upload URL: PUT exactly that "
                "many bytes there, with the returned headers and no credentials, before it expires."
            ),
            input_schema=_schema(FilesUploadArgs),
            output_schema=_schema(Upload),
            annotations=types.ToolAnnotations(
                title="Upload a file", read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                open_world_hint=False,
            ),
        ),
    ]


INPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    EXECUTE: EXECUTE_INPUT,
    FILES_LIST: _schema(FilesListArgs),
    FILES_DOWNLOAD: _schema(FilesDownloadArgs),
    FILES_UPLOAD: _schema(FilesUploadArgs),
}
