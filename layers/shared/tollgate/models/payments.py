"""Payments (migration 0005_payments): purchases, subscriptions and their history, invoices, payment methods,
refunds, the webhook event store and the Stripe catalogue mirror.

Money is NUMERIC(14, 3) in the currency's major unit; credits NUMERIC(18, 4) like the ledger's.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

MONEY = Numeric(14, 3)
CREDITS = Numeric(18, 4)
PROVIDERS = "provider IN ('stripe', 'lemonsqueezy', 'clerk', 'asaas', 'manual')"


def _json_object() -> Any:
    return mapped_column(JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb"))


def _user(nullable: bool = True) -> Any:
    return mapped_column(Uuid, ForeignKey("users.id"), nullable=nullable)


class WebhookEvent(Base):
    __tablename__ = "webhook_events"
    __table_args__ = (
        UniqueConstraint("provider", "event_id"),
        Index("ix_webhook_events_status", "status", "received_at"),
        Index("ix_webhook_events_event_id", "event_id"),
        # Early reversals (a refund stored before its purchase) are looked up among the ignored events only.
        Index("ix_webhook_events_ignored", "provider", "type", postgresql_where=text("status = 'ignored'")),
        CheckConstraint("provider IN ('stripe', 'lemonsqueezy', 'clerk', 'asaas')", name="provider"),
        CheckConstraint("status IN ('processing', 'processed', 'ignored', 'rejected', 'failed')", name="status"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(128))
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[dict[str, Any]] = _json_object()
    received_at: Mapped[CreatedAt]
    processed_at: Mapped[datetime | None]
    provider_created_at: Mapped[datetime | None]


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("provider", "provider_product_id"), CheckConstraint(PROVIDERS, name="provider"))

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16), default="stripe", server_default="stripe")
    provider_product_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    provider_updated_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Price(Base):
    __tablename__ = "prices"
    __table_args__ = (UniqueConstraint("provider", "provider_price_id"), CheckConstraint(PROVIDERS, name="provider"))

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16), default="stripe", server_default="stripe")
    provider_price_id: Mapped[str] = mapped_column(String(255))
    provider_product_id: Mapped[str | None] = mapped_column(String(255))
    product_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("products.id"))
    type: Mapped[str | None] = mapped_column(String(16))
    unit_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str | None] = mapped_column(String(16))
    interval_count: Mapped[int | None] = mapped_column(Integer)
    nickname: Mapped[str | None] = mapped_column(String(255))
    lookup_key: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    provider_updated_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Purchase(Base):
    """A one-time order (a credit pack) paid through Stripe Checkout or a Lemon Squeezy order."""

    __tablename__ = "purchases"
    __table_args__ = (
        UniqueConstraint("provider", "provider_order_id"),
        Index("ix_purchases_user_id", "user_id", "created_at", "id"),
        Index(
            "ix_purchases_payment",
            "provider",
            "provider_payment_id",
            postgresql_where=text("provider_payment_id IS NOT NULL"),
        ),
        Index(
            "ix_purchases_charge",
            "provider",
            "provider_charge_id",
            postgresql_where=text("provider_charge_id IS NOT NULL"),
        ),
        CheckConstraint(PROVIDERS, name="provider"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    provider_order_id: Mapped[str] = mapped_column(String(255))
    provider_payment_id: Mapped[str | None] = mapped_column(String(255))
    provider_charge_id: Mapped[str | None] = mapped_column(String(255))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[uuid.UUID] = _user(nullable=False)
    item_kind: Mapped[str] = mapped_column(String(16), default="pack", server_default="pack")
    item_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    package_name: Mapped[str | None] = mapped_column(String(255))
    credits: Mapped[Decimal] = mapped_column(CREDITS)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))
    refunded_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    disputed_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    credits_reversed: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    credits_clawed_back: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    grant_source_key: Mapped[str | None] = mapped_column(String(255))
    expires_at: Mapped[datetime | None]
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    paid_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("provider", "provider_subscription_id"),
        Index("ix_subscriptions_user_id", "user_id", "created_at"),
        CheckConstraint(PROVIDERS, name="provider"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    provider_subscription_id: Mapped[str] = mapped_column(String(255))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[uuid.UUID] = _user(nullable=False)
    plan_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("plans.id"))
    tier: Mapped[str | None] = mapped_column(String(32))
    provider_product_id: Mapped[str | None] = mapped_column(String(255))
    provider_price_id: Mapped[str | None] = mapped_column(String(255))
    previous_price_id: Mapped[str | None] = mapped_column(String(255))
    plan_history: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, default=list, server_default=text("'[]'::jsonb")
    )
    interval: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(32))
    current_period_start: Mapped[datetime | None]
    current_period_end: Mapped[datetime | None]
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    canceled_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    trial_start: Mapped[datetime | None]
    trial_end: Mapped[datetime | None]
    quantity: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    unit_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    currency: Mapped[str | None] = mapped_column(String(3))
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    provider_updated_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class SubscriptionEvent(Base):
    __tablename__ = "subscription_events"
    __table_args__ = (Index("ix_subscription_events_subscription_id", "subscription_id", "created_at"),)

    id: Mapped[UUIDPk]
    subscription_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("subscriptions.id"))
    user_id: Mapped[uuid.UUID | None] = _user()
    webhook_event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("webhook_events.id"))
    type: Mapped[str] = mapped_column(String(64))
    from_status: Mapped[str | None] = mapped_column(String(32))
    to_status: Mapped[str | None] = mapped_column(String(32))
    from_price_id: Mapped[str | None] = mapped_column(String(255))
    to_price_id: Mapped[str | None] = mapped_column(String(255))
    applied: Mapped[bool] = mapped_column(Boolean)
    provider_time: Mapped[datetime | None]
    details: Mapped[dict[str, Any]] = _json_object()
    created_at: Mapped[CreatedAt]


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("provider", "provider_invoice_id"),
        Index("ix_invoices_user_id", "user_id", "created_at", "id"),
        Index(
            "ix_invoices_charge",
            "provider",
            "provider_charge_id",
            postgresql_where=text("provider_charge_id IS NOT NULL"),
        ),
        Index(
            "ix_invoices_payment_intent",
            "provider",
            "provider_payment_intent_id",
            postgresql_where=text("provider_payment_intent_id IS NOT NULL"),
        ),
        CheckConstraint(PROVIDERS, name="provider"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    provider_invoice_id: Mapped[str] = mapped_column(String(255))
    provider_subscription_id: Mapped[str | None] = mapped_column(String(255))
    provider_charge_id: Mapped[str | None] = mapped_column(String(255))
    # Stripe's current API links an invoice to its payment only through the payment intent (invoice_payment).
    provider_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[uuid.UUID | None] = _user()
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("subscriptions.id"))
    plan_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("plans.id"))
    number: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(24))
    billing_reason: Mapped[str | None] = mapped_column(String(64))
    amount_due: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    amount_paid: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    currency: Mapped[str] = mapped_column(String(3))
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    invoice_pdf: Mapped[str | None] = mapped_column(Text)
    credits_granted: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    grant_source_key: Mapped[str | None] = mapped_column(String(255))
    refunded_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    credits_reversed: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    credits_clawed_back: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    attempt_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    paid_at: Mapped[datetime | None]
    provider_updated_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class PaymentMethod(Base):
    __tablename__ = "payment_methods"
    __table_args__ = (
        UniqueConstraint("provider", "provider_payment_method_id"),
        Index("ix_payment_methods_user_id", "user_id"),
        CheckConstraint(PROVIDERS, name="provider"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    provider_payment_method_id: Mapped[str] = mapped_column(String(255))
    provider_customer_id: Mapped[str | None] = mapped_column(String(255))
    user_id: Mapped[uuid.UUID | None] = _user()
    type: Mapped[str] = mapped_column(String(32))
    brand: Mapped[str | None] = mapped_column(String(32))
    last4: Mapped[str | None] = mapped_column(String(4))
    exp_month: Mapped[int | None] = mapped_column(SmallInteger)
    exp_year: Mapped[int | None] = mapped_column(SmallInteger)
    detached: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Refund(Base):
    __tablename__ = "refunds"
    __table_args__ = (
        UniqueConstraint("provider", "provider_refund_id"),
        Index("ix_refunds_purchase_id", "purchase_id"),
        CheckConstraint(PROVIDERS, name="provider"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    provider_refund_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[uuid.UUID | None] = _user()
    purchase_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("purchases.id"))
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("invoices.id"))
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    credits_requested: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    credits_clawed_back: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    credits_shortfall: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    reason: Mapped[str | None] = mapped_column(String(255))
    ledger_transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[CreatedAt]


class AsaasCheckoutClaim(Base):
    """An Asaas checkout with an Idempotency-Key, claimed (committed) before Asaas is called: a concurrent
    duplicate sees the claim instead of creating a second charge (migration 0017_asaas_checkout_claims)."""

    __tablename__ = "asaas_checkout_claims"
    __table_args__ = (Index("ix_asaas_checkout_claims_user_id", "user_id"),)

    id: Mapped[UUIDPk]
    reference: Mapped[str] = mapped_column(String(128), unique=True)  # the charge's externalReference
    user_id: Mapped[uuid.UUID] = _user(nullable=False)
    session_id: Mapped[str | None] = mapped_column(String(64))  # set once Asaas answered
    url: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime]
    created_at: Mapped[CreatedAt]
