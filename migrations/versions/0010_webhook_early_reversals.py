"""An index for early reversals: a Stripe refund or lost dispute stored `ignored` because it arrived before its
purchase or invoice is looked up, when that grant lands, among the ignored events only.

Revision ID: 0010_webhook_early_reversals
Revises: 0009_ledger_defaults
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010_webhook_early_reversals"
down_revision: str | Sequence[str] | None = "0009_ledger_defaults"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_webhook_events_ignored ON webhook_events (provider, type) WHERE status = 'ignored'")


def downgrade() -> None:
    op.execute("DROP INDEX ix_webhook_events_ignored")
