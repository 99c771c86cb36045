"""Commerce (migration 0019_commerce; seed 004): the category tree, reviews and their votes, orders and their
items, discounts, the products they apply to, and their uses. Products, prices and refunds live in
tollgate.models.payments (the same tables, extended by 0019).

Every sale is an order: a credit pack, a plan's first payment and a cart of products. Money is NUMERIC(14, 3) in
the currency's major unit, quantised to the currency's scale by the code that computes it; the database holds
the arithmetic that must always be true (totals, refund bounds, use limits, stock never below zero).
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
from tollgate.models.payments import MONEY, PROVIDERS

ORDER_STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "CANCELLED", "REFUNDED")
PAYMENT_STATUSES = ("PENDING", "PROCESSING", "SUCCEEDED", "FAILED", "CANCELLED", "REFUNDED")
ORDER_ITEM_KINDS = ("product", "pack", "plan")
DISCOUNT_TYPES = ("PERCENTAGE", "FIXED_AMOUNT")
DISCOUNT_USAGE_STATUSES = ("reserved", "used", "released")


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _json(default: Any) -> Any:
    literal = "'[]'::jsonb" if isinstance(default(), list) else "'{}'::jsonb"
    return mapped_column(JSONB, nullable=False, default=default, server_default=text(literal))


class ProductCategory(Base):
    __tablename__ = "product_categories"
    __table_args__ = (
        UniqueConstraint("slug", name="uq_product_categories_slug"),
        Index("ix_product_categories_parent_id", "parent_id"),
        CheckConstraint("parent_id IS NULL OR parent_id <> id", name="not_own_parent"),
    )

    id: Mapped[UUIDPk]
    name: Mapped[str] = mapped_column(String(255))
    slug: Mapped[str] = mapped_column(String(160))
    description: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("product_categories.id"))
    sort_order: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ProductCategoryLink(Base):
    """Seed 004's implicit many-to-many between products and categories."""

    __tablename__ = "product_category_links"
    __table_args__ = (Index("ix_product_category_links_category_id", "category_id", "product_id"),)

    product_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True)
    category_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("product_categories.id", ondelete="CASCADE"), primary_key=True
    )
    created_at: Mapped[CreatedAt]


