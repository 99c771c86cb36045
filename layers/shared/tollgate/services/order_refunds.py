"""Refunds of orders (API.md "Commerce": POST /admin/orders/{order_id}/refunds) and the one place their status
moves, whichever of the admin call, Stripe's answer or Stripe's webhooks brings it.

Money safety, in three steps (no Stripe call while a lock is held):
1. Reserve, in one committed transaction under the order's row lock: refunded + pending + asked <= total (else
   `refund_exceeds_payment` with what is refundable), the amount added to `refund_pending_amount`, the refund row
   inserted PENDING without a Stripe id, the admin's change audited. Concurrent refunds of one order take turns on
   the lock, and the database's CHECK (refunded + pending <= total) holds whatever else runs.
2. Call Stripe's Refund API with an idempotency key derived from the refund's id and the id in `metadata`
   (`tollgate_refund_id`), so the webhooks find the row even before its Stripe id is recorded.
3. Record Stripe's refund id and status in a new transaction. A refusal (Stripe created nothing) marks the row
   FAILED and releases the reservation. No answer (a timeout, a 5xx) keeps the reservation: the refund may exist;
   a retry with the same Idempotency-Key calls Stripe again with the same key, and the webhooks settle it.

A refund's status moves once out of PENDING (`settle`): SUCCEEDED moves its amount from pending to refunded,
FAILED/CANCELED release it. A fully refunded order becomes REFUNDED (payment status REFUNDED) and its items lose
download access; a partial refund leaves it COMPLETED with its refunded amount. Credits of a pack order are clawed
back by the purchase's own `charge.refunded` path, never here; a refund that fails (after it succeeded, or while
pending) gives back what that claw-back took for it (`_return_pack_credits`), once, through the ledger.

Lemon Squeezy and Asaas refunds are made at the provider and reported as the cumulative money refunded of a
payment: each step their claw-back applies refunds the order that payment made up to that amount through the same
rule (`provider_refund_step`); the step's refund row names the order.

Refunds no event settles (Stripe's answer and webhooks lost) are looked up at Stripe by ProviderReconciliation's
refund sweep (tollgate.services.refund_sweep), which settles them through the webhooks' own path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.errors import (
    IdempotencyConflict,
    OrderNotFound,
    OrderNotRefundable,
    RefundExceedsPayment,
    ValidationFailed,
)
from tollgate.models.commerce import Order, OrderItem
from tollgate.models.payments import Invoice, Purchase, Refund
from tollgate.observability import logger
from tollgate.outbox import EventType, emit
from tollgate.payments import adapters
from tollgate.payments.money import exponent, to_minor
from tollgate.services.authz import ADMIN, Actor, audit, require_role
from tollgate.services.orders import PAYING_INVOICE
from tollgate.services.payment_events.handling import reversal_target

PROVIDER = "stripe"
REASONS = ("requested_by_customer", "duplicate", "fraudulent", "subscription_canceled", "other")
# The reasons Stripe's Refund API knows; the others are Tollgate's own and are not sent.
STRIPE_REASONS = frozenset({"requested_by_customer", "duplicate", "fraudulent"})
# Stripe refund statuses -> ours (pending and requires_action stay PENDING).
STATUS_FROM_STRIPE = {"succeeded": "SUCCEEDED", "failed": "FAILED", "canceled": "CANCELED"}
KIND = "refund"
# A refund of ours still without a Stripe id this long after it was asked for is no longer in flight (the admin's
# call gives up within seconds), so Stripe's list of the charge's refunds says whether it was ever made.
UNANSWERED_AFTER = timedelta(minutes=15)
NOT_MADE = "not_made_at_stripe"
# A pack purchase's metadata: {Stripe refund id: minor amount} of its charge's refunds that failed or were canceled
# (final at Stripe), and of those its claw-back's last step counted when Stripe listed them.
FAILED_REFUNDS = "failed_refunds_by_id"
COUNTED_REFUNDS = "counted_refunds_by_id"
LISTED_AT_MOST = 100  # one page of Stripe's refund list (adapters.StripeAdapter.list_charge_refunds)


@dataclass(frozen=True, slots=True)
class RefundView:
    id: uuid.UUID
    order_id: uuid.UUID
    amount: Decimal
    currency: str
    reason: str | None
    status: str
    notes: str | None
    provider_refund_id: str | None
    requested_by: uuid.UUID | None
    created_at: datetime
    processed_at: datetime | None
    order_status: str
    order_refunded_amount: Decimal
    order_refund_pending_amount: Decimal


def _view(refund: Refund, order: Order) -> RefundView:
    assert refund.order_id is not None
    return RefundView(
        id=refund.id,
        order_id=refund.order_id,
        amount=refund.amount,
        currency=refund.currency,
        reason=refund.reason,
        status=refund.status,
        notes=refund.notes,
        provider_refund_id=refund.provider_refund_id,
        requested_by=refund.requested_by,
        created_at=refund.created_at,
        processed_at=refund.processed_at,
        order_status=order.status,
        order_refunded_amount=order.refunded_amount,
        order_refund_pending_amount=order.refund_pending_amount,
    )


def _money(value: Decimal) -> str:
    return format(value, "f")


def _scale(currency: str) -> Decimal:
    return Decimal(1).scaleb(-exponent(currency))


def quantised(amount: Decimal, currency: str) -> Decimal:
    """`amount` at the currency's scale; finer than its minor unit, or not above zero, is refused."""
    scale = _scale(currency)
    if amount <= 0:
        raise ValidationFailed("a refund amount must be above zero", details={"field": "amount"})
    if amount != amount.quantize(scale):
        raise ValidationFailed(
            f"{amount} is finer than {currency.upper()} allows", details={"field": "amount", "scale": str(scale)}
        )
    return amount.quantize(scale)


