"""Connectors: an organization's credentials (env, database, brokered HTTP), the keys bound to
them, and which ones an execution was given.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "connectors",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("org_id", "name", name="uq_connectors_org_name"),
    )
    op.create_table(
        "key_connectors",
        sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column("connector_id", sa.String(32), sa.ForeignKey("connectors.id"), primary_key=True),
    )
    op.add_column("executions", sa.Column("connectors", sa.JSON, nullable=True))


def downgrade() -> None:
    """The connectors and their bindings are dropped: keys bound to them run without them."""
    op.drop_column("executions", "connectors")
    op.drop_table("key_connectors")
    op.drop_table("connectors")
