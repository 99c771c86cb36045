"""The refund sweep (ProviderReconciliation): order refunds that no Stripe answer or event settled.

A refund stays PENDING until Stripe's answer or a webhook moves it (services/order_refunds.py). When the admin
call's answer was lost and no event of the charge ever arrives (an endpoint down for longer than Stripe retries,
a refund.updated never subscribed), nothing would settle it and its amount would stay reserved for ever. Each run
the sweep takes the refunds PENDING for longer than REFUND_SWEEP_AFTER_MINUTES, a bounded batch at a time, and:
1. reads the row (a short unit of work, closed before any call);
2. asks Stripe, with no transaction open:
   - Stripe id known: `GET /v1/refunds/{id}`, the refund as it stands;
   - no Stripe id (Stripe never confirmed it): the create again, with the admin call's own idempotency key
     (`tollgate:order-refund:<refund id>`), which answers the refund made then or makes it now, once. Stripe keeps
     a key at least 24 hours; past IDEMPOTENCY_WINDOW the key may be forgotten and a retry could make a twin, so
     the charge's refund list decides instead (`order_refunds.resolve_unanswered`: found by its metadata it takes
     its id; absent from the whole list it was never made and fails, releasing its amount);
3. applies the answer in a new transaction through the webhooks' own code (`stripe_refund_events.apply_refund`
   with Stripe's refund object, `order_refunds.record_answer` for a refusal), locking purchase, order and refund
   and re-reading the status first, so a webhook settling the same refund at the same moment wins or loses
   cleanly: `order_refunds.settle` moves a refund out of PENDING once.

Outcomes, counted in the job's report: `refunds_settled` (moved out of PENDING), `refunds_pending_at_stripe`
(Stripe says pending: it is working on it, and its event or the next sweep settles it), `refunds_already_settled`
(an event won the race), and `unresolved` (the figure the ProviderUnresolved alarm watches: Stripe could not be
asked or answered something that settles nothing, e.g. `requires_action`; logged with the refund's id).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select

from tollgate.db import UnitOfWork
from tollgate.errors import PaymentProviderError, ProviderNotConfigured
from tollgate.models.commerce import Order
from tollgate.models.payments import Refund
from tollgate.observability import logger
from tollgate.payments import adapters
from tollgate.services import order_refunds
from tollgate.services.payment_events import stripe_refund_events
from tollgate.services.payment_events.handling import Ctx

SETTLED = "refunds_settled"
PENDING_AT_STRIPE = "refunds_pending_at_stripe"
ALREADY_SETTLED = "refunds_already_settled"
UNRESOLVED = "unresolved"
# Stripe keeps an idempotency key for at least 24 hours; a retry inside this window reaches the first refund.
IDEMPOTENCY_WINDOW = timedelta(hours=23)
EVENT_TYPE = "refund.sweep"  # what the sweep's context names as its event: none was delivered


class RefundLookups(Protocol):
    def retrieve_refund(self, refund_id: str) -> dict[str, Any]: ...

    def create_refund(self, request: adapters.RefundRequest) -> adapters.RefundAnswer: ...

    def list_charge_refunds(self, charge_id: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class _Stale:
    refund_id: uuid.UUID
    order_id: uuid.UUID
    provider_refund_id: str | None
    created_at: datetime
    charge_id: str | None
    request: adapters.RefundRequest


@dataclass(frozen=True, slots=True)
class _Asked:
    """What Stripe answered for one stale refund (one of the three, or `problem`)."""

    found: dict[str, Any] | None = None  # GET /v1/refunds/{id}, or the create's refund
    refused: adapters.RefundAnswer | None = None  # the create refused: nothing was made
    listed: list[dict[str, Any]] | None = None  # the charge's refunds (past the idempotency window)
    problem: str | None = None


def stale_refunds(
    uow_factory: Callable[[], UnitOfWork], now: datetime, *, older_than: timedelta, after: uuid.UUID | None, limit: int
) -> list[uuid.UUID]:
    """Up to `limit` order refunds PENDING since before `now - older_than`, after `after` in id order."""
    with uow_factory() as uow:
        query = select(Refund.id).where(
            Refund.provider == order_refunds.PROVIDER,
            Refund.order_id.is_not(None),
            Refund.status == "PENDING",
            Refund.created_at <= now - older_than,
        )
        if after is not None:
            query = query.where(Refund.id > after)
        return list(uow.session.execute(query.order_by(Refund.id).limit(limit)).scalars())


def _read(uow_factory: Callable[[], UnitOfWork], refund_id: uuid.UUID) -> _Stale | None:
    with uow_factory() as uow:
        refund = uow.session.get(Refund, refund_id)
        if refund is None or refund.status != "PENDING" or refund.order_id is None:
            return None
        order = uow.session.get(Order, refund.order_id)
        if order is None:
            return None
        return _Stale(
            refund_id=refund.id,
            order_id=order.id,
            provider_refund_id=refund.provider_refund_id,
            created_at=refund.created_at,
            charge_id=order.provider_charge_id,
            request=order_refunds.refund_request(order, refund),
        )


def _ask(gateway: RefundLookups, stale: _Stale, now: datetime) -> _Asked:
    """Stripe's word on `stale`; no transaction is open here."""
    try:
        if stale.provider_refund_id:
            return _Asked(found=gateway.retrieve_refund(stale.provider_refund_id))
        if now - stale.created_at < IDEMPOTENCY_WINDOW:
            answer = gateway.create_refund(stale.request)
            if answer.refused:
                return _Asked(refused=answer)
            if answer.raw is None:
                return _Asked(problem="Stripe answered the create without its refund")
            return _Asked(found=answer.raw)
        if not stale.charge_id:
            return _Asked(problem="no Stripe id, and the order records no charge to list")
        return _Asked(listed=gateway.list_charge_refunds(stale.charge_id))
    except ProviderNotConfigured:
        raise
    except PaymentProviderError as exc:
        return _Asked(problem=f"Stripe did not answer: {exc.details.get('error') or exc}")


