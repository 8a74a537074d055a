"""Execution event log, webhook signing secrets and deliveries.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("webhook_attempts", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "execution_events",
        sa.Column(
            "trace_id",
            sa.String(32),
            sa.ForeignKey("executions.trace_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_table(
        "webhook_secrets",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "trace_id", sa.String(32), sa.ForeignKey("executions.trace_id"), nullable=False, unique=True
        ),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("last_error", sa.String(512), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_status", "webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_secrets")
    op.drop_table("execution_events")
    with op.batch_alter_table("executions") as batch:
        batch.drop_column("webhook_attempts")