def refundable(order: Order) -> Decimal:
    return order.total_amount - order.refunded_amount - order.refund_pending_amount


# --- the one status change ---------------------------------------------------------------------------------------
def lock_order(session: Session, order_id: uuid.UUID) -> Order | None:
    session.flush()  # populate_existing reloads the row: changes not yet written would be lost
    return session.get(Order, order_id, with_for_update=True, populate_existing=True)


def is_pack_order(session: Session, order: Order) -> bool:
    if order.purchase_id is not None:
        return True
    kinds = session.execute(select(OrderItem.kind).where(OrderItem.order_id == order.id)).scalars().all()
    return "pack" in kinds


def settle(
    session: Session,
    order: Order,
    refund: Refund,
    stripe_status: str | None,
    now: datetime,
    *,
    failure: str | None = None,
) -> str | None:
    """Move `refund` (of `order`, both locked) out of PENDING per Stripe's status, once. Returns the new status, or
    None when nothing moved (still pending, or already settled: a replay or an older event)."""
    new = STATUS_FROM_STRIPE.get(str(stripe_status or ""))
    if new == "FAILED" and refund.status == "SUCCEEDED":
        return _failed_after_success(session, order, refund, now, failure)
    if new is None or refund.status != "PENDING":
        return None
    order.refund_pending_amount -= refund.amount
    refund.status = new
    refund.processed_at = now
    if new != "SUCCEEDED":
        # A refund failing while pending may already be counted by the purchase's claw-back (charge.refunded
        # comes when the refund is made, pending or not): its credits come back the same way.
        returned = _return_pack_credits(session, order, refund, now)
        refund.metadata_ = {**refund.metadata_, **({"failure_reason": failure} if failure else {}), **returned}
        return new
    _count_refunded(session, order, refund, refund.amount, now)
    return new


