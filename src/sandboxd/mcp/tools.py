"""The MCP tools: names, JSON Schemas and descriptions written for the model that calls them.

Input validation is not here: `sandbox_execute` arguments become the REST API's
`ExecuteRequest` (service/requests.py), so rules and messages are the same on both surfaces,
and its input schema is that model's (only the descriptions are the tool's own); the files
tools' arguments are checked by the small models below, as the REST files routes do.
Descriptions are per API key: they state that key's own limits (timeout cap, CPU, memory,
network, volumes), so the model knows what it can rely on.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from ..runtime import INTERPRETERS, spoken
from ..service import Principal
from ..service.requests import MAX_CODE_BYTES, ExecuteRequest
from ..service.connectors import ConnectorBinding, usage
from ..service.storage_kind import StorageKind, StorageKindParam

EXECUTE = "sandbox_execute"
FILES_LIST = "files_list"
FILES_DOWNLOAD = "files_download"

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
        f"{sandbox.timeout_cap_s} s; {sandbox.cpus:g} CPU; {sandbox.memory_mib} MiB memory; {network}. "
        f"stdout and stderr are each kept up to {output_limit_bytes} bytes (the rest is cut and "
        "output_truncated is true). " + " ".join(part for part in (volumes, buckets, connectors) if part)
    ).strip()


def tool_list(principal: Principal, languages: frozenset[str], output_limit_bytes: int) -> list[types.Tool]:
    """The three tools, described for `principal`'s sandbox."""
    limits = _limits(principal, languages, output_limit_bytes)
    return [
        types.Tool(
            name=EXECUTE,
            title="Run code in a sandbox",
            description=(
                f"Run {spoken(i.title for i in INTERPRETERS.values())} code in an isolated sandbox and get its stdout, "
                "stderr and exit code. Every call is a new process: no variables or imports survive "
                "between calls. The working directory is /data, emptied after every call; /tmp too. "
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
    ]


INPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    EXECUTE: EXECUTE_INPUT,
    FILES_LIST: _schema(FilesListArgs),
    FILES_DOWNLOAD: _schema(FilesDownloadArgs),
}
