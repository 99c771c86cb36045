"""Credits: the ledger tables, the catalogue (plans, credit packs), the admin_settings singleton and audit_logs.

Migration `0002_ledger` creates them (with the trigger that keeps `credit_transactions` append-only and the
plpgsql functions of the ledger's hot paths; `0007_ledger_rules` gives grants `is_pack` and the functions their
current versions, from migrations/sql/ledger). Writes to the ledger tables go through `tollgate.ledger` only;
these models are for reading and for the catalogue.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
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

Credits = Numeric(18, 4, asdecimal=True)
Money = Numeric(12, 2, asdecimal=True)


class Plan(Base):
    __tablename__ = "plans"

    id: Mapped[UUIDPk]
    tier: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    monthly_credits: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    rollover: Mapped[str] = mapped_column(String(16), default="none")
    rollover_cap: Mapped[Decimal | None] = mapped_column(Credits)
    price_monthly: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    price_yearly: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    features: Mapped[Any] = mapped_column(JSONB, default=list)
    badge: Mapped[str | None] = mapped_column(String(50))
    highlight: Mapped[bool] = mapped_column(Boolean, default=False)
    cta_type: Mapped[str | None] = mapped_column(String(32))
    cta_label: Mapped[str | None] = mapped_column(String(100))
    cta_url: Mapped[str | None] = mapped_column(Text)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    billing_source: Mapped[str] = mapped_column(String(32), default="stripe")
    stripe_price_id_monthly: Mapped[str | None] = mapped_column(String(255))
    stripe_price_id_yearly: Mapped[str | None] = mapped_column(String(255))
    lemonsqueezy_variant_id_monthly: Mapped[str | None] = mapped_column(String(64))
    lemonsqueezy_variant_id_yearly: Mapped[str | None] = mapped_column(String(64))
    clerk_plan_id: Mapped[str | None] = mapped_column(String(255))
    asaas_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class CreditPack(Base):
    __tablename__ = "credit_packs"

    id: Mapped[UUIDPk]
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    credits: Mapped[Decimal] = mapped_column(Credits)
    price: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3), default="usd")
    expires_after_days: Mapped[int | None] = mapped_column(Integer)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    stripe_price_id: Mapped[str | None] = mapped_column(String(255))
    lemonsqueezy_variant_id: Mapped[str | None] = mapped_column(String(64))
    asaas_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class AdminSettings(Base):
    """The singleton (id = 1): feature costs `{operation: "cost"}`, per-plan overrides
    `{tier: {operation: "cost"}}`, and whether users may choose to auto-use purchased credits."""

    __tablename__ = "admin_settings"
    __table_args__ = (CheckConstraint("id = 1", name="singleton"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, default=1)
    feature_costs: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    plan_feature_costs: Mapped[dict[str, dict[str, str]]] = mapped_column(JSONB, default=dict)
    allow_bonus_auto_use_toggle: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    updated_at: Mapped[UpdatedAt]


class AuditLog(Base):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_target", "target_type", "target_id", "created_at"),
        Index("ix_audit_logs_actor_id", "actor_id", "created_at"),
        # The audit trail's reads: newest first, by action, or all (0022_audit_trail).
        Index("ix_audit_logs_action", "action", "created_at"),
        Index("ix_audit_logs_created_at", "created_at", "id"),
    )

    id: Mapped[UUIDPk]
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(64))
    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # 0022_audit_trail: what the change replaced and wrote, and where the request came from (seed 004).
    old_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    new_values: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[CreatedAt]


class CreditAccount(Base):
    __tablename__ = "credit_accounts"

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"), primary_key=True)
    balance: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    held: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    debt: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    floor: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
    bonus_auto_use: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class CreditGrant(Base):
    __tablename__ = "credit_grants"
    __table_args__ = (
        UniqueConstraint("user_id", "source_key", name="uq_credit_grants_user_id"),
        # The draw order of tollgate_draw_candidates over active grants (remaining is kept out of it so charges
        # update grants HOT).
        Index(
            "ix_credit_grants_draw",
            "user_id",
            "is_pack",
            text("expires_at ASC NULLS LAST"),
            "created_at",
            "id",
            postgresql_where=text("status = 'active'"),
        ),
        Index("ix_credit_grants_due", "expires_at", postgresql_where=text("status = 'active'")),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_accounts.user_id"))
    kind: Mapped[str] = mapped_column(String(32))
    # A purchased pack: drawn after free grants, and only when auto-use allows (tollgate_draw_candidates).
    is_pack: Mapped[bool] = mapped_column(Boolean)
    amount: Mapped[Decimal] = mapped_column(Credits)
    remaining: Mapped[Decimal] = mapped_column(Credits)
    status: Mapped[str] = mapped_column(String(16), default="active")
    source_key: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class CreditHold(Base):
    __tablename__ = "credit_holds"
    __table_args__ = (
        Index("ix_credit_holds_user_id", "user_id", "status"),
        Index("ix_credit_holds_due", "expires_at", postgresql_where=text("status = 'active'")),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_accounts.user_id"))
    operation: Mapped[str | None] = mapped_column(String(64))
    quantity: Mapped[Decimal | None] = mapped_column(Credits)
    amount: Mapped[Decimal] = mapped_column(Credits)
    captured: Mapped[Decimal | None] = mapped_column(Credits)
    released: Mapped[Decimal | None] = mapped_column(Credits)
    status: Mapped[str] = mapped_column(String(16), default="active")
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    created_at: Mapped[CreatedAt]
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CreditTransaction(Base):
    """One immutable ledger row (UPDATE, DELETE and TRUNCATE are refused by a trigger)."""

    __tablename__ = "credit_transactions"
    __table_args__ = (
        # Idempotency keys are unique per user, forever, in the ledger itself.
        Index(
            "uq_credit_transactions_idempotency_key",
            "user_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_credit_transactions_user_created", "user_id", "created_at", "id"),
        Index("ix_credit_transactions_reverses_id", "reverses_id", postgresql_where=text("reverses_id IS NOT NULL")),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_accounts.user_id"))
    type: Mapped[str] = mapped_column(String(32))
    amount: Mapped[Decimal] = mapped_column(Credits)
    balance_after: Mapped[Decimal] = mapped_column(Credits)
    operation: Mapped[str | None] = mapped_column(String(64))
    quantity: Mapped[Decimal | None] = mapped_column(Credits)
    grant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("credit_grants.id"))
    hold_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("credit_holds.id"))
    reverses_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("credit_transactions.id"))
    idempotency_key: Mapped[str | None] = mapped_column(String(300))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict)
    created_at: Mapped[CreatedAt]


class CreditDraw(Base):
    """How much one charge or hold took from one grant (grant_id NULL: from the credit line)."""

    __tablename__ = "credit_draws"

    origin_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_accounts.user_id"))
    grant_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)  # no FKs here: see migration 0002_ledger
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    amount: Mapped[Decimal] = mapped_column(Credits)
    returned: Mapped[Decimal] = mapped_column(Credits, default=Decimal(0))