def _count_refunded(session: Session, order: Order, refund: Refund, amount: Decimal, now: datetime) -> None:
    """`amount` of `order` (locked) refunded by `refund`, a refund that succeeded: the one rule of what a refund
    does to its order, whichever provider made it. Fully refunded, the order is REFUNDED (payment status REFUNDED)
    and its items lose access; partly, it stays COMPLETED with its refunded amount."""
    order.refunded_amount += amount
    if order.refunded_amount >= order.total_amount:
        order.status = "REFUNDED"
        order.payment_status = "REFUNDED"
        # A fully refunded order ends every item's access (downloads); partial refunds name no item.
        session.execute(
            update(OrderItem)
            .where(OrderItem.order_id == order.id, OrderItem.access_revoked_at.is_(None))
            .values(access_revoked_at=now)
        )
    if not is_pack_order(session, order):  # a pack's refund is announced by its purchase's claw-back
        emit(
            session,
            EventType.REFUND_COMPLETED,
            user_id=order.user_id,
            data={
                "provider": refund.provider, "refund_id": refund.provider_refund_id, "tollgate_refund_id": refund.id,
                "kind": "order", "order_id": order.id, "amount": amount, "currency": refund.currency,
                "order_refunded_amount": order.refunded_amount, "order_status": order.status,
            },
            dedupe_key=f"refund.completed:order:{refund.id}",
        )  # fmt: skip


# --- refunds a provider reports as cumulative money (Lemon Squeezy, Asaas) ---------------------------------------
def order_paid_by(session: Session, holder: Purchase | Invoice) -> Order | None:
    """The order `holder`'s payment made, locked after the holder (as the payment's own events take them): a pack
    purchase's order, or the plan order whose first paid period this invoice paid (orders.PAYING_INVOICE). None
    when the payment made no order (paid before orders existed, a renewal, a charge of nothing)."""
    if isinstance(holder, Purchase):
        query = select(Order).where(Order.purchase_id == holder.id)
    elif holder.user_id is not None:
        query = select(Order).where(
            Order.user_id == holder.user_id,
            Order.provider == holder.provider,
            Order.metadata_[PAYING_INVOICE].astext == holder.provider_invoice_id,
        )
    else:
        return None
    session.flush()  # an order made earlier in this transaction (a refund that came before its payment's event)
    return session.execute(query.order_by(Order.id).limit(1).with_for_update()).scalars().first()


def provider_refund_step(
    session: Session, holder: Purchase | Invoice, step: Refund, refunded: Decimal, now: datetime
) -> dict[str, Any] | None:
    """A refund step of a provider that reports only the cumulative money refunded of a payment (Lemon Squeezy,
    Asaas: no refund of theirs has an id of its own), just applied to `holder` by its claw-back (`step`, the step's
    refund row): the order that payment made is refunded up to `refunded` through the same rule
    as a Stripe refund (`_count_refunded`). The step's row is the order's refund row (a second row would list the
    same money twice). Never above the order's total, never lowered (a smaller amount arriving late moves nothing),
    so replays and reordered deliveries end in the same state. Answers what moved, or None."""
    order = order_paid_by(session, holder)
    if order is None or order.status not in ("COMPLETED", "REFUNDED"):
        return None  # no order, or one never paid: nothing of it was refunded
    if order.currency.lower() != step.currency.lower():
        logger.warning(
            "a refund step in another currency than its order's",
            extra={"order_id": str(order.id), "currency": step.currency, "order_currency": order.currency},
        )
        return None
    scale = _scale(order.currency)
    target = min(refunded, order.total_amount - order.refund_pending_amount).quantize(scale, rounding=ROUND_DOWN)
    amount = (target - order.refunded_amount).quantize(scale)
    if amount <= 0:
        return None
    step.order_id, step.processed_at = order.id, now
    if amount != step.amount:
        step.metadata_ = {**(step.metadata_ or {}), "order_refunded": _money(amount)}
    session.flush()  # the step's row names its order before the order's refund is announced
    _count_refunded(session, order, step, amount, now)
    return {
        "order_id": str(order.id),
        "order_status": order.status,
        "order_refunded_amount": _money(order.refunded_amount.quantize(scale)),
    }


def unanswered(session: Session, order_id: uuid.UUID, now: datetime) -> list[Refund]:
    """Refunds of the order still PENDING without a Stripe id, asked for longer than UNANSWERED_AFTER ago."""
    return list(
        session.execute(
            select(Refund)
            .where(
                Refund.order_id == order_id,
                Refund.status == "PENDING",
                Refund.provider_refund_id.is_(None),
                Refund.created_at <= now - UNANSWERED_AFTER,
            )
            .order_by(Refund.created_at, Refund.id)
            .with_for_update()
        ).scalars()
    )


