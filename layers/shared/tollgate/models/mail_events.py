"""What became of sent mail (issue 14): the provider's delivery notifications (SES through SNS in AWS, `tollgate
mail simulate` locally) and the addresses that must get no more non-essential mail (migration 0023_reports)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UUIDPk
from tollgate.models.auth import EmailLog

MAIL_EVENT_TYPES = ("delivery", "bounce", "complaint", "other")
# applied: it changed the log (or confirmed it); unknown_message: no email_logs row has its message id;
# superseded: the log already says something later (a delivery after a bounce never undoes the bounce).
MAIL_EVENT_OUTCOMES = ("applied", "unknown_message", "superseded")
SUPPRESSION_REASONS = ("bounce", "complaint")

# The notification names the message by the provider's id: found by an index, not a scan of every log.
Index("ix_email_logs_message_id", EmailLog.message_id, postgresql_where=text("message_id IS NOT NULL"))


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class MailEvent(Base):
    """One delivery notification, stored once per (provider, notification id): a replay changes nothing."""

    __tablename__ = "mail_events"
    __table_args__ = (
        UniqueConstraint("provider", "notification_id"),
        CheckConstraint(f"type IN ({_sql_list(MAIL_EVENT_TYPES)})", name="type"),
        CheckConstraint(f"outcome IN ({_sql_list(MAIL_EVENT_OUTCOMES)})", name="outcome"),
        Index("ix_mail_events_email_log_id", "email_log_id"),
    )

    id: Mapped[UUIDPk]
    provider: Mapped[str] = mapped_column(String(16))
    notification_id: Mapped[str] = mapped_column(String(255))  # SNS MessageId
    message_id: Mapped[str] = mapped_column(String(255))  # the provider's id of the mail (email_logs.message_id)
    email_log_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("email_logs.id", ondelete="SET NULL"))
    type: Mapped[str] = mapped_column(String(16))
    subtype: Mapped[str | None] = mapped_column(String(64))  # e.g. Permanent/General, abuse
    outcome: Mapped[str] = mapped_column(String(24))
    details: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    occurred_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]


class EmailSuppression(Base):
    """An address that bounced for good or complained: it gets only essential mail (sign-in, verification,
    password reset, security notices) from then on."""

    __tablename__ = "email_suppressions"
    __table_args__ = (CheckConstraint(f"reason IN ({_sql_list(SUPPRESSION_REASONS)})", name="reason"),)

    email: Mapped[str] = mapped_column(String(320), primary_key=True)  # lower case
    reason: Mapped[str] = mapped_column(String(16))
    mail_event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("mail_events.id", ondelete="SET NULL"))
    created_at: Mapped[CreatedAt]
