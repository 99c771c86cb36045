"""Outbound webhook endpoints (issue 17), admins only: register (the `whsec_` secret is answered once and stored
sealed), list, delete, read an endpoint's delivery log, replay one delivery. Every change is audit-logged."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, text, update

from tollgate import ledger
from tollgate.auth.sealing import seal
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import Conflict, NotFound, ValidationFailed
from tollgate.models.outbox import DeliveryStatus, OutboxDelivery, OutboxEvent, WebhookEndpoint
from tollgate.outbound_webhooks import check_url, new_secret, secret_context
from tollgate.outbox import EventType
from tollgate.pagination import Page, keyset_page
from tollgate.services.authz import ADMIN, Actor, require_role

EVENT_TYPES = frozenset(str(t) for t in EventType)
MAX_ENDPOINTS = 50


@dataclass(frozen=True, slots=True)
class EndpointView:
    id: uuid.UUID
    url: str
    events: list[str]
    description: str
    created_at: datetime

    @classmethod
    def of(cls, e: WebhookEndpoint) -> EndpointView:
        return cls(e.id, e.url, list(e.events), e.description, e.created_at)


@dataclass(frozen=True, slots=True)
class CreatedEndpoint:
    endpoint: EndpointView
    secret: str  # shown this once


@dataclass(frozen=True, slots=True)
class DeliveryView:
    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    last_response: str | None
    delivered_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, d: OutboxDelivery, event_type: str) -> DeliveryView:
        return cls(
            d.id, d.event_id, event_type, d.status, d.attempts, d.next_attempt_at, d.last_attempt_at,
            d.last_status_code, d.last_error, d.last_response, d.delivered_at, d.created_at,
        )  # fmt: skip


def _admin(actor: Actor) -> None:
    require_role(actor, ADMIN)


def _events(events: list[str]) -> list[str]:
    unknown = sorted(set(events) - EVENT_TYPES - {"*"})
    if not events or unknown:
        raise ValidationFailed(
            "events must name known event types (or *)",
            details={"field": "events", "unknown": unknown, "allowed": sorted(EVENT_TYPES)},
        )
    return sorted(set(events))


def _live(uow: UnitOfWork, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = uow.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.deleted_at is not None:
        raise NotFound("no such webhook endpoint", details={"endpoint_id": str(endpoint_id)})
    return endpoint


def create_endpoint(
    uow: UnitOfWork, actor: Actor, *, url: str, events: list[str], description: str = ""
) -> CreatedEndpoint:
    _admin(actor)
    checked = check_url(url, allow_local=get_settings().outbox_delivery == "local")
    wanted = _events(events)
    secret = new_secret()
    endpoint_id = new_id()
    with uow:
        # Registrations one at a time (for this transaction only): the cap and the duplicate check hold under races.
        uow.session.execute(text("SELECT pg_advisory_xact_lock(hashtext('webhook_endpoints.create'))"))
        live = uow.session.execute(
            select(WebhookEndpoint.id).where(WebhookEndpoint.deleted_at.is_(None)).limit(MAX_ENDPOINTS)
        ).all()
        if len(live) >= MAX_ENDPOINTS:
            raise ValidationFailed(f"at most {MAX_ENDPOINTS} webhook endpoints", details={"field": "url"})
        duplicate = uow.session.execute(
            select(WebhookEndpoint.id).where(WebhookEndpoint.deleted_at.is_(None), WebhookEndpoint.url == checked)
        ).scalar_one_or_none()
        if duplicate is not None:
            # Two endpoints at one URL would receive every event twice; delete the old one to change its events.
            raise Conflict(
                "a webhook endpoint with this URL is already registered",
                details={"field": "url", "endpoint_id": str(duplicate)},
            )
        endpoint = WebhookEndpoint(
            id=endpoint_id,
            url=checked,
            events=wanted,
            secret_sealed=seal(secret, secret_context(endpoint_id)),
            description=description,
            created_by=actor.user_id,
        )
        uow.session.add(endpoint)
        uow.session.flush()
        ledger.audit(
            uow.session, actor_id=actor.user_id, action="webhook_endpoint.create", target_type="webhook_endpoint",
            target_id=str(endpoint_id), details={"url": checked, "events": wanted},
        )  # fmt: skip
        view = EndpointView.of(endpoint)
        uow.commit()
        return CreatedEndpoint(view, secret)


def list_endpoints(uow: UnitOfWork, actor: Actor, *, cursor: str | None, limit: int | None) -> Page[EndpointView]:
    _admin(actor)
    with uow:
        statement = select(WebhookEndpoint).where(WebhookEndpoint.deleted_at.is_(None))
        page = keyset_page(uow.session, statement, WebhookEndpoint.id, cursor=cursor, limit=limit, descending=True)
        return Page([EndpointView.of(e) for e in page.items], page.next_cursor)


def delete_endpoint(uow: UnitOfWork, actor: Actor, endpoint_id: uuid.UUID) -> None:
    """The endpoint receives nothing more (its pending deliveries end DEAD); its delivery log stays."""
    _admin(actor)
    with uow:
        endpoint = _live(uow, endpoint_id)
        endpoint.deleted_at = utcnow()
        ledger.audit(
            uow.session, actor_id=actor.user_id, action="webhook_endpoint.delete", target_type="webhook_endpoint",
            target_id=str(endpoint_id), details={"url": endpoint.url},
        )  # fmt: skip
        uow.commit()


def list_deliveries(
    uow: UnitOfWork,
    actor: Actor,
    endpoint_id: uuid.UUID,
    *,
    status: str | None,
    cursor: str | None,
    limit: int | None,
) -> Page[DeliveryView]:
    """The endpoint's delivery log, newest first (a deleted endpoint's log too)."""
    _admin(actor)
    if status is not None and status not in set(DeliveryStatus):
        raise ValidationFailed("unknown status", details={"field": "status", "allowed": list(DeliveryStatus)})
    with uow:
        if uow.session.get(WebhookEndpoint, endpoint_id) is None:
            raise NotFound("no such webhook endpoint", details={"endpoint_id": str(endpoint_id)})
        statement = select(OutboxDelivery).where(OutboxDelivery.endpoint_id == endpoint_id)
        if status is not None:
            statement = statement.where(OutboxDelivery.status == status)
        page = keyset_page(uow.session, statement, OutboxDelivery.id, cursor=cursor, limit=limit, descending=True)
        ids = [d.event_id for d in page.items]
        found = uow.session.execute(select(OutboxEvent.id, OutboxEvent.type).where(OutboxEvent.id.in_(ids))).all()
        types = {row.id: row.type for row in found}
        return Page([DeliveryView.of(d, types.get(d.event_id, "")) for d in page.items], page.next_cursor)


@dataclass(frozen=True, slots=True)
class OutboxDeliveryView:
    target: str
    delivery: DeliveryView


def list_outbox_deliveries(
    uow: UnitOfWork, actor: Actor, *, status: str | None, cursor: str | None, limit: int | None
) -> Page[OutboxDeliveryView]:
    """The EventBridge and internal-consumer deliveries (webhook ones are in their endpoint's log), newest first:
    the dead ones are what an admin looks for."""
    _admin(actor)
    if status is not None and status not in set(DeliveryStatus):
        raise ValidationFailed("unknown status", details={"field": "status", "allowed": list(DeliveryStatus)})
    with uow:
        statement = select(OutboxDelivery).where(OutboxDelivery.endpoint_id.is_(None))
        if status is not None:
            statement = statement.where(OutboxDelivery.status == status)
        page = keyset_page(uow.session, statement, OutboxDelivery.id, cursor=cursor, limit=limit, descending=True)
        ids = [d.event_id for d in page.items]
        found = uow.session.execute(select(OutboxEvent.id, OutboxEvent.type).where(OutboxEvent.id.in_(ids))).all()
        types = {row.id: row.type for row in found}
        return Page(
            [OutboxDeliveryView(d.target, DeliveryView.of(d, types.get(d.event_id, ""))) for d in page.items],
            page.next_cursor,
        )


def replay_delivery(
    uow: UnitOfWork, actor: Actor, endpoint_id: uuid.UUID, delivery_id: uuid.UUID, *, now: datetime | None = None
) -> DeliveryView:
    """Deliver again at the next relay pass, with the same event id (a fresh set of attempts)."""
    _admin(actor)
    now = now or utcnow()
    with uow:
        _live(uow, endpoint_id)
        delivery = uow.session.execute(
            select(OutboxDelivery)
            .where(OutboxDelivery.id == delivery_id, OutboxDelivery.endpoint_id == endpoint_id)
            .with_for_update()
        ).scalar_one_or_none()
        if delivery is None:
            raise NotFound("no such delivery", details={"delivery_id": str(delivery_id)})
        uow.session.execute(
            update(OutboxDelivery)
            .where(OutboxDelivery.id == delivery_id)
            .values(status=DeliveryStatus.PENDING, attempts=0, next_attempt_at=now, delivered_at=None)
        )
        ledger.audit(
            uow.session, actor_id=actor.user_id, action="webhook_delivery.replay", target_type="outbox_delivery",
            target_id=str(delivery_id), details={"endpoint_id": str(endpoint_id), "event_id": str(delivery.event_id)},
        )  # fmt: skip
        event_type = uow.session.execute(
            select(OutboxEvent.type).where(OutboxEvent.id == delivery.event_id)
        ).scalar_one()
        uow.session.refresh(delivery)
        view = DeliveryView.of(delivery, event_type)
        uow.commit()
        return view