class ProductReview(Base):
    __tablename__ = "product_reviews"
    __table_args__ = (
        UniqueConstraint("product_id", "user_id", name="uq_product_reviews_product_id_user_id"),
        Index("ix_product_reviews_product_id", "product_id", "id"),
        CheckConstraint("rating BETWEEN 1 AND 5", name="rating"),
        CheckConstraint("helpful >= 0", name="helpful"),
    )

    id: Mapped[UUIDPk]
    product_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("products.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    rating: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str | None] = mapped_column(String(255))
    content: Mapped[str] = mapped_column(Text)
    verified: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    helpful: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ReviewVote(Base):
    """One helpful vote per user per review (the primary key is the rule)."""

    __tablename__ = "review_votes"

    review_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("product_reviews.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[CreatedAt]


class Discount(Base):
    __tablename__ = "discounts"
    __table_args__ = (
        # Codes are matched without regard to case: one code, one discount.
        Index("uq_discounts_code", text("upper(code)"), unique=True),
        CheckConstraint(f"type IN ({_sql_list(DISCOUNT_TYPES)})", name="type"),
        CheckConstraint("value > 0 AND (type <> 'PERCENTAGE' OR value <= 100)", name="value"),
        CheckConstraint("type <> 'FIXED_AMOUNT' OR currency IS NOT NULL", name="fixed_amount_currency"),
        CheckConstraint("max_uses IS NULL OR max_uses > 0", name="max_uses"),
        CheckConstraint("max_uses_per_customer IS NULL OR max_uses_per_customer > 0", name="max_uses_per_customer"),
        CheckConstraint("current_uses >= 0 AND reserved_uses >= 0", name="uses_non_negative"),
        # Uses (counted at payment) and reservations (held by open checkouts) never pass the limit.
        CheckConstraint("max_uses IS NULL OR current_uses + reserved_uses <= max_uses", name="uses_within_limit"),
        CheckConstraint("minimum_amount IS NULL OR minimum_amount >= 0", name="minimum_amount"),
        CheckConstraint("valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from", name="window"),
    )

    id: Mapped[UUIDPk]
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    value: Mapped[Decimal] = mapped_column(Numeric(10, 4))  # 25.5 (%) or 25.50 (currency)
    currency: Mapped[str | None] = mapped_column(String(3))
    max_uses: Mapped[int | None] = mapped_column(Integer)
    max_uses_per_customer: Mapped[int | None] = mapped_column(Integer)
    current_uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reserved_uses: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    minimum_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    first_time_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default="true")
    provider_coupon_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class ProductDiscount(Base):
    """A discount restricted to some products (none listed: it applies to every product)."""

    __tablename__ = "product_discounts"
    __table_args__ = (
        UniqueConstraint("product_id", "discount_id", name="uq_product_discounts_product_id_discount_id"),
        Index("ix_product_discounts_discount_id", "discount_id"),
    )

    id: Mapped[UUIDPk]
    product_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("products.id", ondelete="CASCADE"))
    discount_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("discounts.id", ondelete="CASCADE"))
    created_at: Mapped[CreatedAt]


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("order_number", name="uq_orders_order_number"),
        UniqueConstraint("provider", "provider_checkout_id", name="uq_orders_provider_checkout_id"),
        Index("ix_orders_user_id", "user_id", "id"),
        Index("ix_orders_status", "status", "id"),
        Index(
            "uq_orders_payment_intent",
            "provider",
            "provider_payment_intent_id",
            unique=True,
            postgresql_where=text("provider_payment_intent_id IS NOT NULL"),
        ),
        Index("ix_orders_purchase_id", "purchase_id", postgresql_where=text("purchase_id IS NOT NULL")),
        CheckConstraint(PROVIDERS, name="provider"),
        CheckConstraint(f"status IN ({_sql_list(ORDER_STATUSES)})", name="status"),
        CheckConstraint(f"payment_status IN ({_sql_list(PAYMENT_STATUSES)})", name="payment_status"),
        CheckConstraint(
            "subtotal >= 0 AND tax_amount >= 0 AND discount_amount >= 0 AND discount_amount <= subtotal",
            name="amounts",
        ),
        # Tax applies to the discounted subtotal: the total is always this sum, never a separate guess.
        CheckConstraint("total_amount = subtotal - discount_amount + tax_amount", name="total"),
        # Refunds, paid and in flight, never pass what was paid.
        CheckConstraint(
            "refunded_amount >= 0 AND refund_pending_amount >= 0"
            " AND refunded_amount + refund_pending_amount <= total_amount",
            name="refunds_within_total",
        ),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    # Human-readable and unique without a retry loop: TG-00001042 from the order_number_seq sequence.
    order_number: Mapped[str] = mapped_column(
        String(32),
        server_default=text("'TG-' || lpad(nextval('order_number_seq')::text, 8, '0')"),
    )
    status: Mapped[str] = mapped_column(String(16), default="PENDING", server_default="PENDING")
    payment_status: Mapped[str] = mapped_column(String(16), default="PENDING", server_default="PENDING")
    currency: Mapped[str] = mapped_column(String(3))
    subtotal: Mapped[Decimal] = mapped_column(MONEY)
    tax_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    discount_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    total_amount: Mapped[Decimal] = mapped_column(MONEY)
    refunded_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    refund_pending_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    discount_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("discounts.id"))
    discount_code: Mapped[str | None] = mapped_column(String(64))
    billing_address: Mapped[dict[str, Any]] = _json(dict)
    shipping_address: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    payment_method: Mapped[str | None] = mapped_column(String(32))  # card, boleto, pix, ...
    provider: Mapped[str] = mapped_column(String(16), default="stripe", server_default="stripe")
    provider_checkout_id: Mapped[str | None] = mapped_column(String(255))  # the Checkout Session / order id
    provider_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    provider_charge_id: Mapped[str | None] = mapped_column(String(255))
    purchase_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("purchases.id"))  # a credit pack's
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("subscriptions.id"))  # a plan's
    checkout_url: Mapped[str | None] = mapped_column(Text)
    checkout_expires_at: Mapped[datetime | None]
    notes: Mapped[str | None] = mapped_column(Text)
    internal_notes: Mapped[str | None] = mapped_column(Text)  # staff only, never shown to the customer
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    paid_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class OrderItem(Base):
    __tablename__ = "order_items"
    __table_args__ = (
        Index("ix_order_items_order_id", "order_id"),
        Index("ix_order_items_product_id", "product_id", postgresql_where=text("product_id IS NOT NULL")),
        CheckConstraint(f"kind IN ({_sql_list(ORDER_ITEM_KINDS)})", name="kind"),
        CheckConstraint(
            "(kind = 'product') = (product_id IS NOT NULL)"
            " AND (kind = 'pack') = (pack_id IS NOT NULL)"
            " AND (kind = 'plan') = (plan_id IS NOT NULL)",
            name="one_kind",
        ),
        CheckConstraint("quantity > 0", name="quantity"),
        CheckConstraint("unit_price >= 0 AND total_price = unit_price * quantity", name="total_price"),
        CheckConstraint("tax_amount >= 0 AND discount_amount >= 0", name="amounts"),
        # Downloads are counted atomically against the limit (-1 or NULL: unlimited).
        CheckConstraint(
            "download_count >= 0 AND (download_limit IS NULL OR download_limit = -1"
            " OR download_count <= download_limit)",
            name="downloads_within_limit",
        ),
    )

    id: Mapped[UUIDPk]
    order_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("orders.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16), default="product", server_default="product")
    product_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("products.id"))
    price_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("prices.id"))
    pack_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("credit_packs.id"))
    plan_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("plans.id"))
    name: Mapped[str] = mapped_column(String(255))  # what was bought, as it was called then
    product_type: Mapped[str | None] = mapped_column(String(24))  # the product's type at checkout
    quantity: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    unit_price: Mapped[Decimal] = mapped_column(MONEY)
    total_price: Mapped[Decimal] = mapped_column(MONEY)
    tax_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    discount_amount: Mapped[Decimal] = mapped_column(MONEY, default=Decimal(0), server_default="0")
    stock_reserved: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # units held from stock
    download_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    download_limit: Mapped[int | None] = mapped_column(Integer)  # the product's limit at purchase
    access_expires_at: Mapped[datetime | None]
    access_revoked_at: Mapped[datetime | None]  # a refund ends access
    fulfilled_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class DiscountUsage(Base):
    """A use of a discount: `reserved` by an open checkout, `used` once the order is paid, `released` when the
    checkout was abandoned or failed."""

    __tablename__ = "discount_usages"
    __table_args__ = (
        Index("ix_discount_usages_discount_id_user_id", "discount_id", "user_id"),
        UniqueConstraint("order_id", name="uq_discount_usages_order_id"),
        CheckConstraint(f"status IN ({_sql_list(DISCOUNT_USAGE_STATUSES)})", name="status"),
        CheckConstraint("amount_saved >= 0", name="amount_saved"),
    )

    id: Mapped[UUIDPk]
    discount_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("discounts.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    order_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("orders.id"))
    status: Mapped[str] = mapped_column(String(16), default="reserved", server_default="reserved")
    amount_saved: Mapped[Decimal] = mapped_column(MONEY)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
