"""Database growth per execution: stored event rows and bytes for an output flood, and bytes
stored per MiB of program output (ASCII and NUL bytes).

    uv run python bench/bench_storage.py [--runs 10] [--mib 1] [--flood-s 20]

Starts a real `sandboxd serve` on a free 127.0.0.1 port in a temp data dir (SQLite). Each
phase checkpoints the WAL (TRUNCATE) before and after, and reports the delta of the database
plus its WAL on disk:
  flood  one python program writing one byte at a time, flushed, for --flood-s seconds;
         prints the stored event rows of that execution and the bytes it added;
  ascii  --runs executions printing --mib MiB of 'x' each;
  nul    the same with NUL bytes;
and for the last two the bytes stored per MiB of output. The output cap is raised to fit.
Traffic goes to 127.0.0.1 only; the server and its temp dir are removed at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

try:
    import httpx  # noqa: F401
except ImportError:  # pragma: no cover
    sys.exit("bench_storage: httpx is missing; run: uv run --extra dev python bench/bench_storage.py")

from _common import BenchServer, free_port

FLOOD = (
    "import sys, time\nt = time.time()\n"
    "while time.time() - t < {s}:\n    sys.stdout.write('x'); sys.stdout.flush()\n"
)
PRINT = "import sys\nsys.stdout.write({char!r} * {n})\n"


def _disk_bytes(db: Path) -> int:
    """Checkpoint (TRUNCATE) then the size of the database and its WAL."""
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _rows(db: Path, trace_id: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM execution_events WHERE trace_id = ?", (trace_id,)).fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--mib", type=float, default=1.0)
    parser.add_argument("--flood-s", type=float, default=20.0)
    args = parser.parse_args()
    n_bytes = int(args.mib * 1024 * 1024)
    root = Path(tempfile.mkdtemp(prefix="sandboxd-bench-storage-"))
    server = BenchServer(root, free_port(), env={"SANDBOXD_OUTPUT_LIMIT_BYTES": str(n_bytes + 4096)})
    try:
        server.start()
        key = server.create_key()
        db = server.data_dir / "sandboxd.db"
        with server.client(key, timeout_s=args.flood_s + 120) as c:
            before = _disk_bytes(db)
            r = c.post("/v1/sandbox/execute", json={"code": FLOOD.format(s=args.flood_s), "language": "python"})
            r.raise_for_status()
            flood = r.json()
            grown = _disk_bytes(db) - before
            print(f"flood {args.flood_s:.0f} s, byte at a time: {len(flood['stdout'])} bytes of output, "
                  f"{_rows(db, flood['trace_id'])} event rows, database +{grown / 1e6:.2f} MB")
            for name, char in (("ascii", "x"), ("nul", "\0")):
                before = _disk_bytes(db)
                for _ in range(args.runs):
                    r = c.post("/v1/sandbox/execute", json={"code": PRINT.format(char=char, n=n_bytes), "language": "python"})
                    r.raise_for_status()
                    assert len(r.json()["stdout"]) == n_bytes, r.json()["stdout"][:100]
                grown = _disk_bytes(db) - before
                per_mib = grown / (args.runs * n_bytes / (1024 * 1024)) / (1024 * 1024)
                print(f"{name}: {args.runs} runs x {args.mib:g} MiB: database +{grown / 1e6:.2f} MB, "
                      f"{per_mib:.2f} MiB stored per MiB of output")
    finally:
        server.stop()
        server.unmount_leftovers()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
