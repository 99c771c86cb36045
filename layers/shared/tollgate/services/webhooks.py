"""Receiving provider webhooks (DESIGN.md §5), and replaying stored ones.

1. Verify the signature on the raw body (`tollgate.payments.signatures`); a bad or stale one raises
   `InvalidSignature` (400) and nothing is stored.
2. In ONE transaction: claim the event in `webhook_events` (unique on provider + event id; a concurrent
   delivery of the same event waits on the row and then sees it done), apply it, record the outcome, commit.
   A duplicate of an applied event answers 2xx and changes nothing.
3. Events of the other mode (test events on a live deployment, live ones on a test deployment; see
   PAYMENTS_LIVE_MODE) are stored as `ignored` and answer 2xx.
4. Any failure rolls the whole event back; a second transaction records the attempt (`failed`, attempts, error,
   the payload for replay) and `WebhookProcessingFailed` answers 5xx so the provider retries. The next delivery
   (or `tollgate webhooks replay`, POST /admin/webhooks/{event_id}/replay) applies it from scratch. A database
   that cannot serve (`tollgate.db.engine.is_unavailable`) is `WebhookDatabaseUnavailable` instead: 503
   with Retry-After (recording the attempt is tried; it fails too when the database is down).
Events no retry can fix (a checkout for an unknown pack, an amount that does not match) are stored as
`rejected` with the reason, and answer 2xx.

Provider calls never run inside the event's transaction (it holds row locks): a provider module may define
`prefetch(payload, uow_factory) -> dict`, called BEFORE the unit of work opens (deliveries and replays alike; it may
read what it needs in its own short unit of work, closed before it calls out); what it returns reaches the handlers
as `ctx.fetched`. A fetch that fails is a failure like any other (recorded `failed`, 5xx,
nothing applied), except for a redelivery of an event already applied, which stays a 2xx duplicate.
"""

from __future__ import annotations

import importlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.db.engine import is_unavailable
from tollgate.errors import (
    Conflict,
    TollgateError,
    ValidationFailed,
    WebhookDatabaseUnavailable,
    WebhookEventNotFound,
    WebhookProcessingFailed,
)
from tollgate.observability import logger
from tollgate.payments.signatures import (
    VerifiedEvent,
    parse_time,
    verify_asaas,
    verify_clerk,
    verify_lemonsqueezy,
    verify_stripe,
)
from tollgate.services.authz import ADMIN, OPERATOR, Actor, audit, require_role
from tollgate.services.payment_events.handling import Ctx, Outcome

