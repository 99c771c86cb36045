"""Scheduled jobs' tables: their cursors (so a cut-short run resumes), ledger mismatches, daily analytics."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk


class JobCursor(Base):
    """One row per (job, period): the last item done, counts so far, and when the period was completed."""

    __tablename__ = "job_cursors"

    job_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    period_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str | None] = mapped_column(Text)
    batches: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    processed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    stats: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    runs: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completed_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class LedgerMismatch(Base):
    """An account whose cached balance, grants and ledger disagreed when the reconciliation job looked."""

    __tablename__ = "ledger_mismatches"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    detected_at: Mapped[datetime]
    problems: Mapped[list[str]] = mapped_column(JSONB)
    figures: Mapped[dict[str, Any]] = mapped_column(JSONB)
    resolved_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


# The metrics AnalyticsRollup writes (tollgate/jobs/analytics.py: its queries define each; a test holds the two
# lists equal), named here so the reports read them without importing the job.
ANALYTICS_METRICS = (
    "mrr", "active_subscriptions", "new_users", "new_customers", "churned_subscriptions", "churn_rate", "revenue",
    "credits_granted", "credits_used", "credits_expired",
)  # fmt: skip


class AnalyticsMetric(Base):
    """One business metric for one UTC day (seed 004's analytics), per dimension (e.g. a currency)."""

    __tablename__ = "analytics"
    __table_args__ = (UniqueConstraint("day", "metric", "dimension"),)

    id: Mapped[UUIDPk]
    day: Mapped[date] = mapped_column(Date)
    metric: Mapped[str] = mapped_column(String(64))
    dimension: Mapped[str] = mapped_column(String(64), default="", server_default="")
    value: Mapped[Decimal] = mapped_column(Numeric(20, 4))
    computed_at: Mapped[datetime]


class AllowanceSchedule(Base):
    """When a user's next monthly allowance is due: periods start at local midnight on their own anchor day."""

    __tablename__ = "allowance_schedules"
    __table_args__ = (
        CheckConstraint("anchor_day BETWEEN 1 AND 31", name="anchor_day"),
        # The job takes due users in this order: an index scan stops after one batch.
        Index("ix_allowance_schedules_due", "next_reset_at", "user_id"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    anchor_day: Mapped[int] = mapped_column(SmallInteger)
    timezone: Mapped[str] = mapped_column(String(64))
    next_reset_at: Mapped[datetime]
    last_period_key: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[UpdatedAt]


class CreditNotice(Base):
    """A balance notice mailed to a user: recorded so each one goes out once (`key` says once per what)."""

    __tablename__ = "credit_notices"
    __table_args__ = (UniqueConstraint("user_id", "kind", "key"),)

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # low_balance, credits_expiring
    key: Mapped[str] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_at: Mapped[CreatedAt]
