"""The support desk and run-time settings (seed 004 `SupportTicket`, `TicketMessage`, `SystemConfig`).

A ticket belongs to the customer who opened it; staff (SUPPORT, ADMIN) may be assigned to it. Its messages are
public replies (either side) or internal notes (staff only, never shown or mailed to the customer).
`system_config` holds typed settings admins change at run time (read through `tollgate.system_config`); the
value is kept as text in the canonical form of its type, and the database refuses a value that is not of it.
Migration `0020_support` creates the three tables.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, Uuid, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

TICKET_STATUSES = ("OPEN", "IN_PROGRESS", "RESOLVED", "CLOSED")
TICKET_PRIORITIES = ("LOW", "MEDIUM", "HIGH", "URGENT")
CONFIG_TYPES = ("string", "number", "boolean", "json")

SUBJECT_MAX_LENGTH = 200
TEXT_MAX_LENGTH = 10_000
CONFIG_KEY_MAX_LENGTH = 64
CONFIG_VALUE_MAX_LENGTH = 16_384
CONFIG_DESCRIPTION_MAX_LENGTH = 500

# A number is stored as a plain decimal (no exponent, no leading +): exact, and one spelling per value.
NUMBER_TEXT = r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$"


def _sql_list(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class SupportTicket(Base):
    __tablename__ = "support_tickets"
    __table_args__ = (
        Index("ix_support_tickets_customer_id", "customer_id", "id"),
        Index("ix_support_tickets_status", "status", "id"),
        Index("ix_support_tickets_assignee_id", "assignee_id", "id"),
        CheckConstraint(f"status IN ({_sql_list(TICKET_STATUSES)})", name="status"),
        CheckConstraint(f"priority IN ({_sql_list(TICKET_PRIORITIES)})", name="priority"),
    )

    id: Mapped[UUIDPk]
    customer_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    assignee_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    subject: Mapped[str] = mapped_column(String(SUBJECT_MAX_LENGTH))
    description: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="OPEN", server_default="OPEN")
    priority: Mapped[str] = mapped_column(String(16), default="MEDIUM", server_default="MEDIUM")
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, default=dict, server_default=text("'{}'::jsonb")
    )
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    resolved_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]


class TicketMessage(Base):
    __tablename__ = "ticket_messages"
    __table_args__ = (
        Index("ix_ticket_messages_ticket_id", "ticket_id", "id"),
        CheckConstraint("NOT (is_internal AND NOT from_staff)", name="internal_is_staff"),
    )

    id: Mapped[UUIDPk]
    ticket_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("support_tickets.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    content: Mapped[str] = mapped_column(Text)
    is_internal: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    # Which side wrote it (the staff desk or the customer's own routes): fixed when written, whatever the
    # author's role becomes later.
    from_staff: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    created_at: Mapped[CreatedAt]


class SystemConfig(Base):
    __tablename__ = "system_config"
    __table_args__ = (
        UniqueConstraint("key", name="uq_system_config_key"),
        CheckConstraint(f"type IN ({_sql_list(CONFIG_TYPES)})", name="type"),
        CheckConstraint(
            "CASE type WHEN 'number' THEN value ~ '" + NUMBER_TEXT + "' "
            "WHEN 'boolean' THEN value IN ('true', 'false') "
            "WHEN 'json' THEN value IS JSON "
            "ELSE true END",
            name="value_matches_type",
        ),
    )

    id: Mapped[UUIDPk]
    key: Mapped[str] = mapped_column(String(CONFIG_KEY_MAX_LENGTH))
    value: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))
    description: Mapped[str | None] = mapped_column(String(CONFIG_DESCRIPTION_MAX_LENGTH))
    updated_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
