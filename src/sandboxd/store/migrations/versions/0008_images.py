"""Runtime images: an image per sandbox config, the registries' credentials, and which image
an execution ran on and a thread's home was last used with.

Sandbox configs from before have no image: they run on the built-in `host`, as before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id"), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_images_org_name", "images", ["org_id", "name"])
    op.create_table(
        "registry_credentials",
        sa.Column("org_id", sa.String(32), nullable=False, primary_key=True),
        sa.Column("registry", sa.String(255), nullable=False, primary_key=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    # Plain ADD COLUMN (SQLite can): a batch rebuild would drop tables others reference.
    op.add_column("sandboxes", sa.Column("image_id", sa.String(32), nullable=True))
    op.add_column("executions", sa.Column("image_name", sa.String(128), nullable=True))
    op.add_column("executions", sa.Column("image_digest", sa.String(80), nullable=True))
    op.add_column("threads", sa.Column("image_digest", sa.String(80), nullable=True))


def downgrade() -> None:
    """Sandbox configs fall back to the host image; the images stay on disk until deleted by hand."""
    op.drop_column("threads", "image_digest")
    op.drop_column("executions", "image_digest")
    op.drop_column("executions", "image_name")
    op.drop_column("sandboxes", "image_id")
    op.drop_table("registry_credentials")
    op.drop_index("ix_images_org_name", "images")
    op.drop_table("images")