def unanswered_ids(session: Session, order_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
    """The ids `unanswered` would lock, read without a lock (before a provider call)."""
    return list(
        session.execute(
            select(Refund.id).where(
                Refund.order_id == order_id,
                Refund.status == "PENDING",
                Refund.provider_refund_id.is_(None),
                Refund.created_at <= now - UNANSWERED_AFTER,
            )
        ).scalars()
    )


def resolve_unanswered(session: Session, order: Order, listed: list[dict[str, Any]], now: datetime) -> list[str]:
    """With Stripe's own list of the charge's refunds (`listed`, fetched from its API), settle each long unanswered
    refund of `order` (locked): found by its metadata (same amount, Stripe id not recorded elsewhere), it takes its
    Stripe id and status; absent, Stripe never made it: FAILED, its reservation released. Without this a refund
    lost on its way to Stripe would hold its room for ever and a dashboard refund could never be counted."""
    stale = unanswered(session, order.id, now)
    if not stale:
        return []
    made = {
        str(obj["metadata"]["tollgate_refund_id"]): obj
        for obj in listed
        if isinstance(obj.get("metadata"), dict) and obj["metadata"].get("tollgate_refund_id") and obj.get("id")
    }
    whole = len(listed) < LISTED_AT_MOST  # a full page may leave refunds out: then absence proves nothing
    moved: list[str] = []
    for refund in stale:
        obj = made.get(str(refund.id))
        if obj is None and not whole:
            continue
        if obj is None:
            refund.metadata_ = {**refund.metadata_, "resolved": "absent from Stripe's refunds of the charge"}
            settle(session, order, refund, "failed", now, failure=NOT_MADE)
            moved.append(str(refund.id))
            continue
        taken = session.execute(
            select(Refund.id).where(Refund.provider == PROVIDER, Refund.provider_refund_id == str(obj["id"]))
        ).first()
        if taken is not None or obj.get("amount") != to_minor(refund.amount, refund.currency):
            continue  # not this row's refund after all: the next event (or an admin retry) settles it
        refund.provider_refund_id = str(obj["id"])
        failure = obj.get("failure_reason")
        settle(session, order, refund, str(obj.get("status") or ""), now, failure=str(failure) if failure else None)
        moved.append(str(refund.id))
    return moved


def _failed_after_success(session: Session, order: Order, refund: Refund, now: datetime, failure: str | None) -> str:
    """Stripe can fail a refund after it succeeded (the card was closed: the money went back to the balance). Failed
    is final at Stripe, so this is never an older event: the amount leaves `refunded_amount` again, an order that
    drops below its total is COMPLETED again and its items' access (only a full refund revokes it) comes back, and
    a pack order gets back the credits its claw-back took (`_return_pack_credits`). Without it the order would stay
    refunded, a refund re-issued in the dashboard would never fit, and the buyer would lose paid-for credits."""
    returned = _return_pack_credits(session, order, refund, now)
    order.refunded_amount -= refund.amount
    refund.status = "FAILED"
    refund.processed_at = now
    refund.metadata_ = {**refund.metadata_, "failed_after_success": True, **({"failure_reason": failure} if failure
                                                                             else {}), **returned}  # fmt: skip
    if order.status == "REFUNDED" and order.refunded_amount < order.total_amount:
        order.status, order.payment_status = "COMPLETED", "SUCCEEDED"
        session.execute(
            update(OrderItem)
            .where(OrderItem.order_id == order.id, OrderItem.access_revoked_at.is_not(None))
            .values(access_revoked_at=None)
        )
    return "FAILED"


def pack_refund_failed(session: Session, order: Order, refund: Refund, now: datetime) -> dict[str, Any]:
    """A refund of `order` first recorded already failed (stripe_refund_events._external): what
    `_return_pack_credits` gives back for it (the purchase locked before the order)."""
    return _return_pack_credits(session, order, refund, now)


def returned_credits_key(refund: Refund) -> str:
    """The source key of the grant that gives back a failed refund's clawed credits: one per Stripe refund, so no
    replay (of either event, or the sweep) can give them twice."""
    return f"stripe:refund-failed:{refund.provider_refund_id or refund.id}"


def _return_pack_credits(session: Session, order: Order, refund: Refund, now: datetime) -> dict[str, Any]:
    """Give back, through the ledger, the credits the purchase's claw-back took for `refund` of a pack order (its
    order locked, the purchase locked before it; called once, as `refund` leaves PENDING or SUCCEEDED for FAILED or
    CANCELED), and move the purchase's own figures back.

    Stripe's refund id goes into the purchase's FAILED_REFUNDS first, whatever was counted: failed is final, so
    every later snapshot of the charge that still counts it (a stale or replayed charge.refunded) leaves it out
    (stripe_refund_events.live_refunded) and the credits never depend on which event came first.

    The claw-back (payment_events.handling.reverse_credits) counts cumulative money: `credits_reversed` is what
    the refunded share asked back, `credits_clawed_back` what the grant still had (credits already spent stay
    spent). With this refund's money no longer refunded the share asks back `target`, so what was clawed beyond
    it is returned: never more than was taken, nothing when the buyer had spent it all. Whether the purchase
    counted this refund: its COUNTED_REFUNDS names the refunds its last step counted, when Stripe listed them;
    else (an amount-only step) the order's other live refunds are taken as counted first. Credits whose pack has
    expired meanwhile would have expired anyway: not returned."""
    if order.purchase_id is None or not refund.provider_refund_id:
        return {}  # no Stripe id: Stripe never made it, so no snapshot of the charge ever counted it
    session.flush()  # populate_existing reloads the purchase: the claw-back's changes must be written first
    purchase = session.get(Purchase, order.purchase_id, with_for_update=True, populate_existing=True)
    if purchase is None:
        return {}
    stripe_id = refund.provider_refund_id
    failed = {str(k): v for k, v in (purchase.metadata_.get(FAILED_REFUNDS) or {}).items()}
    if stripe_id in failed:
        return {"credits_returned": "0", "note": "this refund's failure was already counted"}
    failed[stripe_id] = to_minor(refund.amount, refund.currency)
    meta: dict[str, Any] = {**purchase.metadata_, FAILED_REFUNDS: failed}
    listed = purchase.metadata_.get(COUNTED_REFUNDS)
    if isinstance(listed, dict):
        counted = refund.amount if stripe_id in listed else Decimal(0)
        meta[COUNTED_REFUNDS] = {k: v for k, v in listed.items() if k != stripe_id}
    else:
        others = session.execute(
            select(func.coalesce(func.sum(Refund.amount), 0)).where(
                Refund.order_id == order.id, Refund.id != refund.id, Refund.provider_refund_id.is_not(None),
                Refund.status.in_(("PENDING", "SUCCEEDED")),
            )
        ).scalar_one()  # fmt: skip
        counted = max(purchase.refunded_amount - Decimal(others), Decimal(0))
    counted = min(refund.amount, counted, purchase.refunded_amount)
    purchase.metadata_ = meta
    if counted <= 0:
        return {"credits_returned": "0", "note": "the purchase had not counted this refund"}
    target = reversal_target(purchase.credits, purchase.amount, purchase.refunded_amount - counted
                             + purchase.disputed_amount)  # fmt: skip
    give = max(purchase.credits_clawed_back - target, Decimal(0))
    purchase.refunded_amount -= counted
    purchase.credits_reversed = min(purchase.credits_reversed, target)
    purchase.credits_clawed_back -= give
    if purchase.status in ("refunded", "partially_refunded"):
        purchase.status = "partially_refunded" if purchase.refunded_amount > 0 else "completed"
    # The claw-back keys its steps by the charge's cumulative refunded amount, which now falls back: a later
    # refund reaching the same amount is a new step (stripe_events.charge_refunded reads this count).
    purchase.metadata_ = {**purchase.metadata_, "failed_refunds": int(purchase.metadata_.get("failed_refunds", 0)) + 1}
    detail: dict[str, Any] = {"credits_returned": str(give), "purchase_id": str(purchase.id)}
    if give <= 0:
        return detail
    if purchase.expires_at is not None and purchase.expires_at <= now:
        return {**detail, "credits_returned": "0", "credits_expired": str(give)}
    key = returned_credits_key(refund)
    granted = ledger.grant(
        session, purchase.user_id, kind="purchase", amount=give, source_key=key, expires_at=purchase.expires_at,
        metadata={"provider": PROVIDER, "purchase_id": str(purchase.id), "order_id": str(order.id),
                  "refund_id": str(refund.id), "provider_refund_id": refund.provider_refund_id,
                  "returned": "refund failed after it succeeded"},
        now=now,
    )  # fmt: skip
    keys = [str(k) for k in purchase.metadata_.get("returned_grant_keys", [])]
    purchase.metadata_ = {**purchase.metadata_, "returned_grant_keys": [*keys, key]}
    return {**detail, "credits_grant_id": str(granted.grant_id)}


# --- POST /admin/orders/{order_id}/refunds ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Reserved:
    refund_id: uuid.UUID
    order_id: uuid.UUID
    request: adapters.RefundRequest | None  # None: nothing (more) to send


def _fingerprint(amount: Decimal | None, reason: str, notes: str | None) -> dict[str, Any]:
    # Normalised: a retry that spells the amount 10, "10" or "10.00" is the same request.
    return {"amount": _money(amount.normalize()) if amount is not None else None, "reason": reason, "notes": notes}


def refund_request(order: Order, refund: Refund) -> adapters.RefundRequest:
    return adapters.RefundRequest(
        payment_intent_id=order.provider_payment_intent_id,
        charge_id=order.provider_charge_id,
        amount_minor=to_minor(refund.amount, refund.currency),
        reason=refund.reason if refund.reason in STRIPE_REASONS else None,
        metadata={"tollgate_refund_id": str(refund.id), "tollgate_order_id": str(order.id)},
        idempotency_key=f"tollgate:order-refund:{refund.id}",
    )


def _replayed(session: Session, order: Order, key: str, fingerprint: dict[str, Any]) -> _Reserved | None:
    found = session.execute(
        select(Refund).where(Refund.order_id == order.id, Refund.metadata_["idempotency_key"].astext == key)
    ).scalar_one_or_none()
    if found is None:
        return None
    if found.metadata_.get("request") != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used for another refund of this order",
            details={"refund_id": str(found.id)},
        )
    # Not answered yet (the first call died or is still running): ask Stripe again with the same key.
    pending = found.status == "PENDING" and found.provider_refund_id is None
    return _Reserved(found.id, order.id, refund_request(order, found) if pending else None)


