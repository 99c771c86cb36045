"""Auto top-up (migration 0016_auto_topup): each user's setting, and every top-up attempt it made.

An attempt is numbered per user (`sequence`): the PaymentIntent's idempotency key is derived from the user and that
number, so a retried provider call can never buy twice. At most one attempt per user is in flight (`requested` or
`processing`), which a partial unique index holds whatever the callers do.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

MONEY = Numeric(14, 3)  # as payments' money: the currency's major unit
CREDITS = Numeric(18, 4)
IN_FLIGHT = ("requested", "processing")
ATTEMPT_STATUSES = (*IN_FLIGHT, "succeeded", "failed")


class AutoTopUpSetting(Base):
    __tablename__ = "auto_topup_settings"
    __table_args__ = (
        CheckConstraint("threshold >= 0", name="threshold"),
        CheckConstraint("monthly_cap > 0", name="monthly_cap"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    threshold: Mapped[Decimal] = mapped_column(CREDITS)  # available credits under which a top-up starts
    pack_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_packs.id"))
    monthly_cap: Mapped[Decimal] = mapped_column(MONEY)  # money per calendar month (UTC), in `currency`
    currency: Mapped[str] = mapped_column(String(3))  # the pack's, when the setting was saved
    # Why auto top-up turned itself off (a declined card, one that needs authentication); None once re-enabled.
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class AutoTopUpAttempt(Base):
    __tablename__ = "auto_topup_attempts"
    __table_args__ = (
        UniqueConstraint("user_id", "sequence", name="uq_auto_topup_attempts_user_id_sequence"),
        CheckConstraint("status IN ('requested', 'processing', 'succeeded', 'failed')", name="status"),
        CheckConstraint("amount > 0", name="amount"),
        # One attempt in flight per user: a second insert fails instead of buying twice.
        Index(
            "uq_auto_topup_attempts_in_flight",
            "user_id",
            unique=True,
            postgresql_where=text("status IN ('requested', 'processing')"),
        ),
        # The monthly cap sums a user's attempts of the month.
        Index("ix_auto_topup_attempts_user_id_created_at", "user_id", "created_at"),
        Index(
            "ix_auto_topup_attempts_payment_intent_id",
            "payment_intent_id",
            unique=True,
            postgresql_where=text("payment_intent_id IS NOT NULL"),
        ),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="requested", server_default="requested")
    pack_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("credit_packs.id"))
    credits: Mapped[Decimal] = mapped_column(CREDITS)
    amount: Mapped[Decimal] = mapped_column(MONEY)
    currency: Mapped[str] = mapped_column(String(3))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    completed_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
