"""Identity: the user, with every field the seed schemas keep for one (DESIGN.md §3)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Index, Integer, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk


class UserRole(enum.StrEnum):
    USER = "USER"
    SUPPORT = "SUPPORT"
    ADMIN = "ADMIN"


class UserStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    LOCKED = "LOCKED"  # e.g. a trial that ended without a paid plan
    DELETED = "DELETED"  # erased (GDPR, services/gdpr.py): never signs in again; added by 0021_user_admin


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        # Emails are unique whatever their case; kept as typed for display.
        Index("uq_users_email_lower", func.lower(text("email")), unique=True),
        CheckConstraint("role IN ('USER', 'SUPPORT', 'ADMIN')", name="role"),
        CheckConstraint("status IN ('ACTIVE', 'SUSPENDED', 'LOCKED', 'DELETED')", name="status"),
        Index("ix_users_created_at_id", "created_at", "id"),  # the admin user list, newest first
        CheckConstraint("downgrade_count >= 0", name="downgrade_count"),
        CheckConstraint("two_factor_method IN ('email', 'totp')", name="two_factor_method"),
    )

    id: Mapped[UUIDPk]
    email: Mapped[str] = mapped_column(String(320))
    email_verified_at: Mapped[datetime | None]
    name: Mapped[str | None] = mapped_column(String(200))
    username: Mapped[str | None] = mapped_column(String(64), unique=True)
    image: Mapped[str | None] = mapped_column(Text)
    password_hash: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(16), default=UserRole.USER, server_default=UserRole.USER.value)
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE, server_default=UserStatus.ACTIVE.value)
    two_factor_enabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # 'email' (a mailed code) or 'totp' while two_factor_enabled; added by 0003_auth.
    two_factor_method: Mapped[str | None] = mapped_column(String(8))
    # Sealed (AES-GCM envelope, tollgate.auth.sealing), never in clear; Text since 0008_auth_hardening.
    totp_secret: Mapped[str | None] = mapped_column(Text)
    totp_pending_secret: Mapped[str | None] = mapped_column(Text)
    # When the current second factor was turned on, and when the last sign-in that proved the password (and
    # the second factor, if any) completed: a reset drops a factor enrolled after that sign-in (0008).
    two_factor_enrolled_at: Mapped[datetime | None]
    password_login_at: Mapped[datetime | None]
    # The last TOTP time step accepted: a code is never accepted twice.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    password_changed_at: Mapped[datetime | None]
    clerk_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    lemonsqueezy_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    asaas_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    tier: Mapped[str] = mapped_column(String(32), default="FREE", server_default="FREE")
    trial_started_at: Mapped[datetime | None]
    trial_ends_at: Mapped[datetime | None]
    trial_used: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Moves to a cheaper tier; seed 001 allows at most 2 during a trial (services/billing.py refuses a third).
    downgrade_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When a subscription's plan (price) last changed; added by 0018_plan_changes.
    last_plan_change_at: Mapped[datetime | None]
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    language: Mapped[str] = mapped_column(String(16), default="en", server_default="en")
    last_login_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    deleted_at: Mapped[datetime | None]

    @property
    def email_verified(self) -> bool:
        return self.email_verified_at is not None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None
