"""This server's node id: its name among the servers that share one database.

Executions record the node that runs them, so that a restart recovers only its own node's;
webhook claims name it. It must stay the same across restarts of one server and differ
between servers: `settings.node_id` when set, else an id made once per data dir and kept in
it (a server owns its data dir: runtime/lease.py).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from ..ids import NODE_ID_PATTERN, random_token

NODE_ID_FILE = "node-id"


def load_or_create_node_id(data_dir: Path) -> str:
    """`<data_dir>/node-id`, made once as `node_<12 base62>`; written whole or not at all."""
    path = data_dir / NODE_ID_FILE
    if not path.exists():
        fd, tmp = tempfile.mkstemp(prefix=f".{NODE_ID_FILE}.", dir=data_dir)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"node_{random_token(12)}\n")
                f.flush()
                os.fsync(f.fileno())  # never an empty node-id after a power loss
            os.link(tmp, path)  # a racing creator's file wins; both then read the same id
        except FileExistsError:
            pass
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    node_id = path.read_text().strip()
    if not re.fullmatch(NODE_ID_PATTERN, node_id):
        raise RuntimeError(f"{path} is damaged: expected a node id like node_AbC123, got {node_id!r}")
    return node_id
