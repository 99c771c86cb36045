"""Payments: one-time purchases, subscriptions and their history, invoices, payment methods, refunds, the
webhook event store, and the Stripe catalogue mirror (products, prices).

Money is NUMERIC(14, 3) in the currency's major unit (three decimals so that KWD/BHD amounts are exact);
credits are NUMERIC(18, 4) like the ledger's. Provider times are kept as the providers report them.

Revision ID: 0005_payments
Revises: 0002_ledger
Create Date: 2026-11-24
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_payments"
down_revision: str | Sequence[str] | None = "0002_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CREDITS = sa.Numeric(18, 4)
MONEY = sa.Numeric(14, 3)
UUID = postgresql.UUID(as_uuid=True)
JSONB = postgresql.JSONB()
PROVIDERS = "provider IN ('stripe', 'lemonsqueezy')"


def _ts(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True))
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def _user_fk(table: str, *, nullable: bool = False) -> list[Any]:
    return [
        sa.Column("user_id", UUID, nullable=nullable),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f(f"fk_{table}_user_id_users")),
    ]


def upgrade() -> None:
    op.create_table(
        "webhook_events",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("livemode", sa.Boolean()),
        sa.Column("payload", JSONB),  # cleared by the retention job after its period
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("error", sa.Text()),
        sa.Column("outcome", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("received_at"),
        _ts("processed_at", nullable=True),
        _ts("provider_created_at", nullable=True),
        sa.CheckConstraint("provider IN ('stripe', 'lemonsqueezy', 'clerk')", name=op.f("ck_webhook_events_provider")),
        sa.CheckConstraint(
            "status IN ('processing', 'processed', 'ignored', 'rejected', 'failed')",
            name=op.f("ck_webhook_events_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sa.UniqueConstraint("provider", "event_id", name=op.f("uq_webhook_events_provider")),
    )
    op.create_index("ix_webhook_events_status", "webhook_events", ["status", "received_at"])
    op.create_index("ix_webhook_events_event_id", "webhook_events", ["event_id"])

    op.create_table(
        "products",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False, server_default="stripe"),
        sa.Column("provider_product_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("livemode", sa.Boolean()),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("provider_updated_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_products_provider")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
        sa.UniqueConstraint("provider", "provider_product_id", name=op.f("uq_products_provider")),
    )
    op.create_table(
        "prices",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False, server_default="stripe"),
        sa.Column("provider_price_id", sa.String(255), nullable=False),
        sa.Column("provider_product_id", sa.String(255)),
        sa.Column("product_id", UUID),
        sa.Column("type", sa.String(16)),  # one_time | recurring
        sa.Column("unit_amount", MONEY),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("interval", sa.String(16)),
        sa.Column("interval_count", sa.Integer()),
        sa.Column("nickname", sa.String(255)),
        sa.Column("lookup_key", sa.String(255)),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("livemode", sa.Boolean()),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("provider_updated_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_prices_provider")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_prices_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prices")),
        sa.UniqueConstraint("provider", "provider_price_id", name=op.f("uq_prices_provider")),
    )

    op.create_table(
        "purchases",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_order_id", sa.String(255), nullable=False),  # Stripe checkout session, LS order
        sa.Column("provider_payment_id", sa.String(255)),  # Stripe payment intent
        sa.Column("provider_charge_id", sa.String(255)),
        sa.Column("provider_customer_id", sa.String(255)),
        *_user_fk("purchases"),
        sa.Column("item_kind", sa.String(16), nullable=False, server_default="pack"),
        sa.Column("item_id", UUID),
        sa.Column("package_name", sa.String(255)),
        sa.Column("credits", CREDITS, nullable=False),
        sa.Column("amount", MONEY, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("disputed_amount", MONEY, nullable=False, server_default="0"),
        # Credits asked back so far (refunds + lost disputes) and what the ledger could actually take.
        sa.Column("credits_reversed", CREDITS, nullable=False, server_default="0"),
        sa.Column("credits_clawed_back", CREDITS, nullable=False, server_default="0"),
        sa.Column("grant_source_key", sa.String(255)),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("livemode", sa.Boolean()),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("paid_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_purchases_provider")),
        sa.CheckConstraint(
            "status IN ('pending', 'completed', 'partially_refunded', 'refunded', 'expired', 'failed')",
            name=op.f("ck_purchases_status"),
        ),
        sa.CheckConstraint("credits > 0 AND amount >= 0", name=op.f("ck_purchases_amounts")),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refunded_amount <= amount AND disputed_amount >= 0",
            name=op.f("ck_purchases_refunded"),
        ),
        sa.CheckConstraint(
            "credits_clawed_back >= 0 AND credits_clawed_back <= credits_reversed AND credits_reversed <= credits",
            name=op.f("ck_purchases_reversed"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_purchases")),
        sa.UniqueConstraint("provider", "provider_order_id", name=op.f("uq_purchases_provider")),
    )
    op.create_index("ix_purchases_user_id", "purchases", ["user_id", "created_at", "id"])
    op.execute(
        "CREATE INDEX ix_purchases_payment ON purchases (provider, provider_payment_id) "
        "WHERE provider_payment_id IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX ix_purchases_charge ON purchases (provider, provider_charge_id) "
        "WHERE provider_charge_id IS NOT NULL"
    )

    op.create_table(
        "subscriptions",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_subscription_id", sa.String(255), nullable=False),
        sa.Column("provider_customer_id", sa.String(255)),
        *_user_fk("subscriptions"),
        sa.Column("plan_id", UUID),
        sa.Column("tier", sa.String(32)),
        sa.Column("provider_product_id", sa.String(255)),
        sa.Column("provider_price_id", sa.String(255)),  # Stripe price / Lemon Squeezy variant
        sa.Column("previous_price_id", sa.String(255)),
        sa.Column("plan_history", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("interval", sa.String(16)),
        sa.Column("status", sa.String(32), nullable=False),  # the provider's own status
        _ts("current_period_start", nullable=True),
        _ts("current_period_end", nullable=True),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False, server_default=sa.false()),
        _ts("canceled_at", nullable=True),
        _ts("ended_at", nullable=True),
        _ts("trial_start", nullable=True),
        _ts("trial_end", nullable=True),
        sa.Column("quantity", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("unit_amount", MONEY),
        sa.Column("currency", sa.String(3)),
        sa.Column("livemode", sa.Boolean()),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        # The provider time of the last change applied: older events never move the row backwards.
        _ts("provider_updated_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_subscriptions_provider")),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_subscriptions_quantity")),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_subscriptions_plan_id_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("provider", "provider_subscription_id", name=op.f("uq_subscriptions_provider")),
    )
    op.create_index("ix_subscriptions_user_id", "subscriptions", ["user_id", "created_at"])

    op.create_table(
        "subscription_events",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("subscription_id", UUID, nullable=False),
        *_user_fk("subscription_events", nullable=True),
        sa.Column("webhook_event_id", UUID),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("from_status", sa.String(32)),
        sa.Column("to_status", sa.String(32)),
        sa.Column("from_price_id", sa.String(255)),
        sa.Column("to_price_id", sa.String(255)),
        sa.Column("applied", sa.Boolean(), nullable=False),  # false: older than what the row already shows
        _ts("provider_time", nullable=True),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        _ts("created_at"),
        sa.ForeignKeyConstraint(
            ["subscription_id"], ["subscriptions.id"], name=op.f("fk_subscription_events_subscription_id_subscriptions")
        ),
        sa.ForeignKeyConstraint(
            ["webhook_event_id"],
            ["webhook_events.id"],
            name=op.f("fk_subscription_events_webhook_event_id_webhook_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_events")),
    )
    op.create_index("ix_subscription_events_subscription_id", "subscription_events", ["subscription_id", "created_at"])

    op.create_table(
        "invoices",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_invoice_id", sa.String(255), nullable=False),
        sa.Column("provider_subscription_id", sa.String(255)),
        sa.Column("provider_charge_id", sa.String(255)),
        sa.Column("provider_customer_id", sa.String(255)),
        *_user_fk("invoices", nullable=True),
        sa.Column("subscription_id", UUID),
        sa.Column("plan_id", UUID),
        sa.Column("number", sa.String(64)),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("billing_reason", sa.String(64)),
        sa.Column("amount_due", MONEY, nullable=False, server_default="0"),
        sa.Column("amount_paid", MONEY, nullable=False, server_default="0"),
        sa.Column("currency", sa.String(3), nullable=False),
        _ts("period_start", nullable=True),
        _ts("period_end", nullable=True),
        sa.Column("hosted_invoice_url", sa.Text()),
        sa.Column("invoice_pdf", sa.Text()),
        sa.Column("credits_granted", CREDITS, nullable=False, server_default="0"),
        sa.Column("grant_source_key", sa.String(255)),
        sa.Column("refunded_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("credits_reversed", CREDITS, nullable=False, server_default="0"),
        sa.Column("credits_clawed_back", CREDITS, nullable=False, server_default="0"),
        sa.Column("attempt_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("livemode", sa.Boolean()),
        _ts("paid_at", nullable=True),
        _ts("provider_updated_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_invoices_provider")),
        sa.CheckConstraint(
            "status IN ('draft', 'open', 'paid', 'payment_failed', 'uncollectible', 'void', 'refunded', "
            "'partially_refunded')",
            name=op.f("ck_invoices_status"),
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"], ["subscriptions.id"], name=op.f("fk_invoices_subscription_id_subscriptions")
        ),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_invoices_plan_id_plans")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invoices")),
        sa.UniqueConstraint("provider", "provider_invoice_id", name=op.f("uq_invoices_provider")),
    )
    op.create_index("ix_invoices_user_id", "invoices", ["user_id", "created_at", "id"])
    op.execute(
        "CREATE INDEX ix_invoices_charge ON invoices (provider, provider_charge_id) WHERE provider_charge_id IS NOT NULL"
    )

    op.create_table(
        "payment_methods",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("provider_payment_method_id", sa.String(255), nullable=False),
        sa.Column("provider_customer_id", sa.String(255)),
        *_user_fk("payment_methods", nullable=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("brand", sa.String(32)),
        sa.Column("last4", sa.String(4)),
        sa.Column("exp_month", sa.SmallInteger()),
        sa.Column("exp_year", sa.SmallInteger()),
        sa.Column("detached", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("livemode", sa.Boolean()),
        _ts("created_at"),
        _ts("updated_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_payment_methods_provider")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_methods")),
        sa.UniqueConstraint("provider", "provider_payment_method_id", name=op.f("uq_payment_methods_provider")),
    )
    op.create_index("ix_payment_methods_user_id", "payment_methods", ["user_id"])

    op.create_table(
        "refunds",
        sa.Column("id", UUID, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        # One row per refund step: the provider's refund/dispute id, or "<charge>:<cumulative amount>".
        sa.Column("provider_refund_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # refund | chargeback
        *_user_fk("refunds", nullable=True),
        sa.Column("purchase_id", UUID),
        sa.Column("invoice_id", UUID),
        sa.Column("amount", MONEY, nullable=False),  # money of this step
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("credits_requested", CREDITS, nullable=False, server_default="0"),
        sa.Column("credits_clawed_back", CREDITS, nullable=False, server_default="0"),
        # Credits already spent that could not be taken back (policy: never drive a balance negative).
        sa.Column("credits_shortfall", CREDITS, nullable=False, server_default="0"),
        sa.Column("reason", sa.String(255)),
        sa.Column("ledger_transaction_id", UUID),
        _ts("created_at"),
        sa.CheckConstraint(PROVIDERS, name=op.f("ck_refunds_provider")),
        sa.CheckConstraint("kind IN ('refund', 'chargeback')", name=op.f("ck_refunds_kind")),
        sa.CheckConstraint(
            "credits_clawed_back + credits_shortfall = credits_requested", name=op.f("ck_refunds_credits")
        ),
        sa.ForeignKeyConstraint(["purchase_id"], ["purchases.id"], name=op.f("fk_refunds_purchase_id_purchases")),
        sa.ForeignKeyConstraint(["invoice_id"], ["invoices.id"], name=op.f("fk_refunds_invoice_id_invoices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("provider", "provider_refund_id", name=op.f("uq_refunds_provider")),
    )
    op.create_index("ix_refunds_purchase_id", "refunds", ["purchase_id"])


def downgrade() -> None:
    op.drop_table("refunds")
    op.drop_table("payment_methods")
    op.drop_table("invoices")
    op.drop_table("subscription_events")
    op.drop_table("subscriptions")
    op.drop_table("purchases")
    op.drop_table("prices")
    op.drop_table("products")
    op.drop_table("webhook_events")