def _reserve(
    uow: UnitOfWork,
    actor: Actor,
    order_id: uuid.UUID,
    *,
    amount: Decimal | None,
    reason: str,
    notes: str | None,
    idempotency_key: str | None,
    now: datetime,
) -> _Reserved:
    fingerprint = _fingerprint(amount, reason, notes)
    with uow:
        session = uow.session
        order = lock_order(session, order_id)
        if order is None:
            raise OrderNotFound("no such order", details={"order_id": str(order_id)})
        if idempotency_key:
            replay = _replayed(session, order, idempotency_key, fingerprint)
            if replay is not None:
                return replay
        if order.status not in ("COMPLETED", "REFUNDED"):
            raise OrderNotRefundable(
                "only a completed order can be refunded", details={"status": order.status, "reason": "not_completed"}
            )
        if order.provider != PROVIDER or not (order.provider_payment_intent_id or order.provider_charge_id):
            raise OrderNotRefundable(
                "the order was not paid through Stripe", details={"provider": order.provider, "reason": "not_stripe"}
            )
        left = refundable(order)
        wanted = quantised(amount, order.currency) if amount is not None else left
        if wanted <= 0 or wanted > left:
            raise RefundExceedsPayment(
                "the refund would pass what the order took",
                details={
                    "refundable": _money(left), "requested": _money(wanted), "total": _money(order.total_amount),
                    "refunded": _money(order.refunded_amount), "pending": _money(order.refund_pending_amount),
                    "currency": order.currency,
                },
            )  # fmt: skip
        old = {
            "refunded_amount": _money(order.refunded_amount),
            "refund_pending_amount": _money(order.refund_pending_amount),
        }
        order.refund_pending_amount += wanted
        meta: dict[str, Any] = {"request": fingerprint}
        if idempotency_key:
            meta["idempotency_key"] = idempotency_key
        refund = Refund(
            id=new_id(),
            provider=PROVIDER,
            provider_refund_id=None,
            kind=KIND,
            user_id=order.user_id,
            order_id=order.id,
            amount=wanted,
            currency=order.currency,
            reason=reason,
            status="PENDING",
            notes=notes,
            metadata_=meta,
            requested_by=actor.user_id,
        )
        session.add(refund)
        session.flush()
        audit(
            session, actor, action="order.refund", target_type="order", target_id=str(order.id),
            details={"refund_id": str(refund.id), "reason": reason},
            old_values=old,
            new_values={
                "refunded_amount": _money(order.refunded_amount),
                "refund_pending_amount": _money(order.refund_pending_amount),
                "refund": {"id": str(refund.id), "amount": _money(wanted), "reason": reason, "notes": notes},
            },
            now=now,
        )  # fmt: skip
        reserved = _Reserved(refund.id, order.id, refund_request(order, refund))
        uow.commit()
    return reserved


