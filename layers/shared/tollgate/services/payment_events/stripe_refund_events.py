"""Stripe refund events -> order refunds (tollgate.services.order_refunds moves their status).

- `refund.created`, `refund.updated`, `refund.failed` (current API) and `charge.refund.updated` (older endpoints)
  carry the refund itself.
- `charge.refunded` carries the charge: older API versions embed its refunds (`charge.refunds.data`); the current
  one does not, so `prefetch` lists them (`GET /v1/refunds?charge=`) before the event's transaction opens, for a
  charge that paid an order. The purchase's own claw-back (stripe_events.charge_refunded) runs first and alone
  moves a pack's credits; this module only moves the order's money and status.

A refund is ours when its Stripe id is recorded, or when its `metadata.tollgate_refund_id` names a row still
awaiting its Stripe id (the webhook may beat the admin call's answer) and it is of that row's order's charge, for
the row's amount: metadata alone is only a claim. Any other refund of a charge that paid an order (the Stripe
dashboard, a twin) is recorded as it stands and counted; if it does not fit beside refunds still in flight, the
event waits (rolled back, retried by Stripe) until they settle, and refunds of ours long unanswered are settled
from Stripe's list of the charge's refunds (`prefetch`, `order_refunds.resolve_unanswered`) so it never waits
for ever; with nothing in flight, what does not fit is recorded as the refund's overlap. Refunds of ours that no
event settles at all are looked up by ProviderReconciliation's refund sweep (services/refund_sweep.py), which
hands Stripe's refund object to `apply_refund` like an event would.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.models.commerce import Order
from tollgate.models.payments import Purchase, Refund
from tollgate.observability import logger
from tollgate.payments import adapters
from tollgate.payments.money import to_major, to_minor
from tollgate.services import order_refunds
from tollgate.services.payment_events.handling import (
    Ctx,
    NotYetApplicable,
    Outcome,
    as_uuid,
    metadata_of,
    object_id,
    text_or_none,
)

PROVIDER = "stripe"
Handler = Callable[[Ctx, dict[str, Any], dict[str, Any]], Outcome]
# What `prefetch` stores in `ctx.fetched`: the refunds of a `charge.refunded` charge that paid an order.
CHARGE_REFUNDS = "charge_refunds"
LISTED_CHARGES = "listed_charges"  # the charges whose refunds CHARGE_REFUNDS lists (Stripe's whole list)
# The events `prefetch` may list a charge's refunds for (stripe_events.prefetch routes them here).
PREFETCHED = frozenset(
    {"charge.refunded", "refund.created", "refund.updated", "refund.failed", "charge.refund.updated"}
)


def _order_of_payment(session: Session, payment_intent: str | None, charge_id: str | None) -> Order | None:
    conditions = []
    if payment_intent:
        conditions.append(Order.provider_payment_intent_id == payment_intent)
    if charge_id:
        conditions.append(Order.provider_charge_id == charge_id)
    if not conditions:
        return None
    return (
        session.execute(
            select(Order).where(Order.provider == PROVIDER, or_(*conditions)).order_by(Order.id).with_for_update()
        )
        .scalars()
        .first()
    )


def _same_payment(order: Order, payment_intent: str | None, charge_id: str | None) -> bool:
    return bool(
        (payment_intent and payment_intent == order.provider_payment_intent_id)
        or (charge_id and charge_id == order.provider_charge_id)
    )


def _takes(
    refund: Refund, order: Order, obj: dict[str, Any], payment_intent: str | None, charge_id: str | None
) -> bool:
    """Whether our `refund` row (found by the Stripe refund's metadata) may take this Stripe refund: metadata is
    only a claim (a dashboard refund can copy it, a retry after Stripe forgot its key makes a twin), so the row
    must still await its Stripe id and be PENDING, and the refund must be of the charge that paid the row's order,
    for the row's amount."""
    if refund.provider_refund_id is not None or refund.status != "PENDING":
        return False
    currency = str(obj.get("currency") or refund.currency).lower()
    return (
        _same_payment(order, payment_intent, charge_id)
        and currency == refund.currency.lower()
        and obj.get("amount") == to_minor(refund.amount, refund.currency)
    )


def _recorded(session: Session, stripe_id: str | None) -> Refund | None:
    if not stripe_id:
        return None
    return session.execute(
        select(Refund).where(
            Refund.provider == PROVIDER, Refund.provider_refund_id == stripe_id, Refund.order_id.is_not(None)
        )
    ).scalar_one_or_none()


def _ours(session: Session, obj: dict[str, Any]) -> Refund | None:
    """Our row for this Stripe refund: the one holding its Stripe id, else the one its metadata names (a claim
    checked by `_takes` under the order's lock)."""
    recorded = _recorded(session, object_id(obj))
    if recorded is not None:
        return recorded
    refund_id = as_uuid(metadata_of(obj).get("tollgate_refund_id"))
    if refund_id is None:
        return None
    found = session.get(Refund, refund_id)
    return found if found is not None and found.order_id is not None else None


def apply_refund(
    ctx: Ctx, obj: dict[str, Any], *, payment_intent: str | None = None, charge_id: str | None = None
) -> dict[str, Any] | None:
    """Apply one Stripe refund object to its order. None: not a refund of a Tollgate order."""
    session, stripe_id = ctx.session, str(obj.get("id") or "")
    status = str(obj.get("status") or "")
    failure = text_or_none(obj.get("failure_reason"))
    payment_intent = object_id(obj.get("payment_intent")) or payment_intent
    charge_id = object_id(obj.get("charge")) or charge_id
    refund = _ours(session, obj)
    if refund is not None:
        assert refund.order_id is not None
        order = order_refunds.lock_order(session, refund.order_id)  # the order first, as the admin call locks
        session.refresh(refund, with_for_update=True)
        assert order is not None
        if refund.provider_refund_id == stripe_id or _takes(refund, order, obj, payment_intent, charge_id):
            if refund.provider_refund_id is None:
                refund.provider_refund_id = stripe_id
            moved = order_refunds.settle(session, order, refund, status, ctx.now, failure=failure)
            _sweep(ctx, order, charge_id)  # after: this row has its Stripe id now, the sweep leaves it
            return _detail(order, refund, moved)
        # Not that row's refund: a refund of whatever order its charge paid, as if made in the dashboard.
    order = _order_of_payment(session, payment_intent, charge_id)
    if order is None:
        return None
    if charge_id and not order.provider_charge_id:
        order.provider_charge_id = charge_id
    # Another delivery of this refund (refund.created beside charge.refunded) may have recorded it while this one
    # waited for the order's lock: settle that row rather than record the refund twice.
    again = _recorded(session, stripe_id)
    if again is not None and again.order_id == order.id:
        session.refresh(again, with_for_update=True)
        moved = order_refunds.settle(session, order, again, status, ctx.now, failure=failure)
        return _detail(order, again, moved)
    _sweep(ctx, order, charge_id)
    return _external(ctx, order, obj, status, failure)


def _sweep(ctx: Ctx, order: Order, charge_id: str | None) -> None:
    """Settle the order's long unanswered refunds from Stripe's list of the charge's refunds, when `prefetch`
    fetched it for this charge (only then is the list Stripe's whole answer, not an event's embedded part)."""
    listed = ctx.fetched.get(CHARGE_REFUNDS)
    charge = charge_id or order.provider_charge_id
    if isinstance(listed, list) and charge and charge in (ctx.fetched.get(LISTED_CHARGES) or ()):
        order_refunds.resolve_unanswered(ctx.session, order, [r for r in listed if isinstance(r, dict)], ctx.now)


def _external(ctx: Ctx, order: Order, obj: dict[str, Any], status: str, failure: str | None) -> dict[str, Any]:
    """A refund of the order made outside Tollgate (the dashboard): recorded, reserved, then settled like ours."""
    currency = str(obj.get("currency") or order.currency).lower()
    amount = to_major(obj.get("amount"), currency)
    failed = order_refunds.STATUS_FROM_STRIPE.get(status) in {"FAILED", "CANCELED"}
    room = order_refunds.refundable(order)
    meta: dict[str, Any] = {"source": "stripe", "stripe_metadata": metadata_of(obj)}
    if not failed and amount > room:
        if order.refund_pending_amount > 0:
            # Refunds of ours still in flight hold the room; once Stripe settles them this one fits (Stripe never
            # refunds more than the charge), so let Stripe retry.
            raise NotYetApplicable("a refund made in Stripe does not fit beside refunds still in flight")
        # Nothing in flight will ever make room, so waiting would fail the event until Stripe disables the endpoint:
        # the money moved all the same, so count what fits and keep the rest on the row for someone to look at.
        meta |= {"stripe_amount": str(amount), "uncounted": str(amount - room)}
        logger.warning(
            "a refund made in Stripe passes what the order has left",
            extra={"order_id": str(order.id), "refund": obj.get("id"), "uncounted": str(amount - room)},
        )
        amount = room
    refund = Refund(
        id=new_id(),
        provider=PROVIDER,
        provider_refund_id=str(obj["id"]),
        kind=order_refunds.KIND,
        user_id=order.user_id,
        order_id=order.id,
        amount=amount,
        currency=currency,
        reason=text_or_none(obj.get("reason")),
        status="PENDING",
        notes="made in Stripe",
        metadata_=meta,
    )
    session = ctx.session
    session.add(refund)
    if failed:
        refund.status, refund.processed_at = order_refunds.STATUS_FROM_STRIPE[status], ctx.now
        session.flush()
        # First seen failed: a pack's purchase may have counted it (an amount-only charge.refunded), and must
        # leave it out of every later snapshot of the charge.
        refund.metadata_ = {**refund.metadata_, **order_refunds.pack_refund_failed(session, order, refund, ctx.now)}
        return _detail(order, refund, refund.status, external=True)
    order.refund_pending_amount += amount
    session.flush()
    moved = order_refunds.settle(session, order, refund, status, ctx.now, failure=failure)
    return _detail(order, refund, moved, external=True)


def _detail(order: Order, refund: Refund, moved: str | None, *, external: bool = False) -> dict[str, Any]:
    return {
        "order_id": str(order.id),
        "refund_id": str(refund.id),
        "provider_refund_id": refund.provider_refund_id,
        "status": refund.status,
        "moved": moved,
        "order_status": order.status,
        "refunded_amount": str(order.refunded_amount),
        **({"external": True} if external else {}),
    }


def lock_purchase_first(session: Session, obj: dict[str, Any]) -> None:
    """Lock the pack purchase this Stripe refund's payment paid, before `apply_refund` locks the order: a refund
    failing after it succeeded gives the purchase's credits back (order_refunds._return_pack_credits), and
    `charge.refunded` locks the purchase before the order, so every path takes them in that order."""
    payment_intent, charge_id = object_id(obj.get("payment_intent")), object_id(obj.get("charge"))
    conditions = []
    if payment_intent:
        conditions.append(Purchase.provider_payment_id == payment_intent)
    if charge_id:
        conditions.append(Purchase.provider_charge_id == charge_id)
    if conditions:
        session.execute(
            select(Purchase.id).where(Purchase.provider == PROVIDER, or_(*conditions)).order_by(Purchase.id)
            .with_for_update()
        ).all()  # fmt: skip


def refund_event(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """`refund.created` / `refund.updated` / `refund.failed` / `charge.refund.updated`."""
    lock_purchase_first(ctx.session, obj)
    detail = apply_refund(ctx, obj)
    if detail is None:
        return Outcome.ignored("not a refund of a Tollgate order", refund=obj.get("id"))
    return Outcome.done(**detail)


def _live(obj: dict[str, Any], failed: dict[str, Any]) -> bool:
    """A refund Stripe counts in the charge's `amount_refunded` (pending ones too) that Tollgate has not seen fail."""
    status = str(obj.get("status") or "")
    return (
        order_refunds.STATUS_FROM_STRIPE.get(status) not in {"FAILED", "CANCELED"} and str(obj.get("id")) not in failed
    )


def live_refunded(
    ctx: Ctx, purchase: Purchase, obj: dict[str, Any], refunded: Decimal
) -> tuple[Decimal, dict[str, int] | None]:
    """What a pack purchase's `charge.refunded` (charge `obj`, cumulative `refunded`) counts as refunded, and the
    refunds that make it up when Stripe listed them all (for order_refunds.COUNTED_REFUNDS).

    `amount_refunded` is a snapshot: one taken before a refund failed still counts it, and arrives in any order
    (late, or again as a new event). A failure is final, so a refund in the purchase's FAILED_REFUNDS never counts:
    - older API versions embed the charge's refunds as they stood then: the amount less the known-failed ones it
      still shows live;
    - the current one does not: `prefetch` listed the charge's refunds from Stripe just now, so their live sum is
      the money refunded (a refund made since counts now; its own charge.refunded then moves nothing);
    - neither (Stripe's API not configured, more than one page of refunds): the amount as it stands."""
    failed = purchase.metadata_.get(order_refunds.FAILED_REFUNDS) or {}
    currency = str(obj.get("currency") or purchase.currency).lower()
    embedded = obj.get("refunds")
    if isinstance(embedded, dict) and isinstance(embedded.get("data"), list):
        shown = [r for r in embedded["data"] if isinstance(r, dict)]
        stale = sum(int(r.get("amount") or 0) for r in shown if _live(r, {}) and not _live(r, failed))
        whole = not embedded.get("has_more")
        counted = {str(r.get("id")): int(r.get("amount") or 0) for r in shown if _live(r, failed)} if whole else None
        return max(refunded - to_major(stale, currency), Decimal(0)), counted
    listed = ctx.fetched.get(CHARGE_REFUNDS)
    if (
        isinstance(listed, list)
        and str(obj.get("id")) in (ctx.fetched.get(LISTED_CHARGES) or ())
        and len(listed) < order_refunds.LISTED_AT_MOST
    ):
        counted = {
            str(r.get("id")): int(r.get("amount") or 0) for r in listed if isinstance(r, dict) and _live(r, failed)
        }
        return to_major(sum(counted.values()), currency), counted
    return refunded, None


def note_counted(purchase: Purchase, counted: dict[str, int] | None) -> None:
    """Record which refunds the purchase's claw-back step counts (None: not known, an amount-only snapshot), so a
    refund failing later gives back credits only if they were counted (order_refunds._return_pack_credits)."""
    meta = {k: v for k, v in purchase.metadata_.items() if k != order_refunds.COUNTED_REFUNDS}
    purchase.metadata_ = meta if counted is None else {**meta, order_refunds.COUNTED_REFUNDS: counted}


def _charge_refunds(ctx: Ctx, obj: dict[str, Any]) -> list[dict[str, Any]]:
    embedded = obj.get("refunds")
    if isinstance(embedded, dict) and isinstance(embedded.get("data"), list):
        return [r for r in embedded["data"] if isinstance(r, dict)]
    return [r for r in ctx.fetched.get(CHARGE_REFUNDS) or [] if isinstance(r, dict)]


def with_order_refunds(purchase_handler: Handler) -> Handler:
    """`charge.refunded`: the purchase's claw-back (`purchase_handler`), then the refunds of the order the charge
    paid. A pack order keeps the claw-back's outcome (its early-refund bookkeeping depends on it)."""

    def handler(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
        outcome = purchase_handler(ctx, event, obj)
        charge_id, payment_intent = str(obj["id"]), object_id(obj.get("payment_intent"))
        applied = [
            detail
            for refund in sorted(_charge_refunds(ctx, obj), key=lambda r: (r.get("created") or 0, str(r.get("id"))))
            if (detail := apply_refund(ctx, refund, payment_intent=payment_intent, charge_id=charge_id)) is not None
        ]
        if not applied:
            return outcome
        order = ctx.session.get(Order, as_uuid(applied[-1]["order_id"]))
        if outcome.status == "ignored" and order is not None and not order_refunds.is_pack_order(ctx.session, order):
            return Outcome.done(charge=charge_id, order_refunds=applied)
        outcome.detail["order_refunds"] = applied
        return outcome

    return handler


def prefetch(payload: dict[str, Any], uow_factory: Callable[[], UnitOfWork]) -> dict[str, Any]:
    """The charge's refunds, listed from Stripe (`GET /v1/refunds?charge=`) BEFORE the event's transaction opens
    (a short unit of work reads the order first), for a charge that paid an order: for a current-shape
    `charge.refunded` (its refunds are no longer embedded), and for any refund event of an order holding refunds
    of ours long unanswered (the list says whether Stripe ever made them: `order_refunds.resolve_unanswered`)."""
    kind, obj = payload.get("type"), (payload.get("data") or {}).get("object")
    if kind not in PREFETCHED or not isinstance(obj, dict) or not obj.get("id"):
        return {}
    if not adapters.stripe_api_configured():
        return {}
    charge_refunded = kind == "charge.refunded"
    embedded = obj.get("refunds")
    needs_list = charge_refunded and not (isinstance(embedded, dict) and isinstance(embedded.get("data"), list))
    charge_id = str(obj["id"]) if charge_refunded else object_id(obj.get("charge"))
    payment_intent = object_id(obj.get("payment_intent"))
    with uow_factory() as uow:
        conditions = [Order.provider_charge_id == charge_id] if charge_id else []
        if payment_intent:
            conditions.append(Order.provider_payment_intent_id == payment_intent)
        if not conditions:
            return {}
        order = uow.session.execute(
            select(Order.id, Order.provider_charge_id)
            .where(Order.provider == PROVIDER, or_(*conditions))
            .order_by(Order.id)
            .limit(1)
        ).first()
        if order is None:
            return {}
        stuck = bool(order_refunds.unanswered_ids(uow.session, order.id, utcnow()))
        charge_id = charge_id or order.provider_charge_id
    if not charge_id or not (needs_list or stuck):
        return {}
    return {CHARGE_REFUNDS: adapters.stripe_gateway().list_charge_refunds(charge_id), LISTED_CHARGES: [charge_id]}
