"""Network policy: a sandbox's allowlist, and each execution's network decisions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sandboxes", sa.Column("network_allow", sa.JSON, nullable=True))
    op.add_column("executions", sa.Column("network_log", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("executions", "network_log")
    op.drop_column("sandboxes", "network_allow")