def sweep_refund(
    uow_factory: Callable[[], UnitOfWork], refund_id: uuid.UUID, gateway: RefundLookups, now: datetime
) -> str:
    """Settle one stale refund from Stripe's own answer (see the module docstring). Returns the outcome key."""
    stale = _read(uow_factory, refund_id)
    if stale is None:
        return ALREADY_SETTLED
    asked = _ask(gateway, stale, now)
    if asked.problem is not None:
        return _unresolved(stale, asked.problem)
    with uow_factory() as uow:
        session = uow.session
        # The pack purchase before the order (as charge.refunded locks them): a refund failing gives its credits back.
        ref = asked.found or {"charge": stale.charge_id, "payment_intent": stale.request.payment_intent_id}
        stripe_refund_events.lock_purchase_first(session, ref)
        order = order_refunds.lock_order(session, stale.order_id)
        refund = session.get(Refund, stale.refund_id, with_for_update=True, populate_existing=True)
        if order is None or refund is None or refund.status != "PENDING":
            return ALREADY_SETTLED  # an event settled it while Stripe was asked
        stripe_status: str | None = None
        if asked.refused is not None:
            order_refunds.record_answer(session, order, refund, asked.refused, now)
        elif asked.found is not None:
            stripe_status = str(asked.found.get("status") or "")
            ctx = Ctx(
                session=session, provider=order_refunds.PROVIDER, event_type=EVENT_TYPE, webhook_event_id=None,
                provider_time=None, livemode=None, now=now,
            )  # fmt: skip
            stripe_refund_events.apply_refund(ctx, asked.found)
            if refund.provider_refund_id != str(asked.found.get("id") or ""):
                # Stripe's refund did not fit this row (another payment, another amount): nothing moved.
                uow.commit()
                return _unresolved(stale, "Stripe's refund does not match the row", refund=asked.found.get("id"))
        else:
            listed = asked.listed or []
            order_refunds.resolve_unanswered(session, order, listed, now)
            made = next((r for r in listed if refund.provider_refund_id and r.get("id") == refund.provider_refund_id),
                        None)  # fmt: skip
            stripe_status = str(made.get("status") or "") if made is not None else None
        status = refund.status
        uow.commit()
    if status != "PENDING":
        logger.info(
            "refund sweep settled a refund no event settled",
            extra={"refund_id": str(stale.refund_id), "order_id": str(stale.order_id), "status": status},
        )
        return SETTLED
    if stripe_status == "pending":
        return PENDING_AT_STRIPE
    return _unresolved(stale, f"Stripe's refund is {stripe_status or 'not listed as made or absent'}")


def _unresolved(stale: _Stale, reason: str, **extra: Any) -> str:
    logger.warning(
        "refund sweep: unresolved order refund",
        extra={"refund_id": str(stale.refund_id), "order_id": str(stale.order_id), "reason": reason,
               "provider_refund_id": stale.provider_refund_id, **{k: str(v) for k, v in extra.items()}},
    )  # fmt: skip
    return UNRESOLVED
