"""Plans and usage: an organization's plan (a preset or a custom plan of its own), the custom
plans, and what each organization used per month. `orgs.max_concurrent` becomes a custom plan.

An organization that had `max_concurrent` set gets a custom plan named `custom` with that
concurrency and every other limit unlimited (as before: nothing else was limited), and is
assigned it; the column is dropped, so the concurrency cap has one home (service/plans.py).
Every other organization keeps `plan` NULL: the installation's default plan
(SANDBOXD_DEFAULT_PLAN, `enterprise` unless set: unlimited, as before).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_orgs = sa.table(
    "orgs", sa.column("id", sa.String), sa.column("max_concurrent", sa.Integer), sa.column("plan", sa.String)
)
_plans = sa.table(
    "plans",
    sa.column("id", sa.String), sa.column("name", sa.String), sa.column("org_id", sa.String),
    sa.column("concurrent", sa.Integer), sa.column("streaming", sa.Boolean),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
#: The name of the custom plan an organization's former `max_concurrent` became.
CUSTOM = "custom"


def upgrade() -> None:
    # Plain ALTERs on orgs: a batch (table copy) would trip the foreign keys that reference it.
    op.add_column("orgs", sa.Column("plan", sa.String(64), nullable=True))
    op.create_table(
        "plans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=True),
        sa.Column("cpus", sa.Float, nullable=True),
        sa.Column("memory_mib", sa.Integer, nullable=True),
        sa.Column("concurrent", sa.Integer, nullable=True),
        sa.Column("timeout_s", sa.Integer, nullable=True),
        sa.Column("api_keys", sa.Integer, nullable=True),
        sa.Column("audit_retention_days", sa.Integer, nullable=True),
        sa.Column("images", sa.Integer, nullable=True),
        sa.Column("streaming", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("org_id", "name", name="uq_plans_org_name"),
    )
    op.create_table(
        "usage",
        sa.Column("org_id", sa.String(32), sa.ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("executions", sa.BigInteger, nullable=False),
        sa.Column("cpu_seconds", sa.Float, nullable=False),
        sa.Column("gib_seconds", sa.Float, nullable=False),
    )
    conn = op.get_bind()
    now = datetime.now(timezone.utc)
    capped = conn.execute(sa.select(_orgs.c.id, _orgs.c.max_concurrent).where(_orgs.c.max_concurrent.is_not(None)))
    for org_id, cap in capped.all():
        conn.execute(_plans.insert().values(
            id=f"pln_{secrets.token_hex(6)}", name=CUSTOM, org_id=org_id, concurrent=cap, streaming=True,
            created_at=now,
        ))
        conn.execute(_orgs.update().where(_orgs.c.id == org_id).values(plan=CUSTOM))
    op.drop_column("orgs", "max_concurrent")


def downgrade() -> None:
    """An organization on a custom plan with a concurrency gets it back as `max_concurrent`;
    plans' other limits and the usage figures are forgotten."""
    op.add_column("orgs", sa.Column("max_concurrent", sa.Integer, nullable=True))
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(_orgs.c.id, _plans.c.concurrent).select_from(
            _orgs.join(_plans, sa.and_(_plans.c.org_id == _orgs.c.id, _plans.c.name == _orgs.c.plan))
        ).where(_plans.c.concurrent.is_not(None))
    )
    for org_id, cap in rows.all():
        conn.execute(_orgs.update().where(_orgs.c.id == org_id).values(max_concurrent=cap))
    op.drop_table("usage")
    op.drop_table("plans")
    op.drop_column("orgs", "plan")
