"""The analytics rollup's metric definitions move into SQL: `tollgate_analytics_day` (migrations/sql/analytics)
answers one day's rows of every metric, and the AnalyticsRollup upserts them into `analytics` instead of carrying
its own queries. Downgrading drops the function (nothing is stored by it).

Revision ID: 0024_analytics_sql
Revises: 0006_jobs
Create Date: 2026-12-12
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0024_analytics_sql"
# `analytics` is 0006_jobs's, so this continues that branch. The function reads users, subscriptions, purchases
# and the ledger, which a SQL function's body needs at creation: a dependency, not a merge (as 0015_outbox).
down_revision: str | Sequence[str] | None = "0006_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = "0005_payments"

SQL_DIR = Path(__file__).resolve().parents[1] / "sql" / "analytics"
FUNCTIONS = ("tollgate_analytics_day.v1",)

DROP_FUNCTIONS = "DROP FUNCTION tollgate_analytics_day(timestamptz, timestamptz);"


def _sql(names: Sequence[str]) -> str:
    return "\n".join((SQL_DIR / f"{name}.sql").read_text(encoding="utf-8") for name in names)


def upgrade() -> None:
    op.execute(_sql(FUNCTIONS))


def downgrade() -> None:
    op.execute(DROP_FUNCTIONS)
