"""Storage connections: an organization's buckets, the keys bound to them (with a prefix of
their own), and what an execution mounted.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "storage_connections",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("bucket", sa.String(255), nullable=False),
        sa.Column("endpoint", sa.String(1024), nullable=True),
        sa.Column("region", sa.String(64), nullable=True),
        sa.Column("prefix", sa.String(1024), nullable=False),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("org_id", "name", name="uq_storage_connections_org_name"),
    )
    op.create_table(
        "key_storage",
        sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("connection_id", sa.String(32), sa.ForeignKey("storage_connections.id"), primary_key=True),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("prefix", sa.String(1024), nullable=False),
    )
    # Plain ADD COLUMN (SQLite can): a batch rebuild would drop tables others reference.
    op.add_column("executions", sa.Column("storage", sa.JSON, nullable=True))


def downgrade() -> None:
    """The connections and their bindings are dropped: keys bound to them run without them."""
    op.drop_column("executions", "storage")
    op.drop_table("key_storage")
    op.drop_table("storage_connections")
