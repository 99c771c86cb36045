"""Every billing source a plan may name can own payment rows: Clerk Billing and Asaas events, and plans an admin
assigns by hand (`manual`), keep subscriptions, invoices, purchases and refunds like Stripe's and Lemon Squeezy's.
Asaas customers are remembered on the user as the other providers' are.

Revision ID: 0012_billing_sources
Revises: 0011_invoice_payment_intent
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_billing_sources"
down_revision: str | Sequence[str] | None = "0011_invoice_payment_intent"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD = "provider IN ('stripe', 'lemonsqueezy')"
NEW = "provider IN ('stripe', 'lemonsqueezy', 'clerk', 'asaas', 'manual')"
OLD_EVENTS = "provider IN ('stripe', 'lemonsqueezy', 'clerk')"
NEW_EVENTS = "provider IN ('stripe', 'lemonsqueezy', 'clerk', 'asaas')"
TABLES = ("products", "prices", "purchases", "subscriptions", "invoices", "payment_methods", "refunds")


def _replace_check(table: str, condition: str) -> None:
    name = f"ck_{table}_provider"
    op.drop_constraint(op.f(name), table, type_="check")
    op.create_check_constraint(op.f(name), table, condition)


def upgrade() -> None:
    for table in TABLES:
        _replace_check(table, NEW)
    _replace_check("webhook_events", NEW_EVENTS)
    op.add_column("users", sa.Column("asaas_customer_id", sa.String(64)))
    op.create_unique_constraint(op.f("uq_users_asaas_customer_id"), "users", ["asaas_customer_id"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_users_asaas_customer_id"), "users", type_="unique")
    op.drop_column("users", "asaas_customer_id")
    _replace_check("webhook_events", OLD_EVENTS)
    for table in TABLES:
        _replace_check(table, OLD)
