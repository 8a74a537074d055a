"""Several servers on one database: the node an execution ran on (start-up recovery takes only
its own node's), and a lease on a webhook delivery (one server attempts it at a time).

Rows from before have no node: whichever node starts first recovers them, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (SQLite can): a batch rebuild would drop `executions`, which others reference.
    op.add_column("executions", sa.Column("node_id", sa.String(64), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("claimed_by", sa.String(64), nullable=True))
    op.add_column("webhook_deliveries", sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    """Nothing is lost: a server of the older schema recovers every node's executions and
    attempts deliveries without claims, as it always did."""
    op.drop_column("webhook_deliveries", "claim_expires_at")
    op.drop_column("webhook_deliveries", "claimed_by")
    op.drop_column("executions", "node_id")