PROVIDERS = ("stripe", "lemonsqueezy", "clerk", "asaas")
DONE = frozenset({"processed", "ignored", "rejected"})
# A provider module's pre-transaction fetch: (payload, uow_factory) -> what its handlers find in `ctx.fetched`.
Prefetch = Callable[[dict[str, Any], Callable[[], UnitOfWork]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class WebhookReceipt:
    id: uuid.UUID
    provider: str
    event_id: str
    type: str
    status: str  # processed | ignored | rejected
    duplicate: bool = False
    detail: dict[str, Any] = field(default_factory=dict)


def verify(provider: str, raw: bytes, headers: Mapping[str, str]) -> VerifiedEvent:
    settings = get_settings()

    def secret(value: Any) -> str | None:
        return value.get_secret_value() if value is not None else None

    if provider == "stripe":
        return verify_stripe(
            raw, headers, secret(settings.stripe_webhook_secret), tolerance=settings.webhook_tolerance_seconds
        )
    if provider == "lemonsqueezy":
        return verify_lemonsqueezy(raw, headers, secret(settings.lemonsqueezy_webhook_secret))
    if provider == "clerk":
        return verify_clerk(raw, headers, secret(settings.clerk_webhook_secret))
    if provider == "asaas":
        return verify_asaas(raw, headers, secret(settings.asaas_webhook_token))
    raise ValidationFailed(f"unknown provider {provider!r}", details={"allowed": list(PROVIDERS)})


def _dispatch(ctx: Ctx, payload: dict[str, Any]) -> Outcome:
    if ctx.provider == "stripe":
        from tollgate.services.payment_events import stripe_events

        return stripe_events.handle(ctx, payload)
    if ctx.provider == "lemonsqueezy":
        from tollgate.services.payment_events import lemonsqueezy_events

        return lemonsqueezy_events.handle(ctx, payload)
    if ctx.provider == "asaas":
        from tollgate.services.payment_events import asaas_events

        return asaas_events.handle(ctx, payload)
    from tollgate.services.payment_events import clerk_events

    return clerk_events.handle(ctx, payload)


def _prefetch(event: VerifiedEvent, uow_factory: Callable[[], UnitOfWork]) -> dict[str, Any]:
    """What the provider module (`payment_events.<provider>_events`) fetches for this event from the provider's
    API, outside any transaction. A module without `prefetch` needs nothing."""
    if _mode_mismatch(event.livemode):
        return {}  # stored as ignored: nothing to fetch for it
    name = f"tollgate.services.payment_events.{event.provider}_events"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return {}
    prefetch: Prefetch | None = getattr(module, "prefetch", None)
    return prefetch(event.payload, uow_factory) if prefetch is not None else {}


def _stored_status(uow_factory: Callable[[], UnitOfWork], event: VerifiedEvent) -> tuple[uuid.UUID, str] | None:
    with uow_factory() as uow:
        row = uow.session.execute(
            text("SELECT id, status FROM webhook_events WHERE provider = :provider AND event_id = :event_id"),
            {"provider": event.provider, "event_id": event.event_id},
        ).first()
    return (row.id, row.status) if row is not None else None


def _stored_status_or_none(uow_factory: Callable[[], UnitOfWork], event: VerifiedEvent) -> tuple[uuid.UUID, str] | None:
    try:
        return _stored_status(uow_factory, event)
    except Exception:  # the fetch's failure is the one to answer with
        return None


def _mode_mismatch(livemode: bool | None) -> bool:
    return livemode is not None and livemode != get_settings().payments_live_mode


def _claim(session: Session, event: VerifiedEvent, now: datetime) -> tuple[uuid.UUID, str | None]:
    """Insert the event, or lock the stored one. Returns (row id, previous status or None when new)."""
    row = session.execute(
        text(
            "INSERT INTO webhook_events (id, provider, event_id, type, livemode, payload, status, attempts, "
            "received_at, provider_created_at) VALUES (:id, :provider, :event_id, :type, :livemode, "
            "CAST(:payload AS jsonb), 'processing', 0, :now, :created) "
            "ON CONFLICT (provider, event_id) DO NOTHING RETURNING id"
        ),
        {
            "id": new_id(),
            "provider": event.provider,
            "event_id": event.event_id,
            "type": event.type,
            "livemode": event.livemode,
            "payload": event.raw,
            "now": now,
            "created": event.created_at,
        },
    ).first()
    if row is not None:
        return row.id, None
    stored = session.execute(
        text("SELECT id, status FROM webhook_events WHERE provider = :provider AND event_id = :event_id FOR UPDATE"),
        {"provider": event.provider, "event_id": event.event_id},
    ).one()
    return stored.id, stored.status


def _finish(session: Session, row_id: uuid.UUID, outcome: Outcome, now: datetime) -> None:
    session.execute(
        text(
            "UPDATE webhook_events SET status = :status, outcome = CAST(:outcome AS jsonb), error = NULL, "
            "attempts = attempts + 1, processed_at = :now WHERE id = :id"
        ),
        {"status": outcome.status, "outcome": json.dumps(outcome.detail, default=str), "now": now, "id": row_id},
    )


def _record_failure(uow_factory: Callable[[], UnitOfWork], event: VerifiedEvent, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"[:2000]
    try:
        with uow_factory() as uow:
            uow.session.execute(
                text(
                    "INSERT INTO webhook_events (id, provider, event_id, type, livemode, payload, status, attempts, "
                    "error, received_at, provider_created_at) VALUES (:id, :provider, :event_id, :type, :livemode, "
                    "CAST(:payload AS jsonb), 'failed', 1, :error, :now, :created) "
                    "ON CONFLICT (provider, event_id) DO UPDATE SET status = 'failed', "
                    "attempts = webhook_events.attempts + 1, error = EXCLUDED.error "
                    "WHERE webhook_events.status NOT IN ('processed', 'ignored', 'rejected')"
                ),
                {
                    "id": new_id(),
                    "provider": event.provider,
                    "event_id": event.event_id,
                    "type": event.type,
                    "livemode": event.livemode,
                    "payload": event.raw,
                    "error": message,
                    "now": utcnow(),
                    "created": event.created_at,
                },
            )
            uow.commit()
    except Exception:  # the provider retries anyway; never hide the original failure behind this one
        logger.exception("could not record a webhook failure", extra={"event_id": event.event_id})


def _run_after_commit(actions: list[Callable[[], None]]) -> None:
    for action in actions:
        try:
            action()
        except Exception:  # mail and the like: the event is applied, a side effect failing must not undo it
            logger.exception("a webhook side effect failed")


def _apply(
    uow: UnitOfWork,
    row_id: uuid.UUID,
    event: VerifiedEvent,
    now: datetime,
    after: list[Callable[[], None]],
    fetched: dict[str, Any],
) -> Outcome:
    if _mode_mismatch(event.livemode):
        mode = "live" if event.livemode else "test"
        outcome = Outcome.ignored(f"a {mode}-mode event; PAYMENTS_LIVE_MODE={get_settings().payments_live_mode}")
    else:
        ctx = Ctx(
            session=uow.session,
            provider=event.provider,
            event_type=event.type,
            webhook_event_id=row_id,
            provider_time=event.created_at,
            livemode=event.livemode,
            now=now,
            after_commit=after,
            fetched=fetched,
        )
        outcome = _dispatch(ctx, event.payload)
        uow.session.flush()
    _finish(uow.session, row_id, outcome, now)
    return outcome


def process_event(
    event: VerifiedEvent, uow_factory: Callable[[], UnitOfWork] = UnitOfWork, *, force: bool = False
) -> WebhookReceipt:
    """Store and apply a verified event exactly once (`force`: re-apply even if already done, for replays)."""
    now = utcnow()
    after: list[Callable[[], None]] = []
    try:
        try:
            fetched = _prefetch(event, uow_factory)  # before the unit of work: no provider call while holding locks
        except Exception:
            stored = None if force else _stored_status_or_none(uow_factory, event)
            if stored is not None and stored[1] in DONE:
                return WebhookReceipt(stored[0], event.provider, event.event_id, event.type, stored[1], duplicate=True)
            raise
        with uow_factory() as uow:
            row_id, previous = _claim(uow.session, event, now)
            if previous in DONE and not force:
                return WebhookReceipt(row_id, event.provider, event.event_id, event.type, previous, duplicate=True)
            outcome = _apply(uow, row_id, event, now, after, fetched)
            uow.commit()
    except TollgateError as exc:
        if isinstance(exc, WebhookProcessingFailed):
            raise
        _record_failure(uow_factory, event, exc)
        logger.warning("webhook failed", extra={"provider": event.provider, "event_id": event.event_id})
        raise WebhookProcessingFailed(
            "the event could not be applied; it was rolled back and will be retried",
            details={"event_id": event.event_id, "reason": exc.code},
        ) from exc
    except Exception as exc:
        _record_failure(uow_factory, event, exc)
        if is_unavailable(exc):
            # Not the event's fault: 503 (still a 5xx, so the provider retries) rather than a 500 to investigate.
            logger.warning("webhook deferred: database unavailable", extra={"event_id": event.event_id})
            raise WebhookDatabaseUnavailable(
                "the database is unavailable; the event was rolled back and will be retried",
                details={"event_id": event.event_id, "reason": type(exc).__name__},
            ) from exc
        logger.exception("webhook failed", extra={"provider": event.provider, "event_id": event.event_id})
        raise WebhookProcessingFailed(
            "the event could not be applied; it was rolled back and will be retried",
            details={"event_id": event.event_id, "reason": type(exc).__name__},
        ) from exc
    _run_after_commit(after)
    logger.info(
        "webhook applied",
        extra={"provider": event.provider, "event_id": event.event_id, "type": event.type, "status": outcome.status},
    )
    return WebhookReceipt(row_id, event.provider, event.event_id, event.type, outcome.status, detail=outcome.detail)


def receive_webhook(
    provider: str, raw: bytes, headers: Mapping[str, str], uow_factory: Callable[[], UnitOfWork] = UnitOfWork
) -> WebhookReceipt:
    """Verify, store and apply one delivery (see the module docstring)."""
    return process_event(verify(provider, raw, headers), uow_factory)


def replay_event(reference: str, actor: Actor, uow_factory: Callable[[], UnitOfWork] = UnitOfWork) -> WebhookReceipt:
    """Re-apply a stored event by its Tollgate id (UUID) or the provider's event id. Handlers are idempotent
    (business keys: orders, invoices, refund steps), so replaying an applied event changes nothing.
    Admins over HTTP and the operator at the CLI may; the replay is audited either way."""
    require_role(actor, ADMIN, OPERATOR)
    with uow_factory() as uow:
        params: dict[str, Any] = {"ref": reference}
        where = "event_id = :ref"
        try:
            params["uuid"] = uuid.UUID(reference)
            where = "(id = :uuid OR event_id = :ref)"
        except ValueError:
            pass
        rows = uow.session.execute(
            text(f"SELECT id, provider, event_id, type, livemode, payload::text AS raw, provider_created_at "
                 f"FROM webhook_events WHERE {where}"),
            params,
        ).all()  # fmt: skip
        if rows:
            audit(
                uow.session, actor, action="webhook.replay", target_type="webhook_event",
                target_id=str(rows[0].id), details={"reference": reference},
            )  # fmt: skip
            uow.commit()
    if not rows:
        raise WebhookEventNotFound("no stored webhook event has this id", details={"event_id": reference})
    if len(rows) > 1:
        raise Conflict(
            "several providers sent an event with this id; use the Tollgate id",
            details={"ids": [str(r.id) for r in rows]},
        )
    row = rows[0]
    if row.raw is None:
        raise Conflict("the event's payload was removed by the retention job", details={"event_id": row.event_id})
    payload = json.loads(row.raw)
    event = VerifiedEvent(
        provider=row.provider,
        event_id=row.event_id,
        type=row.type,
        livemode=row.livemode,
        payload=payload,
        raw=row.raw,
        created_at=row.provider_created_at or parse_time(payload.get("created")),
    )
    return process_event(event, uow_factory, force=True)
