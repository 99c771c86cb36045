"""Identity beyond the user row: sign-in sessions, one-time tokens, 2FA challenges, API keys, OAuth links,
failed-login counters and the mail log (DESIGN.md §3 "identity" and "files & mail").

Every secret a client holds (refresh tokens, API keys, mailed links and codes) is stored only as a
SHA-256 hash.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

HASH_LEN = 64  # hex SHA-256


class OAuthAccount(Base):
    """A provider identity linked to a user (one row per provider account)."""

    __tablename__ = "oauth_accounts"
    __table_args__ = (
        UniqueConstraint("provider", "provider_account_id", name="uq_oauth_accounts_provider_account"),
        CheckConstraint("provider IN ('google', 'github')", name="provider"),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    provider_account_id: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    # Tollgate never calls a provider on the user's behalf, so provider tokens are not kept (see README);
    # their expiry, type and granted scope are, for the record.
    token_type: Mapped[str | None] = mapped_column(String(32))
    scope: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class OAuthState(Base):
    """A pending OAuth authorization: the state (hashed) and the PKCE verifier, single-use, short-lived."""

    __tablename__ = "oauth_states"

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    state_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    # Sealed (tollgate.auth.sealing): it must be read back at the callback, so it cannot be a hash.
    code_verifier: Mapped[str] = mapped_column(Text)
    redirect_uri: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime]
    created_at: Mapped[CreatedAt]


class AuthSession(Base):
    """One refresh token. Rotation keeps a family: every token issued from one sign-in shares `family_id`,
    which is the session id clients and access tokens (`sid`) see. A rotated token presented again revokes
    its whole family."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_family_id", "family_id"),)

    id: Mapped[UUIDPk]
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    refresh_token_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    expires_at: Mapped[datetime]
    rotated_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    last_used_at: Mapped[datetime | None]
    # When this family last proved the password (and second factor): the step-up clock, carried across
    # rotations and into access tokens as `auth_time`. NULL for sign-ins that did not (OAuth).
    authenticated_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class VerificationToken(Base):
    """A registration waiting for its link. The password hash, name and username it asked for live here, not
    on the user, so a registration that is never confirmed leaves nothing a later one inherits; confirming
    the link is what writes them to the account."""

    __tablename__ = "verification_tokens"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(200))
    username: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class PasswordResetToken(Base):
    __tablename__ = "password_reset_tokens"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class TwoFactorConfirmation(Base):
    """A login challenge: the password was right, the second factor is pending. Its id is `challenge_id`."""

    __tablename__ = "two_factor_confirmations"
    __table_args__ = (
        CheckConstraint("method IN ('email', 'totp')", name="method"),
        CheckConstraint("attempts >= 0", name="attempts"),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(8))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    expires_at: Mapped[datetime]
    confirmed_at: Mapped[datetime | None]
    locked_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class TwoFactorToken(Base):
    """A mailed 2FA code, bound to the login challenge that made it."""

    __tablename__ = "two_factor_tokens"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    challenge_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("two_factor_confirmations.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(HASH_LEN))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    # What the key may do (tollgate.auth.scopes); credential routes admit no key whatever it holds.
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(32)), default=list, server_default="{}")
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class RecoveryCode(Base):
    """One of the ten one-time codes a TOTP user may sign in with instead of a TOTP code (hashed)."""

    __tablename__ = "recovery_codes"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    used_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class SecurityLockToken(Base):
    """The one-time link of a security notice: it locks the account's credentials for its owner to recover
    with a password reset. `event` names the change the notice was about."""

    __tablename__ = "security_lock_tokens"

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(32))
    token_hash: Mapped[str] = mapped_column(String(HASH_LEN), unique=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class AuthThrottle(Base):
    """Failed sign-in attempts per account (the normalised email, known or not) and per source IP,
    mail-sending requests per source IP, and wrong discount codes per user and per source IP."""

    __tablename__ = "auth_throttles"
    __table_args__ = (
        CheckConstraint("scope IN ('account', 'ip', 'mail', 'discount_user', 'discount_ip')", name="scope"),
    )

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(320), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    window_started_at: Mapped[datetime]
    blocked_until: Mapped[datetime | None]
    updated_at: Mapped[UpdatedAt]


class EmailLog(Base):
    """Every message the mail service was asked to send, whatever became of it."""

    __tablename__ = "email_logs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'sent', 'failed', 'suppressed', 'delivered', 'bounced', 'complained')", name="status"
        ),  # delivered, bounced, complained: from the provider's notifications (0023_reports)
        Index("ix_email_logs_type_recipient_created", "type", "recipient", "created_at"),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id", ondelete="SET NULL"), index=True)
    recipient: Mapped[str] = mapped_column(String(320))
    type: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    message_id: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, object] | None] = mapped_column("metadata", JSONB)
    sent_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
