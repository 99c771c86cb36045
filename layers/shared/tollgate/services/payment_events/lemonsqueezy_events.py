"""Lemon Squeezy events (JSON:API resource + `meta.event_name`, checkout custom data in `meta.custom_data`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from tollgate.models.commerce import Order
from tollgate.models.credits import Plan
from tollgate.models.payments import Invoice, Purchase
from tollgate.models.users import User
from tollgate.payments.money import to_major, to_minor
from tollgate.payments.signatures import parse_time
from tollgate.services import order_refunds
from tollgate.services.payment_events.handling import (
    Ctx,
    NotYetApplicable,
    Outcome,
    PackOrder,
    SubscriptionState,
    apply_subscription,
    as_uuid,
    fulfil_pack_order,
    grant_invoice_allowance,
    invoice_for_update,
    link_customer,
    notify_payment_failed,
    paid_plan_order,
    plan_by_price,
    reversal_detail,
    reverse_credits,
    subscription_for_update,
    text_or_none,
    user_by_customer,
    user_by_id,
)

PROVIDER = "lemonsqueezy"
Handler = Callable[[Ctx, dict[str, Any], dict[str, Any], dict[str, Any]], Outcome]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _custom(payload: dict[str, Any]) -> dict[str, Any]:
    custom = (payload.get("meta") or {}).get("custom_data")
    return custom if isinstance(custom, dict) else {}


def _buyer(ctx: Ctx, payload: dict[str, Any], attrs: dict[str, Any]) -> User | None:
    return user_by_id(ctx.session, _custom(payload).get("user_id")) or user_by_customer(
        ctx.session, PROVIDER, text_or_none(attrs.get("customer_id"))
    )


# --- orders (packs) ------------------------------------------------------------------------------------------------
def order_created(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any], attrs: dict[str, Any]) -> Outcome:
    order_id = str(data["id"])
    custom = _custom(payload)
    if custom.get("kind") == "plan":
        return Outcome.ignored("a subscription's first order: its invoice grants the allowance", order=order_id)
    user = _buyer(ctx, payload, attrs)
    if user is None:
        return Outcome.rejected("no Tollgate user matches this order", order=order_id)
    customer_id = text_or_none(attrs.get("customer_id"))
    link_customer(ctx.session, user, PROVIDER, customer_id)
    total = attrs.get("total")
    order = PackOrder(
        provider=PROVIDER,
        order_id=order_id,
        pack_ref=custom.get("item_id"),
        amount_minor=int(total) if isinstance(total, int | float) else None,
        currency=text_or_none(attrs.get("currency")),
        paid=attrs.get("status") == "paid",
        paid_at=parse_time(attrs.get("created_at")),
        customer_id=customer_id,
        price_ref=text_or_none((attrs.get("first_order_item") or {}).get("variant_id")),
        metadata={"order_number": attrs.get("order_number"), "identifier": attrs.get("identifier")},
        amount_checked=False,  # the total holds tax and discounts; the variant says what was bought
    )
    outcome = fulfil_pack_order(ctx, user, order)
    if outcome.detail.get("status") == "pending":
        outcome.detail["order_status"] = attrs.get("status")
    return outcome


def order_refunded(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any], attrs: dict[str, Any]) -> Outcome:
    order_id = str(data["id"])
    purchase = ctx.session.execute(
        select(Purchase).where(Purchase.provider == PROVIDER, Purchase.provider_order_id == order_id).with_for_update()
    ).scalar_one_or_none()
    if purchase is None:
        raise NotYetApplicable("the refunded order is not known yet (its order_created has not been applied)")
    currency = purchase.currency
    refunded = min(to_major(attrs.get("refunded_amount"), currency), purchase.amount)  # cumulative
    if refunded <= purchase.refunded_amount:
        return Outcome.done(note="this refund step was already applied", order=order_id)
    step = refunded - purchase.refunded_amount
    purchase.refunded_amount = refunded
    purchase.status = "refunded" if refunded >= purchase.amount else "partially_refunded"
    refund = reverse_credits(
        ctx, purchase, user_id=purchase.user_id, credits=purchase.credits, total=purchase.amount,
        reversed_money=purchase.refunded_amount + purchase.disputed_amount,
        step_id=f"order:{order_id}:refunded:{to_minor(refunded, currency)}", kind="refund", step_amount=step,
        currency=currency,
    )  # fmt: skip
    if refund is None:
        return Outcome.done(note="this refund step was already applied", order=order_id)
    moved = order_refunds.provider_refund_step(ctx.session, purchase, refund, refunded, ctx.now)
    return Outcome.done(
        order=order_id,
        **reversal_detail(refund),
        **({"order_refund": moved} if moved else {}),
    )


# --- subscriptions -------------------------------------------------------------------------------------------------
def subscription_state(data: dict[str, Any], attrs: dict[str, Any], custom: dict[str, Any]) -> SubscriptionState:
    status = str(attrs.get("status") or "active")
    urls = _dict(attrs.get("urls"))
    ends_at = parse_time(attrs.get("ends_at"))
    return SubscriptionState(
        provider_subscription_id=str(data["id"]),
        status=status,
        customer_id=text_or_none(attrs.get("customer_id")),
        price_id=text_or_none(attrs.get("variant_id")),
        product_id=text_or_none(attrs.get("product_id")),
        current_period_end=parse_time(attrs.get("renews_at")) or ends_at,
        cancel_at_period_end=bool(attrs.get("cancelled")),
        canceled_at=parse_time(attrs.get("updated_at")) if status == "cancelled" else None,
        ended_at=ends_at if status == "expired" else None,
        trial_end=parse_time(attrs.get("trial_ends_at")),
        trial_start=parse_time(attrs.get("created_at")) if status == "on_trial" else None,
        metadata={
            **({"custom_data": custom} if custom else {}),
            **({"customer_portal_url": urls["customer_portal"]} if urls.get("customer_portal") else {}),
            **(
                {"update_payment_method_url": urls["update_payment_method"]}
                if urls.get("update_payment_method")
                else {}
            ),
            "pause": attrs.get("pause"),
        },
    )


def subscription_event(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any], attrs: dict[str, Any]) -> Outcome:
    custom = _custom(payload)
    state = subscription_state(data, attrs, custom)
    existing = subscription_for_update(ctx.session, PROVIDER, state.provider_subscription_id)
    user = (
        ctx.session.get(User, existing.user_id, with_for_update={"key_share": True}) if existing is not None else None
    )
    user = user or _buyer(ctx, payload, attrs)
    if user is None:
        raise NotYetApplicable("no Tollgate user is linked to this subscription yet")
    link_customer(ctx.session, user, PROVIDER, state.customer_id)
    sub, applied = apply_subscription(ctx, user, state)
    return Outcome.done(subscription=sub.provider_subscription_id, status=sub.status, applied=applied, tier=user.tier)


# --- subscription invoices -----------------------------------------------------------------------------------------
def _invoice(ctx: Ctx, data: dict[str, Any], attrs: dict[str, Any], status: str) -> Any:
    invoice_id = str(data["id"])
    currency = str(attrs.get("currency") or "usd").lower()
    invoice = invoice_for_update(ctx.session, PROVIDER, invoice_id)
    if invoice is None:
        invoice = Invoice(provider=PROVIDER, provider_invoice_id=invoice_id, status=status, currency=currency)
        ctx.session.add(invoice)
    invoice.provider_subscription_id = text_or_none(attrs.get("subscription_id"))
    invoice.provider_customer_id = text_or_none(attrs.get("customer_id"))
    invoice.billing_reason = attrs.get("billing_reason")
    invoice.amount_due = to_major(attrs.get("total"), currency)
    if status == "paid" or invoice.status == "paid":
        invoice.amount_paid = to_major(attrs.get("total"), currency)
    invoice.currency = currency
    urls = _dict(attrs.get("urls"))
    invoice.hosted_invoice_url = urls.get("invoice_url") or invoice.hosted_invoice_url
    invoice.livemode = ctx.livemode
    if invoice.status not in {"paid", "refunded", "partially_refunded"} or status in {"refunded", "partially_refunded"}:
        invoice.status = status
    if ctx.provider_time is not None:
        invoice.provider_updated_at = max(ctx.provider_time, invoice.provider_updated_at or ctx.provider_time)
    ctx.session.flush()
    return invoice


def _invoice_user_and_plan(
    ctx: Ctx, payload: dict[str, Any], invoice: Any, attrs: dict[str, Any]
) -> tuple[Any, Any, Any]:
    sub = (
        subscription_for_update(ctx.session, PROVIDER, invoice.provider_subscription_id)
        if invoice.provider_subscription_id
        else None
    )
    custom = _custom(payload)
    if sub is not None:
        invoice.subscription_id = sub.id
        user = ctx.session.get(User, sub.user_id, with_for_update={"key_share": True})
        plan, interval = plan_by_price(ctx.session, PROVIDER, sub.provider_price_id)
        return user, plan, interval
    # The invoice arrived before its subscription: the checkout's custom data names the buyer and the plan.
    user = _buyer(ctx, payload, attrs)
    plan_id = as_uuid(custom.get("item_id")) if custom.get("kind") == "plan" else None
    plan = ctx.session.get(Plan, plan_id) if plan_id else None
    interval = None
    if plan is not None:
        interval = "year" if custom.get("interval") == "year" else "month"
    return user, plan, interval


def payment_success(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any], attrs: dict[str, Any]) -> Outcome:
    invoice = _invoice(ctx, data, attrs, "paid")
    invoice.paid_at = invoice.paid_at or parse_time(attrs.get("created_at")) or ctx.now
    user, plan, interval = _invoice_user_and_plan(ctx, payload, invoice, attrs)
    if user is None:
        raise NotYetApplicable("no Tollgate user is linked to this subscription invoice yet")
    invoice.user_id = user.id
    if plan is None:
        raise NotYetApplicable("the invoice's subscription has no known plan yet")
    granted = grant_invoice_allowance(ctx, invoice, user, plan, interval)
    order = _first_payment_order(ctx, invoice, user, plan)
    return Outcome.done(
        invoice=invoice.provider_invoice_id, granted=str(granted), tier=plan.tier,
        **({"order_id": str(order.id)} if order is not None else {}),
    )  # fmt: skip


def _first_payment_order(ctx: Ctx, invoice: Invoice, user: User, plan: Plan) -> Order | None:
    """Every paid plan invoice goes to the plan-order flow: the subscription's order comes at its first paid
    period (the `initial` invoice, or after a free trial its first `renewal`), so a replay, the recovered event or
    a later renewal finds it."""
    if not invoice.provider_subscription_id or invoice.amount_paid <= 0:
        return None
    sub = subscription_for_update(ctx.session, PROVIDER, invoice.provider_subscription_id)
    order: Order | None = paid_plan_order(ctx, invoice, user, plan, sub, provider=PROVIDER)
    return order


def payment_failed(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any], attrs: dict[str, Any]) -> Outcome:
    invoice = _invoice(ctx, data, attrs, "payment_failed")
    user, _, _ = _invoice_user_and_plan(ctx, payload, invoice, attrs)
    if user is None:
        return Outcome.done(invoice=invoice.provider_invoice_id, note="no Tollgate user to notify")
    invoice.user_id = user.id
    notify_payment_failed(ctx, user, invoice)
    return Outcome.done(invoice=invoice.provider_invoice_id, status="payment_failed", notified=True)


def payment_refunded(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any], attrs: dict[str, Any]) -> Outcome:
    invoice = invoice_for_update(ctx.session, PROVIDER, str(data["id"]))
    if invoice is None or invoice.user_id is None:
        raise NotYetApplicable("the refunded invoice is not known yet")
    currency = invoice.currency
    refunded = min(to_major(attrs.get("refunded_amount"), currency), invoice.amount_paid)
    if refunded <= invoice.refunded_amount:
        return Outcome.done(note="this refund step was already applied", invoice=invoice.provider_invoice_id)
    step = refunded - invoice.refunded_amount
    invoice.refunded_amount = refunded
    invoice.status = "refunded" if refunded >= invoice.amount_paid else "partially_refunded"
    refund = reverse_credits(
        ctx, invoice, user_id=invoice.user_id, credits=invoice.credits_granted, total=invoice.amount_paid,
        reversed_money=refunded, kind="refund", step_amount=step, currency=currency,
        step_id=f"invoice:{invoice.provider_invoice_id}:refunded:{to_minor(refunded, currency)}",
    )  # fmt: skip
    moved = order_refunds.provider_refund_step(ctx.session, invoice, refund, refunded, ctx.now) if refund else None
    return Outcome.done(
        invoice=invoice.provider_invoice_id,
        credits_clawed_back=str(refund.credits_clawed_back) if refund else "0",
        **({"order_refund": moved} if moved else {}),
    )


HANDLERS: dict[str, Handler] = {
    "order_created": order_created,
    "order_refunded": order_refunded,
    "subscription_created": subscription_event,
    "subscription_updated": subscription_event,
    "subscription_cancelled": subscription_event,
    "subscription_resumed": subscription_event,
    "subscription_expired": subscription_event,
    "subscription_paused": subscription_event,
    "subscription_unpaused": subscription_event,
    "subscription_payment_success": payment_success,
    "subscription_payment_recovered": payment_success,
    "subscription_payment_failed": payment_failed,
    "subscription_payment_refunded": payment_refunded,
}


def handle(ctx: Ctx, payload: dict[str, Any]) -> Outcome:
    handler = HANDLERS.get(ctx.event_type)
    if handler is None:
        return Outcome.ignored(f"Tollgate does not handle {ctx.event_type}")
    data = payload.get("data")
    if not isinstance(data, dict) or data.get("id") is None:
        return Outcome.rejected("the event carries no data resource")
    attrs = _dict(data.get("attributes"))
    return handler(ctx, payload, data, attrs)
