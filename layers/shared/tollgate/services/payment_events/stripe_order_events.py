"""Stripe Checkout events of cart orders (sessions whose metadata carries `tollgate_order_id`).

- `checkout.session.completed` / `.async_payment_succeeded`: the order is found by its id AND the session id
  recorded at checkout; `amount_total`, `amount_subtotal` and `currency` must equal the order's total (its lines
  are Tollgate's discounted, tax-inclusive amounts), else the event is rejected and nothing moves. Paid: the one
  fulfilment (`orders.fulfil_order`). Not paid yet (a delayed method): PROCESSING, reservations kept.
- `checkout.session.expired` / `.async_payment_failed`: stock and the discount use go back, the order is
  CANCELLED (payment CANCELLED / FAILED). An order already completed is never released.
- Out of order: a completion after the order was released (Stripe does not complete an expired session, but a
  checkout that failed on Tollgate's side or the sweep may have released it) records the payment and is rejected
  for an operator to refund: the stock and the use it had may be gone to someone else.

Sessions without `tollgate_order_id` (packs, plans) go to the handler they always went to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from tollgate.models.commerce import Order
from tollgate.models.payments import Purchase
from tollgate.payments.money import to_minor
from tollgate.services import orders
from tollgate.services.payment_events.handling import (
    Ctx,
    NotYetApplicable,
    Outcome,
    SubscriptionState,
    apply_subscription,
    as_uuid,
    link_customer,
    metadata_of,
    object_id,
    subscription_for_update,
    user_by_id,
)

PROVIDER = "stripe"
Handler = Callable[[Ctx, dict[str, Any], dict[str, Any]], Outcome]
PAID = {"paid", "no_payment_required"}


def is_order_session(obj: dict[str, Any]) -> bool:
    return bool(metadata_of(obj).get("tollgate_order_id"))


def or_else(fallback: Handler, handler: Handler) -> Handler:
    """`handler` for cart-order sessions, `fallback` (the pack/plan handler) for every other session."""

    def route(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
        return handler(ctx, event, obj) if is_order_session(obj) else fallback(ctx, event, obj)

    return route


def _order(ctx: Ctx, obj: dict[str, Any]) -> Order | Outcome:
    session_id = str(obj.get("id"))
    order_id = as_uuid(metadata_of(obj).get("tollgate_order_id"))
    order = ctx.session.get(Order, order_id, with_for_update=True) if order_id else None
    if order is None:
        return Outcome.rejected("no Tollgate order matches this checkout", session=session_id)
    if order.provider_checkout_id is None and order.status == "PENDING":
        # The checkout's own transaction has not recorded the session yet: Stripe retries, by then it has.
        raise NotYetApplicable("the order's checkout session is not recorded yet")
    if order.provider_checkout_id != session_id:
        return Outcome.rejected("the session is not the order's checkout", session=session_id, order_id=str(order.id))
    return order


def _mismatch(order: Order, obj: dict[str, Any]) -> Outcome | None:
    currency = str(obj.get("currency") or "").lower()
    expected = to_minor(order.total_amount, order.currency)
    reported = {"amount_total": obj.get("amount_total"), "amount_subtotal": obj.get("amount_subtotal")}
    if currency != order.currency.lower() or any(v != expected for v in reported.values()):
        return Outcome.rejected(
            "the amount Stripe reports does not match the order",
            order_id=str(order.id),
            reported={**reported, "currency": currency},
            expected={"amount_total": expected, "amount_subtotal": expected, "currency": order.currency},
        )
    return None


def completed(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    found = _order(ctx, obj)
    if isinstance(found, Outcome):
        return found
    order = found
    if order.status in ("COMPLETED", "REFUNDED"):
        return Outcome.done(order_id=str(order.id), already=order.status)
    mismatch = _mismatch(order, obj)
    if mismatch is not None:
        return mismatch
    user = user_by_id(ctx.session, order.user_id)
    if user is None:  # pragma: no cover - a foreign key
        return Outcome.rejected("the order's buyer is gone", order_id=str(order.id))
    link_customer(ctx.session, user, PROVIDER, object_id(obj.get("customer")))
    order.provider_payment_intent_id = object_id(obj.get("payment_intent")) or order.provider_payment_intent_id
    paid = obj.get("payment_status") in PAID
    if order.status == "CANCELLED":
        if paid:
            order.payment_status = "SUCCEEDED"
            order.paid_at = order.paid_at or ctx.provider_time or ctx.now
            order.internal_notes = "paid after its checkout was released: refund it"
        return Outcome.rejected(
            "the order was released before this payment: refund it", order_id=str(order.id), paid=paid
        )
    if not paid:
        order.status = "PROCESSING"
        order.payment_status = "PROCESSING"
        return Outcome.done(order_id=str(order.id), status="PROCESSING", payment_status=obj.get("payment_status"))
    subscription_id = None
    if obj.get("mode") == "subscription":
        sub_ref = object_id(obj.get("subscription"))
        if not sub_ref:
            return Outcome.rejected("a subscription checkout without a subscription", order_id=str(order.id))
        sub = subscription_for_update(ctx.session, PROVIDER, sub_ref)
        if sub is None:
            # Recorded now; customer.subscription.* events bring its status and periods (never backwards).
            state = SubscriptionState(
                sub_ref, status="incomplete", customer_id=object_id(obj.get("customer")), metadata=metadata_of(obj)
            )
            original, ctx.provider_time = ctx.provider_time, None
            try:
                sub, _ = apply_subscription(ctx, user, state)
            finally:
                ctx.provider_time = original
        subscription_id = sub.id
    result = orders.fulfil_order(
        ctx.session, order, now=ctx.now, paid_at=ctx.provider_time, subscription_id=subscription_id
    )
    return Outcome.done(order_id=str(order.id), status=order.status, items=result.items)


def closed(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """`checkout.session.expired` (CANCELLED) and `.async_payment_failed` (CANCELLED, payment FAILED)."""
    found = _order(ctx, obj)
    if isinstance(found, Outcome):
        return found
    order = found
    if order.status not in ("PENDING", "PROCESSING"):
        return Outcome.ignored("the order is no longer open", order_id=str(order.id), status=order.status)
    failed = event.get("type") == "checkout.session.async_payment_failed"
    orders.release(
        ctx.session,
        order,
        payment_status="FAILED" if failed else "CANCELLED",
        reason="payment_failed" if failed else "checkout_expired",
        now=ctx.now,
    )
    return Outcome.done(order_id=str(order.id), status=order.status, payment_status=order.payment_status)


def pack_closed(ctx: Ctx, purchase: Purchase) -> None:
    """A pending pack purchase that will never be paid (its session expired or its delayed payment failed): its
    one-item order is CANCELLED with it (nothing was granted, nothing is held)."""
    order = ctx.session.execute(
        select(Order).where(Order.purchase_id == purchase.id).with_for_update()
    ).scalar_one_or_none()
    if order is not None and order.status == "PENDING":
        failed = purchase.status == "failed"
        orders.release(
            ctx.session, order, payment_status="FAILED" if failed else "CANCELLED",
            reason="payment_failed" if failed else "checkout_expired", now=ctx.now,
        )  # fmt: skip


def plan_checkout(ctx: Ctx, obj: dict[str, Any], user_id: Any, subscription_id: Any) -> None:
    """A plan's first payment (a billing checkout in subscription mode): its one-item order, fulfilled when paid."""
    from tollgate.models.credits import Plan
    from tollgate.models.payments import Subscription
    from tollgate.payments.money import to_major

    meta = metadata_of(obj)
    plan = ctx.session.get(Plan, as_uuid(meta.get("item_id"))) if meta.get("kind") == "plan" else None
    sub = ctx.session.get(Subscription, subscription_id) if subscription_id else None
    buyer = as_uuid(user_id)
    if plan is None or sub is None or buyer is None:
        return
    currency = str(obj.get("currency") or plan.currency).lower()
    amount = obj.get("amount_total")
    orders.plan_order(
        ctx.session, user_id=buyer, subscription=sub, plan_id=plan.id, plan_name=plan.name,
        checkout_id=str(obj.get("id")), amount=to_major(amount if isinstance(amount, int) else 0, currency),
        currency=currency, now=ctx.now, paid=obj.get("payment_status") in PAID,
    )  # fmt: skip
