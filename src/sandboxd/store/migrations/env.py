"""Alembic environment: always run with a connection handed in by `store.db.migrate`."""

from __future__ import annotations

from alembic import context

from sandboxd.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through sandboxd (sandboxd.store.db.migrate)")

sqlite = connection.dialect.name == "sqlite"
if sqlite:
    # The sqlite3 driver opens a transaction only at the first INSERT/UPDATE/DELETE, so DDL before
    # it would commit at once: a migration that fails half way (a refused downgrade below later
    # ones) would leave its columns dropped under the old version stamp. Begin it ourselves, so
    # that every step commits or rolls back together, as on PostgreSQL. IMMEDIATE: a second
    # process migrating at once (a CLI command beside a starting server) waits, then finds head.
    connection.exec_driver_sql("BEGIN IMMEDIATE")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=sqlite,
)
with context.begin_transaction():
    context.run_migrations()
