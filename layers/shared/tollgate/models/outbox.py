"""Domain events out (issue 17): the transactional outbox, its per-target deliveries and the webhook endpoints
admins register.

An `outbox_events` row is written in the same transaction as the change it announces, so an event exists exactly
when its change does. The relay (`tollgate.jobs.outbox_relay`) fans each event out into one `outbox_deliveries` row
per target (the EventBridge bus, each internal consumer of its type, each webhook endpoint subscribed to it) and
delivers every row at least once, retrying with backoff until it gives up into DEAD.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk


class DeliveryStatus(enum.StrEnum):
    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"


class OutboxEvent(Base):
    __tablename__ = "outbox_events"
    __table_args__ = (
        UniqueConstraint("dedupe_key", name="uq_outbox_events_dedupe_key"),
        # The relay's fan-out queue: only events not yet fanned out, oldest first (a small partial index).
        Index("ix_outbox_events_undispatched", "id", postgresql_where=text("dispatched_at IS NULL")),
        Index("ix_outbox_events_user_id", "user_id", "id"),
    )

    # A UUIDv7 made in Python at emit: the event's stable id, the same on every delivery and every retry.
    id: Mapped[UUIDPk]
    type: Mapped[str] = mapped_column(String(64))
    # No foreign key: an event outlives the account it speaks of (a deletion is itself news to deliver).
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    dedupe_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[CreatedAt]
    # Set when the relay has written this event's deliveries (one per target).
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_active", "id", postgresql_where=text("deleted_at IS NULL")),)

    id: Mapped[UUIDPk]
    url: Mapped[str] = mapped_column(String(2048))
    # Event types this endpoint receives; "*" means every type.
    events: Mapped[list[str]] = mapped_column(ARRAY(String(64)))
    # The `whsec_` signing secret, sealed (tollgate.auth.sealing): shown once at creation, never again.
    secret_sealed: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(255), default="", server_default="")
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    # Deleted endpoints stay (their delivery log with them) but receive nothing more.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class OutboxDelivery(Base):
    __tablename__ = "outbox_deliveries"
    __table_args__ = (
        CheckConstraint("status IN ('PENDING', 'DELIVERED', 'DEAD')", name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        UniqueConstraint("event_id", "target", name="uq_outbox_deliveries_event_id"),
        # The relay's delivery queue: due PENDING rows only.
        Index(
            "ix_outbox_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'PENDING'"),
        ),
        Index("ix_outbox_deliveries_endpoint_id", "endpoint_id", "id"),
        Index("ix_outbox_deliveries_dead", "id", postgresql_where=text("status = 'DEAD'")),
    )

    id: Mapped[UUIDPk]
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("outbox_events.id", ondelete="CASCADE"))
    # "eventbridge", "consumer:<module.function>" or "webhook:<endpoint id>".
    target: Mapped[str] = mapped_column(String(255))
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING, server_default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the row is next due; while a relay holds a claim it is the claim's lease end.
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=text("now()"))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    # A small prefix of the last response body, never more (tollgate.jobs.outbox_relay.RESPONSE_PREFIX_CHARS).
    last_response: Mapped[str | None] = mapped_column(String(512))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[CreatedAt]