def record_answer(
    session: Session, order: Order, refund: Refund, answer: adapters.RefundAnswer, now: datetime
) -> str | None:
    """Stripe's answer to `POST /v1/refunds` for `refund` (of `order`, both locked): a refusal fails it, a refund
    gives it its Stripe id and status. Returns what `settle` moved."""
    if refund.provider_refund_id not in (None, answer.refund_id):
        # A webhook tied the row to another Stripe refund meanwhile: that refund's events settle it, and this
        # answer's refund (if one was made) arrives by its own events, counted as a refund of the charge.
        return None
    if answer.refused:
        refund.metadata_ = {**refund.metadata_, "refused": {"code": answer.refused_code, "message": answer.message}}
        return settle(session, order, refund, "failed", now, failure=answer.refused_code)
    refund.provider_refund_id = answer.refund_id
    failure = (answer.raw or {}).get("failure_reason")
    return settle(session, order, refund, answer.status, now, failure=str(failure) if failure else None)


def _record(uow: UnitOfWork, reserved: _Reserved, answer: adapters.RefundAnswer, now: datetime) -> None:
    with uow:
        session = uow.session
        purchase_id = session.execute(select(Order.purchase_id).where(Order.id == reserved.order_id)).scalar()
        if purchase_id is not None:  # before the order, as charge.refunded locks them: a failed answer may give back
            session.get(Purchase, purchase_id, with_for_update=True)
        order = lock_order(session, reserved.order_id)
        refund = session.get(Refund, reserved.refund_id, with_for_update=True, populate_existing=True)
        assert order is not None and refund is not None
        record_answer(session, order, refund, answer, now)
        uow.commit()


