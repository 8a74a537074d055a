"""Artifacts: the files a run left in /data/outputs, kept for a while and downloadable by URL.

Where they live: `<data_dir>/artifacts/<org_id>/<trace_id>/<path>`, root's (files 0600,
directories 0700), copied there by the runtime after the program ended and before its sandbox
was disposed of (runtime/outputs.py: no link followed, regular files only, capped in count and
bytes). The result lists them as `{path, size, url, expires_at}`.

The URL is `<base>/v1/artifacts/<trace_id>/<path>?expires=<unix>&signature=<mac>`, signed by
the file-URL signer (service/signing.py) under a domain of its own: no API key is needed to
use it, and the signature binds the organization (looked up from the execution at download),
the trace id, the path and the expiry. It is refused (403) once expired or if any part was
changed; it finds nothing (404) once the execution was deleted.

Retention: `retention_s` (`SANDBOXD_ARTIFACT_RETENTION_S`, default 24 h), or the executions'
retention if that is shorter; the sweep (run with the executions' in service/retention.py)
removes each execution's directory that old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..errors import NotFound
from ..ids import TRACE_ID_PATTERN
from ..runtime.outputs import Collected
from ..storage.tree import iso, open_regular, open_root
from .files import DEFAULT_CONTENT_TYPE, Download
from .signing import Signer

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("sandboxd.artifacts")

#: The download route's prefix (api/routes/artifacts.py).
ROUTE = "/v1/artifacts/"
_TRACE_ID = re.compile(TRACE_ID_PATTERN)
_ORG_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


class Artifacts:
    def __init__(
        self,
        root: Path,
        signer: Signer,
        store: Store | None = None,
        *,
        retention_s: int = 86400,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self._signer = signer
        self._store = store
        self.retention_s = retention_s
        self._clock = clock

    def dir_for(self, org_id: str, trace_id: str) -> Path:
        """Where an execution's artifacts are copied (made by the copy, when there is one)."""
        if not _ORG_ID.fullmatch(org_id) or not _TRACE_ID.fullmatch(trace_id):
            raise ValueError("not an organization id and a trace id")
        return self.root / org_id / trace_id

    def listing(
        self, org_id: str, trace_id: str, files: Sequence[Collected], base_url: str = ""
    ) -> tuple[dict[str, Any], ...]:
        """The result's `artifacts`: each file with a signed URL valid as long as it is kept."""
        expires = int(self._clock()) + self.retention_s
        return tuple(
            {"path": f.path, "size": f.size, "url": self.url(org_id, trace_id, f.path, expires, base_url),
             "expires_at": iso(expires)}
            for f in files
        )

    def url(self, org_id: str, trace_id: str, path: str, expires: int, base_url: str = "") -> str:
        signature = self._signer.artifact_signature(org_id, trace_id, path, expires)
        return (
            f"{base_url.rstrip('/')}{ROUTE}{trace_id}/{quote(path, safe='/')}"
            f"?expires={expires}&signature={signature}"
        )

    @staticmethod
    def notes(dropped: int, max_files: int, size_mib: int) -> tuple[str, ...]:
        """What the result says when the caps left files out."""
        if not dropped:
            return ()
        return (
            f"{dropped} file(s) in /data/outputs were not kept as artifacts: at most {max_files} "
            f"files and {size_mib} MiB are kept per execution",
        )

    async def open(self, trace_id: str, path: str, expires: int, signature: str) -> Download:
        """The artifact a signed URL names, open for streaming; Forbidden (403) for a bad or
        expired signature, NotFound once the execution or the file is gone."""
        if self._store is None or not _TRACE_ID.fullmatch(trace_id):
            raise NotFound("no such artifact")
        execution = await self._store.executions.get(trace_id)
        if execution is None:
            raise NotFound("no such artifact")
        self._signer.verify_artifact(execution.org_id, trace_id, path, expires, signature)
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise NotFound("no such artifact")
        root = self.dir_for(execution.org_id, trace_id)

        def opened() -> tuple[int, os.stat_result]:
            root_fd = open_root(root)
            try:
                return open_regular(root_fd, path)
            finally:
                os.close(root_fd)

        try:
            fd, st = await asyncio.to_thread(opened)
        except NotFound:
            raise NotFound("no such artifact (it may have been deleted after its retention)") from None
        name = parts[-1]
        return Download(
            file=os.fdopen(fd, "rb", buffering=0), size=st.st_size, name=name,
            content_type=mimetypes.guess_type(name)[0] or DEFAULT_CONTENT_TYPE,
        )

    def sweep(self, keep_s: float | None = None, now: float | None = None) -> int:
        """Remove the artifacts of executions older than `keep_s` (default `retention_s`);
        how many executions' directories went."""
        keep_s = self.retention_s if keep_s is None else keep_s
        cutoff = (self._clock() if now is None else now) - keep_s
        removed = 0
        if not self.root.is_dir():
            return 0
        for org in self.root.iterdir():
            if not org.is_dir() or org.is_symlink():
                continue
            for trace in org.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if trace.lstat().st_mtime < cutoff:
                        shutil.rmtree(trace, ignore_errors=True)  # ours alone: no sandbox writes here
                        removed += 1
            with contextlib.suppress(OSError):
                org.rmdir()  # if empty
        return removed
