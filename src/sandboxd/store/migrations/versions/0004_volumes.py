"""Volumes, key-to-volume bindings, and a host group per organization.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ORG_GID_BASE = 2_000_000


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite can): a batch rebuild would drop `orgs`, which others reference.
    op.add_column("orgs", sa.Column("gid", sa.Integer, nullable=True))
    op.create_index("ix_orgs_gid", "orgs", ["gid"], unique=True)
    conn = op.get_bind()
    ids = [r[0] for r in conn.execute(sa.text("SELECT id FROM orgs ORDER BY created_at, id"))]
    for n, org_id in enumerate(ids, start=1):
        conn.execute(sa.text("UPDATE orgs SET gid = :gid WHERE id = :id"), {"gid": ORG_GID_BASE + n, "id": org_id})
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("quota_mib", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("org_id", "slug", name="uq_volumes_org_slug"),
    )
    op.create_table(
        "key_volumes",
        sa.Column("key_id", sa.String(32), sa.ForeignKey("api_keys.id"), primary_key=True),
        sa.Column(
            "volume_id", sa.String(32), sa.ForeignKey("volumes.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("read_only", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("key_volumes")
    op.drop_table("volumes")
    op.drop_index("ix_orgs_gid", "orgs")
    op.drop_column("orgs", "gid")