def _read(uow: UnitOfWork, refund_id: uuid.UUID) -> RefundView:
    with uow:
        refund = uow.session.get(Refund, refund_id)
        assert refund is not None and refund.order_id is not None
        order = uow.session.get(Order, refund.order_id)
        assert order is not None
        return _view(refund, order)


def refund_order(
    uow: UnitOfWork,
    actor: Actor,
    order_id: uuid.UUID,
    *,
    amount: Decimal | None,
    reason: str,
    notes: str | None = None,
    idempotency_key: str | None = None,
    gateway: adapters.StripeGateway | None = None,
    now: datetime | None = None,
) -> RefundView:
    """Refund `amount` (default: all that is left) of a completed Stripe order; see the module docstring."""
    require_role(actor, ADMIN)
    if reason not in REASONS:
        raise ValidationFailed("unknown refund reason", details={"field": "reason", "allowed": list(REASONS)})
    stripe = gateway or adapters.stripe_gateway()  # not configured: refused before anything is reserved
    moment = now or utcnow()
    reserved = _reserve(
        uow, actor, order_id, amount=amount, reason=reason, notes=notes, idempotency_key=idempotency_key, now=moment
    )
    if reserved.request is not None:
        answer = stripe.create_refund(reserved.request)  # no transaction is open here
        _record(uow, reserved, answer, utcnow())
    return _read(uow, reserved.refund_id)
