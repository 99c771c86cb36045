"""Invoices remember the payment intent that paid them: Stripe's current API no longer puts `invoice.charge` on
an invoice nor `charge.invoice` on a charge, so a refund of a subscription invoice finds its invoice through the
payment intent that `invoice_payment.paid` (or an older invoice's `payment_intent`) names.

Revision ID: 0011_invoice_payment_intent
Revises: 0010_webhook_early_reversals
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_invoice_payment_intent"
down_revision: str | Sequence[str] | None = "0010_webhook_early_reversals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("provider_payment_intent_id", sa.String(255)))
    op.execute(
        "CREATE INDEX ix_invoices_payment_intent ON invoices (provider, provider_payment_intent_id) "
        "WHERE provider_payment_intent_id IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_invoices_payment_intent")
    op.drop_column("invoices", "provider_payment_intent_id")
