"""Seed 001's plan-change record: when the user's plan last changed (`users.last_plan_change_at`), beside the
`downgrade_count` that caps downgrades during a trial.

Revision ID: 0018_plan_changes
Revises: 0012_billing_sources
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_plan_changes"
down_revision: str | Sequence[str] | None = "0012_billing_sources"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("last_plan_change_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("users", "last_plan_change_at")
