"""The audit log: per-organization hash chains of execution, admin and files rows; each chain's
head (its last row and what retention pruned); whether an organization's rows keep the code.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ALTER: a batch (table copy) of orgs would trip the foreign keys that reference it.
    op.add_column("orgs", sa.Column("audit_code", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "audit_log",
        # The chain: the organization's id, "" for the installation's own rows (org creation).
        sa.Column("org_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(64), nullable=False),
        sa.Column("actor_name", sa.String(254), nullable=False),
        sa.Column("ip", sa.String(64), nullable=True),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("trace_id", sa.String(32), nullable=True),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_org_at", "audit_log", ["org_id", "at"])
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_trace_id", "audit_log", ["trace_id"])
    op.create_index("ix_audit_log_key_id", "audit_log", ["key_id", "at"])
    op.create_table(
        "audit_heads",
        sa.Column("org_id", sa.String(32), primary_key=True),
        # The last row appended (0 and "" before the first).
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        # The last row retention deleted (0 and "": none): the chain's first kept row follows it.
        sa.Column("pruned_seq", sa.BigInteger(), nullable=False),
        sa.Column("pruned_hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    """The audit log is forgotten."""
    op.drop_table("audit_heads")
    op.drop_index("ix_audit_log_key_id", "audit_log")
    op.drop_index("ix_audit_log_trace_id", "audit_log")
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_index("ix_audit_log_org_at", "audit_log")
    op.drop_table("audit_log")
    op.drop_column("orgs", "audit_code")
