"""Commerce (seed 004): the catalogue fields on products and prices, the category tree, reviews and helpful
votes, orders and their items (every sale: packs, plans and products), discounts with the products they apply
to and their uses, and seed 004's fields on refunds (status, notes, metadata, processed_at, the order).

The rules that must hold under any race are constraints: stock never below zero, a discount's uses plus open
reservations never past its limit, an order's total the sum of its parts, refunds (done and in flight) never
past the total, downloads never past the limit.

Revision ID: 0019_commerce
Revises: 0018_plan_changes, 0014_storage_objects (a merge: products point at stored files)
Create Date: 2026-12-04
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0019_commerce"
down_revision: str | Sequence[str] | None = ("0018_plan_changes", "0014_storage_objects")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = sa.Numeric(14, 3)
NOW = sa.func.now()


def _ts(name: str, nullable: bool = False) -> sa.Column[Any]:
    if nullable:
        return sa.Column(name, sa.DateTime(timezone=True))
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=NOW)


def _jsonb(name: str, literal: str) -> sa.Column[Any]:
    return sa.Column(name, postgresql.JSONB(), nullable=False, server_default=sa.text(f"'{literal}'::jsonb"))


def _products() -> None:
    op.alter_column("products", "provider_product_id", existing_type=sa.String(255), nullable=True)
    add: list[sa.Column[Any]] = [
        sa.Column("short_description", sa.String(500)),
        sa.Column("slug", sa.String(160)),
        sa.Column("status", sa.String(16), nullable=False, server_default="DRAFT"),
        sa.Column("type", sa.String(24), nullable=False, server_default="ONE_TIME"),
        sa.Column("base_price", MONEY, nullable=False, server_default="0"),
        sa.Column("currency", sa.String(3), nullable=False, server_default="usd"),
        sa.Column("tax_rate", sa.Numeric(5, 4)),
        sa.Column("download_url", sa.Text()),
        sa.Column("download_file_id", sa.Uuid()),
        sa.Column("download_limit", sa.Integer(), server_default="-1"),
        sa.Column("access_days", sa.Integer()),
        sa.Column("billing_interval", sa.String(16)),
        sa.Column("trial_days", sa.Integer(), server_default="0"),
        _jsonb("images", "[]"),
        _jsonb("files", "[]"),
        sa.Column("meta_title", sa.String(255)),
        sa.Column("meta_description", sa.String(500)),
        sa.Column("tags", postgresql.ARRAY(sa.String(64)), nullable=False, server_default=sa.text("'{}'")),
        sa.Column("featured", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("track_inventory", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("stock_quantity", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("low_stock_threshold", sa.Integer()),
        _ts("published_at", nullable=True),
        _ts("deleted_at", nullable=True),
    ]
    for column in add:
        op.add_column("products", column)
    op.create_foreign_key(
        op.f("fk_products_download_file_id_storage_objects"), "products", "storage_objects",
        ["download_file_id"], ["id"],
    )  # fmt: skip
    checks = {
        "status": "status IN ('DRAFT', 'PUBLISHED', 'ARCHIVED', 'DELETED')",
        "type": "type IN ('ONE_TIME', 'SUBSCRIPTION', 'DIGITAL_DOWNLOAD', 'SERVICE')",
        "base_price": "base_price >= 0",
        "tax_rate": "tax_rate IS NULL OR (tax_rate >= 0 AND tax_rate < 1)",
        "download_limit": "download_limit IS NULL OR download_limit >= -1",
        "access_days": "access_days IS NULL OR access_days > 0",
        "trial_days": "trial_days IS NULL OR trial_days >= 0",
        "stock_quantity": "stock_quantity >= 0",
    }
    for name, condition in checks.items():
        op.create_check_constraint(op.f(f"ck_products_{name}"), "products", condition)
    # Mirrors of products made in Stripe keep their state: an active one is published, a deleted one deleted.
    op.execute(
        "UPDATE products SET status = CASE WHEN deleted THEN 'DELETED' WHEN active THEN 'PUBLISHED' ELSE 'ARCHIVED' END"
    )
    op.create_index("uq_products_slug", "products", ["slug"], unique=True, postgresql_where=sa.text("slug IS NOT NULL"))
    op.create_index(
        "ix_products_published", "products", ["status", "featured", "id"],
        postgresql_where=sa.text("status = 'PUBLISHED'"),
    )  # fmt: skip
    op.create_index("ix_products_tags", "products", ["tags"], postgresql_using="gin")


def _prices() -> None:
    op.alter_column("prices", "provider_price_id", existing_type=sa.String(255), nullable=True)
    op.add_column("prices", sa.Column("recurring", postgresql.JSONB()))
    op.create_check_constraint(op.f("ck_prices_unit_amount"), "prices", "unit_amount IS NULL OR unit_amount >= 0")
    op.create_index("ix_prices_product_id", "prices", ["product_id"])


def _categories_and_reviews() -> None:
    op.create_table(
        "product_categories",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("slug", sa.String(160), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("parent_id", sa.Uuid()),
        sa.Column("sort_order", sa.Integer(), nullable=False, server_default="0"),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_categories")),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["product_categories.id"], name=op.f("fk_product_categories_parent_id_product_categories")
        ),
        sa.UniqueConstraint("slug", name="uq_product_categories_slug"),
        sa.CheckConstraint("parent_id IS NULL OR parent_id <> id", name=op.f("ck_product_categories_not_own_parent")),
    )
    op.create_index("ix_product_categories_parent_id", "product_categories", ["parent_id"])
    op.create_table(
        "product_category_links",
        sa.Column("product_id", sa.Uuid(), nullable=False),
        sa.Column("category_id", sa.Uuid(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("product_id", "category_id", name=op.f("pk_product_category_links")),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], ondelete="CASCADE",
            name=op.f("fk_product_category_links_product_id_products"),
        ),
        sa.ForeignKeyConstraint(
            ["category_id"], ["product_categories.id"], ondelete="CASCADE",
            name=op.f("fk_product_category_links_category_id_product_categories"),
        ),
    )  # fmt: skip
    op.create_index("ix_product_category_links_category_id", "product_category_links", ["category_id", "product_id"])
    op.create_table(
        "product_reviews",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("product_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("rating", sa.SmallInteger(), nullable=False),
        sa.Column("title", sa.String(255)),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("verified", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("helpful", sa.Integer(), nullable=False, server_default="0"),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_reviews")),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], ondelete="CASCADE", name=op.f("fk_product_reviews_product_id_products")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_product_reviews_user_id_users")
        ),
        sa.UniqueConstraint("product_id", "user_id", name="uq_product_reviews_product_id_user_id"),
        sa.CheckConstraint("rating BETWEEN 1 AND 5", name=op.f("ck_product_reviews_rating")),
        sa.CheckConstraint("helpful >= 0", name=op.f("ck_product_reviews_helpful")),
    )
    op.create_index("ix_product_reviews_product_id", "product_reviews", ["product_id", "id"])
    op.create_table(
        "review_votes",
        sa.Column("review_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("review_id", "user_id", name=op.f("pk_review_votes")),
        sa.ForeignKeyConstraint(
            ["review_id"], ["product_reviews.id"], ondelete="CASCADE",
            name=op.f("fk_review_votes_review_id_product_reviews"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_review_votes_user_id_users")
        ),
    )  # fmt: skip


def _discounts() -> None:
    op.create_table(
        "discounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("value", sa.Numeric(10, 4), nullable=False),
        sa.Column("currency", sa.String(3)),
        sa.Column("max_uses", sa.Integer()),
        sa.Column("max_uses_per_customer", sa.Integer()),
        sa.Column("current_uses", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("reserved_uses", sa.Integer(), nullable=False, server_default="0"),
        _ts("valid_from", nullable=True),
        _ts("valid_until", nullable=True),
        sa.Column("minimum_amount", MONEY),
        sa.Column("first_time_only", sa.Boolean(), nullable=False, server_default="false"),
        sa.Column("active", sa.Boolean(), nullable=False, server_default="true"),
        sa.Column("provider_coupon_id", sa.String(255)),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discounts")),
        sa.CheckConstraint("type IN ('PERCENTAGE', 'FIXED_AMOUNT')", name=op.f("ck_discounts_type")),
        sa.CheckConstraint("value > 0 AND (type <> 'PERCENTAGE' OR value <= 100)", name=op.f("ck_discounts_value")),
        sa.CheckConstraint(
            "type <> 'FIXED_AMOUNT' OR currency IS NOT NULL", name=op.f("ck_discounts_fixed_amount_currency")
        ),
        sa.CheckConstraint("max_uses IS NULL OR max_uses > 0", name=op.f("ck_discounts_max_uses")),
        sa.CheckConstraint(
            "max_uses_per_customer IS NULL OR max_uses_per_customer > 0",
            name=op.f("ck_discounts_max_uses_per_customer"),
        ),
        sa.CheckConstraint("current_uses >= 0 AND reserved_uses >= 0", name=op.f("ck_discounts_uses_non_negative")),
        sa.CheckConstraint(
            "max_uses IS NULL OR current_uses + reserved_uses <= max_uses", name=op.f("ck_discounts_uses_within_limit")
        ),
        sa.CheckConstraint("minimum_amount IS NULL OR minimum_amount >= 0", name=op.f("ck_discounts_minimum_amount")),
        sa.CheckConstraint(
            "valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from", name=op.f("ck_discounts_window")
        ),
    )
    op.create_index("uq_discounts_code", "discounts", [sa.text("upper(code)")], unique=True)
    op.create_table(
        "product_discounts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("product_id", sa.Uuid(), nullable=False),
        sa.Column("discount_id", sa.Uuid(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_discounts")),
        sa.ForeignKeyConstraint(
            ["product_id"], ["products.id"], ondelete="CASCADE", name=op.f("fk_product_discounts_product_id_products")
        ),
        sa.ForeignKeyConstraint(
            ["discount_id"], ["discounts.id"], ondelete="CASCADE",
            name=op.f("fk_product_discounts_discount_id_discounts"),
        ),
        sa.UniqueConstraint("product_id", "discount_id", name="uq_product_discounts_product_id_discount_id"),
    )  # fmt: skip
    op.create_index("ix_product_discounts_discount_id", "product_discounts", ["discount_id"])


def _orders() -> None:
    op.execute("CREATE SEQUENCE order_number_seq START WITH 1000")
    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "order_number",
            sa.String(32),
            nullable=False,
            server_default=sa.text("'TG-' || lpad(nextval('order_number_seq')::text, 8, '0')"),
        ),
        sa.Column("status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("payment_status", sa.String(16), nullable=False, server_default="PENDING"),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("subtotal", MONEY, nullable=False),
        sa.Column("tax_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("discount_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("total_amount", MONEY, nullable=False),
        sa.Column("refunded_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("refund_pending_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("discount_id", sa.Uuid()),
        sa.Column("discount_code", sa.String(64)),
        _jsonb("billing_address", "{}"),
        sa.Column("shipping_address", postgresql.JSONB()),
        sa.Column("payment_method", sa.String(32)),
        sa.Column("provider", sa.String(16), nullable=False, server_default="stripe"),
        sa.Column("provider_checkout_id", sa.String(255)),
        sa.Column("provider_payment_intent_id", sa.String(255)),
        sa.Column("provider_charge_id", sa.String(255)),
        sa.Column("purchase_id", sa.Uuid()),
        sa.Column("subscription_id", sa.Uuid()),
        sa.Column("checkout_url", sa.Text()),
        _ts("checkout_expires_at", nullable=True),
        sa.Column("notes", sa.Text()),
        sa.Column("internal_notes", sa.Text()),
        _jsonb("metadata", "{}"),
        _ts("paid_at", nullable=True),
        _ts("completed_at", nullable=True),
        _ts("cancelled_at", nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_orders_user_id_users")),
        sa.ForeignKeyConstraint(["discount_id"], ["discounts.id"], name=op.f("fk_orders_discount_id_discounts")),
        sa.ForeignKeyConstraint(["purchase_id"], ["purchases.id"], name=op.f("fk_orders_purchase_id_purchases")),
        sa.ForeignKeyConstraint(
            ["subscription_id"], ["subscriptions.id"], name=op.f("fk_orders_subscription_id_subscriptions")
        ),
        sa.UniqueConstraint("order_number", name="uq_orders_order_number"),
        sa.UniqueConstraint("provider", "provider_checkout_id", name="uq_orders_provider_checkout_id"),
        sa.CheckConstraint(
            "provider IN ('stripe', 'lemonsqueezy', 'clerk', 'asaas', 'manual')", name=op.f("ck_orders_provider")
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'CANCELLED', 'REFUNDED')", name=op.f("ck_orders_status")
        ),
        sa.CheckConstraint(
            "payment_status IN ('PENDING', 'PROCESSING', 'SUCCEEDED', 'FAILED', 'CANCELLED', 'REFUNDED')",
            name=op.f("ck_orders_payment_status"),
        ),
        sa.CheckConstraint(
            "subtotal >= 0 AND tax_amount >= 0 AND discount_amount >= 0 AND discount_amount <= subtotal",
            name=op.f("ck_orders_amounts"),
        ),
        sa.CheckConstraint("total_amount = subtotal - discount_amount + tax_amount", name=op.f("ck_orders_total")),
        sa.CheckConstraint(
            "refunded_amount >= 0 AND refund_pending_amount >= 0"
            " AND refunded_amount + refund_pending_amount <= total_amount",
            name=op.f("ck_orders_refunds_within_total"),
        ),
    )
    op.execute("ALTER SEQUENCE order_number_seq OWNED BY orders.order_number")
    op.create_index("ix_orders_user_id", "orders", ["user_id", "id"])
    op.create_index("ix_orders_status", "orders", ["status", "id"])
    op.create_index(
        "uq_orders_payment_intent", "orders", ["provider", "provider_payment_intent_id"], unique=True,
        postgresql_where=sa.text("provider_payment_intent_id IS NOT NULL"),
    )  # fmt: skip
    op.create_index(
        "ix_orders_purchase_id", "orders", ["purchase_id"], postgresql_where=sa.text("purchase_id IS NOT NULL")
    )
    op.create_table(
        "order_items",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False, server_default="product"),
        sa.Column("product_id", sa.Uuid()),
        sa.Column("price_id", sa.Uuid()),
        sa.Column("pack_id", sa.Uuid()),
        sa.Column("plan_id", sa.Uuid()),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("product_type", sa.String(24)),
        sa.Column("quantity", sa.Integer(), nullable=False, server_default="1"),
        sa.Column("unit_price", MONEY, nullable=False),
        sa.Column("total_price", MONEY, nullable=False),
        sa.Column("tax_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("discount_amount", MONEY, nullable=False, server_default="0"),
        sa.Column("stock_reserved", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("download_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("download_limit", sa.Integer()),
        _ts("access_expires_at", nullable=True),
        _ts("access_revoked_at", nullable=True),
        _ts("fulfilled_at", nullable=True),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_items")),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], ondelete="CASCADE", name=op.f("fk_order_items_order_id_orders")
        ),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_order_items_product_id_products")),
        sa.ForeignKeyConstraint(["price_id"], ["prices.id"], name=op.f("fk_order_items_price_id_prices")),
        sa.ForeignKeyConstraint(["pack_id"], ["credit_packs.id"], name=op.f("fk_order_items_pack_id_credit_packs")),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], name=op.f("fk_order_items_plan_id_plans")),
        sa.CheckConstraint("kind IN ('product', 'pack', 'plan')", name=op.f("ck_order_items_kind")),
        sa.CheckConstraint(
            "(kind = 'product') = (product_id IS NOT NULL)"
            " AND (kind = 'pack') = (pack_id IS NOT NULL)"
            " AND (kind = 'plan') = (plan_id IS NOT NULL)",
            name=op.f("ck_order_items_one_kind"),
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_order_items_quantity")),
        sa.CheckConstraint(
            "unit_price >= 0 AND total_price = unit_price * quantity", name=op.f("ck_order_items_total_price")
        ),
        sa.CheckConstraint("tax_amount >= 0 AND discount_amount >= 0", name=op.f("ck_order_items_amounts")),
        sa.CheckConstraint(
            "download_count >= 0 AND (download_limit IS NULL OR download_limit = -1"
            " OR download_count <= download_limit)",
            name=op.f("ck_order_items_downloads_within_limit"),
        ),
    )
    op.create_index("ix_order_items_order_id", "order_items", ["order_id"])
    op.create_index(
        "ix_order_items_product_id", "order_items", ["product_id"], postgresql_where=sa.text("product_id IS NOT NULL")
    )
    op.create_table(
        "discount_usages",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("discount_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid()),
        sa.Column("status", sa.String(16), nullable=False, server_default="reserved"),
        sa.Column("amount_saved", MONEY, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discount_usages")),
        sa.ForeignKeyConstraint(
            ["discount_id"], ["discounts.id"], name=op.f("fk_discount_usages_discount_id_discounts")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_discount_usages_user_id_users")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_discount_usages_order_id_orders")),
        sa.UniqueConstraint("order_id", name="uq_discount_usages_order_id"),
        sa.CheckConstraint("status IN ('reserved', 'used', 'released')", name=op.f("ck_discount_usages_status")),
        sa.CheckConstraint("amount_saved >= 0", name=op.f("ck_discount_usages_amount_saved")),
    )
    op.create_index("ix_discount_usages_discount_id_user_id", "discount_usages", ["discount_id", "user_id"])


def _refunds() -> None:
    op.alter_column("refunds", "provider_refund_id", existing_type=sa.String(255), nullable=True)
    for column in (
        sa.Column("order_id", sa.Uuid()),
        sa.Column("status", sa.String(16), nullable=False, server_default="SUCCEEDED"),
        sa.Column("notes", sa.Text()),
        _jsonb("metadata", "{}"),
        sa.Column("requested_by", sa.Uuid()),
        _ts("processed_at", nullable=True),
        _ts("updated_at"),
    ):
        op.add_column("refunds", column)
    op.create_foreign_key(op.f("fk_refunds_order_id_orders"), "refunds", "orders", ["order_id"], ["id"])
    op.create_foreign_key(op.f("fk_refunds_requested_by_users"), "refunds", "users", ["requested_by"], ["id"])
    op.create_check_constraint(
        op.f("ck_refunds_status"), "refunds", "status IN ('PENDING', 'SUCCEEDED', 'FAILED', 'CANCELED')"
    )
    op.create_index("ix_refunds_order_id", "refunds", ["order_id"])
    # Refunds recorded before this revision came from provider webhooks: they happened.
    op.execute("UPDATE refunds SET processed_at = created_at")


def upgrade() -> None:
    _products()
    _prices()
    _categories_and_reviews()
    _discounts()
    _orders()
    _refunds()


def downgrade() -> None:
    op.drop_index("ix_refunds_order_id", table_name="refunds")
    op.drop_constraint(op.f("ck_refunds_status"), "refunds", type_="check")
    op.drop_constraint(op.f("fk_refunds_requested_by_users"), "refunds", type_="foreignkey")
    op.drop_constraint(op.f("fk_refunds_order_id_orders"), "refunds", type_="foreignkey")
    for name in ("updated_at", "processed_at", "requested_by", "metadata", "notes", "status", "order_id"):
        op.drop_column("refunds", name)
    op.execute("DELETE FROM refunds WHERE provider_refund_id IS NULL")
    op.alter_column("refunds", "provider_refund_id", existing_type=sa.String(255), nullable=False)
    for table in (
        "discount_usages",
        "order_items",
        "orders",
        "product_discounts",
        "discounts",
        "review_votes",
        "product_reviews",
        "product_category_links",
        "product_categories",
    ):
        op.drop_table(table)
    op.execute("DROP SEQUENCE IF EXISTS order_number_seq")
    op.drop_index("ix_prices_product_id", table_name="prices")
    op.drop_constraint(op.f("ck_prices_unit_amount"), "prices", type_="check")
    op.drop_column("prices", "recurring")
    op.execute("DELETE FROM prices WHERE provider_price_id IS NULL")
    op.alter_column("prices", "provider_price_id", existing_type=sa.String(255), nullable=False)
    for index in ("ix_products_tags", "ix_products_published", "uq_products_slug"):
        op.drop_index(index, table_name="products")
    for name in (
        "status",
        "type",
        "base_price",
        "tax_rate",
        "download_limit",
        "access_days",
        "trial_days",
        "stock_quantity",
    ):
        op.drop_constraint(op.f(f"ck_products_{name}"), "products", type_="check")
    op.drop_constraint(op.f("fk_products_download_file_id_storage_objects"), "products", type_="foreignkey")
    for name in (
        "short_description",
        "slug",
        "status",
        "type",
        "base_price",
        "currency",
        "tax_rate",
        "download_url",
        "download_file_id",
        "download_limit",
        "access_days",
        "billing_interval",
        "trial_days",
        "images",
        "files",
        "meta_title",
        "meta_description",
        "tags",
        "featured",
        "track_inventory",
        "stock_quantity",
        "low_stock_threshold",
        "published_at",
        "deleted_at",
    ):
        op.drop_column("products", name)
    op.execute("DELETE FROM products WHERE provider_product_id IS NULL")
    op.alter_column("products", "provider_product_id", existing_type=sa.String(255), nullable=False)
