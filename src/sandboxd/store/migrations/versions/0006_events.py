"""Event logs stored as they happen, output stored once: raw output in execution_events,
executions' stdout/stderr rebuilt from it; an index for the retention sweep.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("execution_events") as batch:
        batch.add_column(sa.Column("stream", sa.String(8), nullable=True))
        batch.add_column(sa.Column("data", sa.LargeBinary, nullable=True))
        batch.alter_column("body", existing_type=sa.JSON, nullable=True)
    op.add_column(
        "executions", sa.Column("output_in_events", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.create_index("ix_executions_created", "executions", ["created_at"])


def downgrade() -> None:
    """Refused once an execution's output is stored the new way: the old schema has nowhere to
    keep it, so downgrading would lose it (restore the backup taken before the upgrade)."""
    bind = op.get_bind()
    new_way = bind.execute(sa.text(
        "SELECT 1 FROM executions WHERE output_in_events"
        " UNION ALL SELECT 1 FROM execution_events WHERE data IS NOT NULL OR body IS NULL LIMIT 1"
    )).first()
    if new_way is not None:
        raise RuntimeError(
            "cannot downgrade below 0006: executions' output is stored in their output events "
            "(execution_events.data, executions.output_in_events), which the older schema cannot "
            "hold; restore the database backup taken before the upgrade instead"
        )
    op.drop_index("ix_executions_created", "executions")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("output_in_events")
    with op.batch_alter_table("execution_events") as batch:
        batch.drop_column("data")
        batch.drop_column("stream")
