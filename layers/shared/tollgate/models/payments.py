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
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

MONEY = Numeric(14, 3)
CREDITS = Numeric(18, 4)
PROVIDERS = "provider IN ('stripe', 'lemonsqueezy', 'clerk', 'asaas', 'manual')"


PRODUCT_STATUSES = ("DRAFT", "PUBLISHED", "ARCHIVED", "DELETED")
PRODUCT_TYPES = ("ONE_TIME", "SUBSCRIPTION", "DIGITAL_DOWNLOAD", "SERVICE")
REFUND_STATUSES = ("PENDING", "SUCCEEDED", "FAILED", "CANCELED")


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


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
    """A product: seed 004's catalogue entry (made in Tollgate, synchronised to Stripe when published) or a mirror
    of a product made in Stripe (`product.*` webhooks; no slug). Extended by 0019_commerce."""

    __tablename__ = "products"
    __table_args__ = (
        UniqueConstraint("provider", "provider_product_id"),
        CheckConstraint(PROVIDERS, name="provider"),
        CheckConstraint(f"status IN ({_sql_list(PRODUCT_STATUSES)})", name="status"),
        CheckConstraint(f"type IN ({_sql_list(PRODUCT_TYPES)})", name="type"),
        CheckConstraint("base_price >= 0", name="base_price"),
        CheckConstraint("tax_rate IS NULL OR (tax_rate >= 0 AND tax_rate < 1)", name="tax_rate"),
        CheckConstraint("download_limit IS NULL OR download_limit >= -1", name="download_limit"),
        CheckConstraint("access_days IS NULL OR access_days > 0", name="access_days"),
        CheckConstraint("trial_days IS NULL OR trial_days >= 0", name="trial_days"),
        # Stock never goes below zero, whatever races: reservations decrement it under this rule.
        CheckConstraint("stock_quantity >= 0", name="stock_quantity"),
        Index("uq_products_slug", "slug", unique=True, postgresql_where=text("slug IS NOT NULL")),
        Index("ix_products_published", "status", "featured", "id", postgresql_where=text("status = 'PUBLISHED'")),
        Index("ix_products_tags", "tags", postgresql_using="gin"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16), default="stripe", server_default="stripe")
    # NULL until the product is first published (and so created in Stripe).
    provider_product_id: Mapped[str | None] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    short_description: Mapped[str | None] = mapped_column(String(500))
    slug: Mapped[str | None] = mapped_column(String(160))
    status: Mapped[str] = mapped_column(String(16), default="DRAFT", server_default="DRAFT")
    type: Mapped[str] = mapped_column(String(24), default="ONE_TIME", server_default="ONE_TIME")
    base_price: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    currency: Mapped[str] = mapped_column(String(3), default="usd", server_default="usd")
    tax_rate: Mapped[Decimal | None] = mapped_column(Numeric(5, 4))
    download_url: Mapped[str | None] = mapped_column(Text)
    download_file_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("storage_objects.id"))
    download_limit: Mapped[int | None] = mapped_column(Integer, default=-1, server_default="-1")  # -1: unlimited
    access_days: Mapped[int | None] = mapped_column(Integer)  # NULL: lifetime
    billing_interval: Mapped[str | None] = mapped_column(String(16))
    trial_days: Mapped[int | None] = mapped_column(Integer, default=0, server_default="0")
    images: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default=text("'[]'::jsonb"))
    files: Mapped[list[Any]] = mapped_column(JSONB, default=list, server_default=text("'[]'::jsonb"))
    meta_title: Mapped[str | None] = mapped_column(String(255))
    meta_description: Mapped[str | None] = mapped_column(String(500))
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(64)), default=list, server_default=text("'{}'"))
    featured: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    track_inventory: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    stock_quantity: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    low_stock_threshold: Mapped[int | None] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    livemode: Mapped[bool | None] = mapped_column(Boolean)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    provider_updated_at: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class Price(Base):
    """A price of a product: one-time or recurring; made in Tollgate (synchronised to Stripe) or mirrored."""

    __tablename__ = "prices"
    __table_args__ = (
        UniqueConstraint("provider", "provider_price_id"),
        CheckConstraint(PROVIDERS, name="provider"),
        CheckConstraint("unit_amount IS NULL OR unit_amount >= 0", name="unit_amount"),
        Index("ix_prices_product_id", "product_id"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16), default="stripe", server_default="stripe")
    # NULL until the price is created in Stripe (when its product is published).
    provider_price_id: Mapped[str | None] = mapped_column(String(255))
    provider_product_id: Mapped[str | None] = mapped_column(String(255))
    product_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("products.id"))
    type: Mapped[str | None] = mapped_column(String(16))
    unit_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    interval: Mapped[str | None] = mapped_column(String(16))
    interval_count: Mapped[int | None] = mapped_column(Integer)
    nickname: Mapped[str | None] = mapped_column(String(255))
    lookup_key: Mapped[str | None] = mapped_column(String(255))
    recurring: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # Stripe's recurring object, as sent
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
        Index("ix_refunds_order_id", "order_id"),
        CheckConstraint(PROVIDERS, name="provider"),
        CheckConstraint(f"status IN ({_sql_list(REFUND_STATUSES)})", name="status"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    # NULL while a refund Tollgate asked for is being sent to the provider (the row reserves its amount first).
    provider_refund_id: Mapped[str | None] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    user_id: Mapped[uuid.UUID | None] = _user()
    purchase_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("purchases.id"))
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("invoices.id"))
    order_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("orders.id"))
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    credits_requested: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    credits_clawed_back: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    credits_shortfall: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0), server_default="0")
    # Seed 004's RefundReason in lower case (requested_by_customer, duplicate, fraudulent, subscription_canceled,
    # other) for refunds asked through Tollgate; whatever the provider said for the others.
    reason: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="SUCCEEDED", server_default="SUCCEEDED")
    notes: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    requested_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    ledger_transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    processed_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


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
