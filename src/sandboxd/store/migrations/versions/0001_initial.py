"""Initial schema: orgs, sandboxes, api_keys, executions.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "orgs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("max_concurrent", sa.Integer, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_table(
        "sandboxes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("cpus", sa.Float, nullable=False),
        sa.Column("memory_mib", sa.Integer, nullable=False),
        sa.Column("network", sa.String(16), nullable=False),
        sa.Column("timeout_cap_s", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.UniqueConstraint("org_id", "name", name="uq_sandboxes_org_name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column(
            "sandbox_id",
            sa.String(32),
            sa.ForeignKey("sandboxes.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("region", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("display_prefix", sa.String(24), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
    )
    op.create_table(
        "executions",
        sa.Column("trace_id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("stdout", sa.Text, nullable=True),
        sa.Column("stderr", sa.Text, nullable=True),
        sa.Column("output_truncated", sa.Boolean, nullable=False),
        sa.Column("error", sa.String(64), nullable=True),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("delivery_mode", sa.String(16), nullable=False),
        sa.Column("client_id", sa.String(128), nullable=True),
        sa.Column("thread_id", sa.String(128), nullable=True),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("completed_at", _TS, nullable=True),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("webhook_url", sa.String(2048), nullable=True),
        sa.Column("webhook_delivery_status", sa.String(16), nullable=True),
    )
    op.create_index("ix_executions_org_created", "executions", ["org_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_executions_org_created", "executions")
    op.drop_table("executions")
    op.drop_table("api_keys")
    op.drop_table("sandboxes")
    op.drop_table("orgs")
