"""Programs the suite runs inside sandboxes to look around: the attacker's side of a test."""

from __future__ import annotations

#: Defines `probe(p)`: a path's content (first MAX bytes), its listing, or the errno it gave.
PROBE_FUNCTION = """
import errno, json, os
def probe(p):
    try:
        if os.path.isdir(p):
            return "DIR:" + ",".join(sorted(os.listdir(p)))
        with open(p, "rb") as f:
            return "READ:" + f.read(MAX).decode(errors="replace")
    except OSError as e:
        return errno.errorcode[e.errno]
"""


def read_probe(max_bytes: int) -> str:
    """Reads each path in $PROBE (a JSON list) and prints {path: what the sandbox saw}."""
    return PROBE_FUNCTION.replace("MAX", str(max_bytes)) + (
        'print(json.dumps({p: probe(p) for p in json.loads(os.environ["PROBE"])}))\n'
    )
