"""Domain events out: `emit` writes one `outbox_events` row in the caller's transaction (issue 17).

The event exists exactly when the change it announces is committed: `emit` never commits, so a rolled-back
change leaves no event. Each event gets a stable id (a UUIDv7 made here) that every delivery and every retry
carries, so consumers deduplicate on it. The relay (`tollgate.jobs.outbox_relay`) delivers each event at least
once to the EventBridge bus, to the webhook endpoints subscribed to its type, and to the internal consumers
registered here by event type.

A consumer is `fn(event: OutboxMessage) -> None`; it runs outside any transaction holding the relay's locks (a
provider call may happen in it), must be idempotent on `event.id`, and a raised exception is retried with backoff
without blocking other events. Register it at import time of its module with `register_consumer(type, fn)` and
list that module in `tollgate.jobs.outbox_relay.CONSUMER_MODULES`, so the relay imports it before delivering.

This module sits low (it imports only db and models): the ledger and services import it.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from tollgate.db.base import new_id
from tollgate.models.outbox import OutboxEvent


class EventType(enum.StrEnum):
    CREDITS_LOW = "credits.low"
    CREDITS_DEPLETED = "credits.depleted"
    CREDITS_GRANTED = "credits.granted"
    PURCHASE_COMPLETED = "purchase.completed"
    ORDER_COMPLETED = "order.completed"
    SUBSCRIPTION_CHANGED = "subscription.changed"
    REFUND_COMPLETED = "refund.completed"
    AUTO_TOPUP_FAILED = "auto_topup.failed"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One event as a consumer sees it (and as EventBridge's Detail and a webhook body carry it)."""

    id: uuid.UUID
    type: str
    created_at: datetime
    user_id: uuid.UUID | None
    data: dict[str, Any] = field(default_factory=dict)

    def as_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "created_at": self.created_at.isoformat(),
            "user_id": str(self.user_id) if self.user_id is not None else None,
            "data": self.data,
        }


Consumer = Callable[[OutboxMessage], None]
_CONSUMERS: dict[str, dict[str, Consumer]] = {}


def consumer_name(fn: Consumer) -> str:
    return f"{fn.__module__}.{getattr(fn, '__qualname__', repr(fn))}"


def register_consumer(event_type: str, fn: Consumer) -> Consumer:
    """Deliver every `event_type` event to `fn` (at least once, after its transaction committed).

    Usable as a plain call or a decorator factory's result; registering the same function twice is one consumer.
    """
    _CONSUMERS.setdefault(event_type, {})[consumer_name(fn)] = fn
    return fn


def consumers_for(event_type: str) -> Mapping[str, Consumer]:
    return dict(_CONSUMERS.get(event_type, {}))


def consumer_by_name(name: str) -> Consumer | None:
    for consumers in _CONSUMERS.values():
        if name in consumers:
            return consumers[name]
    return None


def unregister_consumer(event_type: str, fn: Consumer) -> None:
    _CONSUMERS.get(event_type, {}).pop(consumer_name(fn), None)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: amounts as decimal strings and times in ISO 8601, as the HTTP API writes them.

    Whatever JSONB cannot hold becomes text (an object its str, bytes base64, NaN/Infinity their names, NUL
    U+FFFD): an event's data never makes the change it announces fail.
    """
    if isinstance(value, Mapping):
        return {str(k).replace("\x00", "\ufffd"): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else json.dumps(value)
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return _jsonable(value.value)
    return str(value).replace("\x00", "\ufffd")


def emit(
    session: Session,
    event_type: str,
    *,
    user_id: uuid.UUID | None,
    data: dict[str, Any],
    dedupe_key: str | None = None,
) -> uuid.UUID:
    """Write one event in the caller's transaction and return its id; never commits.

    With a `dedupe_key`, a second emit with the same key (in this or any other transaction) writes nothing and
    returns the first event's id; a concurrent emit with the same key waits for the first transaction's outcome.
    """
    event_id = new_id()
    values = {
        "id": event_id,
        "type": str(event_type),
        "user_id": user_id,
        "data": _jsonable(data),
        "dedupe_key": dedupe_key,
    }
    if dedupe_key is None:
        session.execute(insert(OutboxEvent).values(values))
        return event_id
    inserted = session.execute(
        pg_insert(OutboxEvent)
        .values(values)
        .on_conflict_do_nothing(index_elements=[OutboxEvent.dedupe_key])
        .returning(OutboxEvent.id)
    ).scalar_one_or_none()
    if inserted is not None:
        return inserted
    existing = session.execute(select(OutboxEvent.id).where(OutboxEvent.dedupe_key == dedupe_key)).scalar_one()
    return existing


@dataclass(frozen=True, slots=True)
class OutboxItem:
    type: str
    user_id: uuid.UUID | None
    data: dict[str, Any]


def emit_many(session: Session, items: list[OutboxItem]) -> list[uuid.UUID]:
    """Many events without dedupe keys in one INSERT (a batch job's grants), in the caller's transaction."""
    if not items:
        return []
    rows = [
        {"id": new_id(), "type": str(i.type), "user_id": i.user_id, "data": _jsonable(i.data), "dedupe_key": None}
        for i in items
    ]
    session.execute(insert(OutboxEvent), rows)
    return [r["id"] for r in rows]
