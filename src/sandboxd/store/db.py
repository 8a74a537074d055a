"""Engine creation (SQLite WAL by default, PostgreSQL by URL) and migrations on start.

Every process that opens the store migrates it (`migrate`), the CLI's one-shot commands
included. Alembic is imported only when the schema is behind: importing it and loading the
migration scripts costs about as much as the rest of a CLI command, and a database at the
newest revision, the usual case, needs neither (`head_revisions` reads the newest revision
from the scripts' text).
"""

from __future__ import annotations

import ast
import functools
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, event, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # After a checkpoint the WAL is cut back to this size; without it, it stays as large
            # as its largest burst (930 MB seen) until the server stops.
            cur.execute("PRAGMA journal_size_limit=67108864")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; nothing of Alembic's is loaded when
    the schema is there already)."""
    async with engine.connect() as conn:
        if await conn.run_sync(_revisions) == head_revisions():
            return
    from alembic import command

    # Behind, new, or changing under us (another process migrating: Alembic's transaction waits
    # for that one and then finds the schema at head).
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(alembic_config(sync_conn), "head"))


def _revisions(connection: Connection) -> frozenset[str]:
    """The revisions stamped in the database; none in a new one."""
    if not inspect(connection).has_table("alembic_version"):
        return frozenset()
    return frozenset(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())


@functools.cache
def head_revisions() -> frozenset[str]:
    """The revisions of migrations/versions that no other revises: what `upgrade head` reaches."""
    return read_heads(_MIGRATIONS / "versions")


def read_heads(versions: Path) -> frozenset[str]:
    """Head revisions of the scripts in `versions`, from their `revision = ...` and
    `down_revision = ...` assignments, read with `ast` (nothing is imported).
    tests/unit/test_lazy_imports.py checks it against Alembic's own reading."""
    revisions: set[str] = set()
    revised: set[str] = set()
    for path in versions.glob("*.py"):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:  # revision: str = ...
                target, value = node.target, node.value
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            if target.id == "revision":
                revisions.add(ast.literal_eval(value))
            elif target.id == "down_revision":
                down = ast.literal_eval(value)  # None, a revision, or a merge's tuple of them
                revised.update(() if down is None else (down,) if isinstance(down, str) else down)
    return frozenset(revisions - revised)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)
