"""Persistent sessions: a sandbox config's session mode, what each thread's sessions became, and
an execution's result extras (session, rich outputs, artifacts, notes).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("session", sa.String(16), nullable=False, server_default="stateless"))
    op.add_column("executions", sa.Column("extras", sa.JSON, nullable=True))
    op.create_table(
        "thread_sessions",
        sa.Column("org_id", sa.String(32), nullable=False),
        sa.Column("thread_id", sa.String(128), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("reason", sa.String(16), nullable=True),
        sa.Column("token", sa.String(32), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("org_id", "thread_id", "language"),
    )


def downgrade() -> None:
    """Sessions are forgotten: every persistent config runs stateless."""
    op.drop_table("thread_sessions")
    op.drop_column("executions", "extras")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("session")
