"""Asaas events: `{id, event, dateCreated, payment: {...}}` and `{id, event, dateCreated, subscription: {...}}`.

Every payment event carries the whole charge as it is now (`id`, `customer`, `subscription`, `value`,
`originalValue`, `status`, `dueDate`, `confirmedDate`, `paymentDate`, `invoiceUrl`, `invoiceNumber`,
`externalReference`, `refunds: [{value, status}]`, `chargeback: {status, reason}`), so each handler works from that
state rather than from the order deliveries come in:

- PAYMENT_CONFIRMED / PAYMENT_RECEIVED (card: confirmed, then received when settled; PIX and boleto: received):
  a pack charge goes through the one pack-order flow keyed by the Asaas payment id; a subscription's charge is an
  invoice that grants the plan's allowance for the period it pays (keyed by the payment id). Both events of one
  charge therefore grant once.
- PAYMENT_REFUNDED / PAYMENT_PARTIALLY_REFUNDED: the cumulative refunded value (the sum of the charge's `refunds`
  that are not cancelled, or the whole value once the charge is REFUNDED) is clawed back once per refund step, as
  for Stripe, and refunds the order the charge made (order_refunds.provider_refund_step). A refund that arrives
  before its confirmation first records the charge it refunds as paid (its payload proves it was), so the grant
  and its reversal land together and a later confirmation changes nothing.
- PAYMENT_CHARGEBACK_REQUESTED / PAYMENT_CHARGEBACK_DISPUTE: the funds are held from the moment the chargeback
  is requested, so a pack's credits are clawed back once per charge; chargebacks of subscription charges move no
  credits (as Stripe's disputes over invoices). PAYMENT_AWAITING_CHARGEBACK_REVERSAL (won) moves nothing. A
  chargeback leaves the charge's order as it is, as Stripe's disputes do: held money is no refund, and a won
  chargeback gives it back.
- PAYMENT_OVERDUE: a subscription's charge makes the subscription `past_due` (and mails the user); an overdue
  pack charge grants nothing and stays payable.
- SUBSCRIPTION_CREATED / UPDATED / INACTIVATED / DELETED: the subscription row (never moved backwards). An ACTIVE
  subscription with no paid charge yet is `pending` (no tier until its first charge is paid).

The buyer and the item come from `externalReference` (written by the checkout, `tollgate.payments.asaas.Reference`),
else from the Asaas customer linked to an account. Values are BRL decimals and must match the pack's / plan's price
(`originalValue`, when Asaas set it because interest or a fine was added, else `value`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from tollgate.models.commerce import Order
from tollgate.models.credits import Plan
from tollgate.models.payments import Invoice, Purchase, Refund, Subscription
from tollgate.models.users import User
from tollgate.payments.asaas import INTERVALS, Reference
from tollgate.payments.money import to_minor
from tollgate.payments.signatures import asaas_time
from tollgate.payments.statuses import TERMINAL
from tollgate.services import order_refunds, orders
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
    notify_payment_failed,
    reversal_detail,
    reverse_credits,
    subscription_for_update,
    sync_tier,
    text_or_none,
    user_by_id,
)

PROVIDER = "asaas"
CURRENCY = "brl"
PAID = frozenset({"CONFIRMED", "RECEIVED", "RECEIVED_IN_CASH"})
# Charges whose money came in at some point (a refund or chargeback proves the charge was paid first).
WAS_PAID = PAID | {"REFUNDED", "REFUND_REQUESTED", "REFUND_IN_PROGRESS", "CHARGEBACK_REQUESTED",
                   "CHARGEBACK_DISPUTE", "AWAITING_CHARGEBACK_REVERSAL", "DUNNING_RECEIVED"}  # fmt: skip
PAID_INVOICE = frozenset({"paid", "refunded", "partially_refunded"})
Handler = Callable[[Ctx, dict[str, Any]], Outcome]


def _money(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value)).quantize(Decimal("0.01"))
    except ArithmeticError:
        return None


def _charged(payment: dict[str, Any]) -> Decimal | None:
    """The charge's price: `originalValue` when Asaas added interest or a fine to `value`, else `value`. Never
    more than `value`: a charge lowered below its original value paid only what `value` says."""
    original, value = _money(payment.get("originalValue")), _money(payment.get("value"))
    if value is None or original is None:
        return value
    return min(original, value)


def _user_by_customer(ctx: Ctx, customer_id: str | None) -> User | None:
    if not customer_id:
        return None
    return ctx.session.execute(
        select(User).where(User.asaas_customer_id == customer_id).with_for_update(key_share=True)
    ).scalar_one_or_none()


def _buyer(ctx: Ctx, reference: Reference | None, customer_id: str | None) -> User | None:
    user = user_by_id(ctx.session, as_uuid(reference.user_id)) if reference else None
    return user or _user_by_customer(ctx, customer_id)


def _add_interval(moment: datetime, interval: str | None) -> datetime:
    months = 12 if interval == "year" else 1
    year, month = divmod(moment.year * 12 + moment.month - 1 + months, 12)
    month += 1
    following = moment.replace(year=year + (month == 12), month=month % 12 + 1, day=1)
    last_day = (following - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


# --- charges: which Tollgate row a charge is -----------------------------------------------------------------------
def _purchase(ctx: Ctx, payment_id: str) -> Purchase | None:
    return ctx.session.execute(
        select(Purchase)
        .where(Purchase.provider == PROVIDER, Purchase.provider_order_id == payment_id)
        .with_for_update()
    ).scalar_one_or_none()


def _settle(ctx: Ctx, payment: dict[str, Any]) -> tuple[Purchase | Invoice | None, Outcome]:
    """Make sure a charge that was paid is recorded and granted (once). Returns its purchase / invoice, if any, and
    the outcome of the grant."""
    if text_or_none(payment.get("subscription")):
        outcome = _subscription_charge_paid(ctx, payment)
        ctx.session.flush()  # a purchase / invoice written just now must be found below
        return invoice_for_update(ctx.session, PROVIDER, str(payment["id"])), outcome
    outcome = _pack_charge_paid(ctx, payment)
    ctx.session.flush()
    return _purchase(ctx, str(payment["id"])), outcome


def _pack_charge_paid(ctx: Ctx, payment: dict[str, Any]) -> Outcome:
    payment_id = str(payment["id"])
    reference = Reference.parse(payment.get("externalReference"))
    if reference is None or reference.kind != "pack":
        existing = _purchase(ctx, payment_id)
        if existing is not None:
            return Outcome.done(purchase_id=str(existing.id), already=existing.status)
        return Outcome.ignored("not a Tollgate checkout (no tg: externalReference)", payment=payment_id)
    customer_id = text_or_none(payment.get("customer"))
    user = _buyer(ctx, reference, customer_id)
    if user is None:
        return Outcome.rejected("no Tollgate user matches this charge", payment=payment_id)
    charged = _charged(payment)
    order = PackOrder(
        provider=PROVIDER,
        order_id=payment_id,
        pack_ref=as_uuid(reference.item_id),
        amount_minor=to_minor(charged, CURRENCY) if charged is not None else None,
        currency=CURRENCY,
        paid=True,
        paid_at=asaas_time(payment.get("confirmedDate")) or asaas_time(payment.get("paymentDate")),
        payment_id=payment_id,
        customer_id=customer_id,
        metadata={
            "billing_type": payment.get("billingType"),
            "external_reference": payment.get("externalReference"),
            "invoice_url": payment.get("invoiceUrl"),
        },
    )
    return fulfil_pack_order(ctx, user, order)


def _plan_of(ctx: Ctx, sub: Subscription | None, reference: Reference | None) -> tuple[Plan | None, str | None]:
    if sub is not None and sub.plan_id is not None:
        return ctx.session.get(Plan, sub.plan_id), sub.interval
    if reference is not None and reference.kind == "plan":
        plan_id = as_uuid(reference.item_id)
        return (ctx.session.get(Plan, plan_id) if plan_id else None), reference.interval
    return None, None


def _plan_price(plan: Plan, interval: str | None) -> Decimal | None:
    return plan.price_yearly if interval == "year" else plan.price_monthly


def _subscription_charge_paid(ctx: Ctx, payment: dict[str, Any]) -> Outcome:
    payment_id, sub_id = str(payment["id"]), str(payment["subscription"])
    reference = Reference.parse(payment.get("externalReference"))
    sub = subscription_for_update(ctx.session, PROVIDER, sub_id)
    user = ctx.session.get(User, sub.user_id, with_for_update={"key_share": True}) if sub is not None else None
    user = user or _buyer(ctx, reference, text_or_none(payment.get("customer")))
    if user is None:
        raise NotYetApplicable("no Tollgate user is linked to this Asaas subscription yet")
    plan, interval = _plan_of(ctx, sub, reference)
    if plan is None:
        raise NotYetApplicable("the charge's subscription has no known plan yet (SUBSCRIPTION_CREATED not applied)")
    charged = _charged(payment)
    price = _plan_price(plan, interval)
    if plan.currency.lower() != CURRENCY or charged is None or price is None or charged != price:
        return Outcome.rejected(
            "the value Asaas reports does not match the plan's price",
            payment=payment_id,
            reported={"value": str(charged), "currency": CURRENCY},
            expected={"value": str(price), "currency": plan.currency.lower()},
        )
    if sub is None:  # the charge came before SUBSCRIPTION_CREATED: its reference names the plan
        sub = _record_subscription(ctx, user, plan, interval, SubscriptionState(sub_id, status="active"))
    invoice = invoice_for_update(ctx.session, PROVIDER, payment_id)
    if invoice is None:
        invoice = Invoice(provider=PROVIDER, provider_invoice_id=payment_id, status="paid", currency=CURRENCY)
        ctx.session.add(invoice)
    invoice.provider_subscription_id = sub_id
    invoice.provider_customer_id = text_or_none(payment.get("customer"))
    invoice.subscription_id = sub.id
    invoice.user_id = user.id
    invoice.number = text_or_none(payment.get("invoiceNumber"))
    invoice.billing_reason = "subscription_cycle"
    invoice.amount_due = charged
    invoice.amount_paid = _money(payment.get("value")) or charged
    invoice.hosted_invoice_url = payment.get("invoiceUrl") or invoice.hosted_invoice_url
    due = asaas_time(payment.get("dueDate"))
    if due is not None:
        invoice.period_start, invoice.period_end = due, _add_interval(due, interval)
    if invoice.status not in PAID_INVOICE:
        invoice.status = "paid"
    invoice.paid_at = (
        invoice.paid_at or asaas_time(payment.get("confirmedDate")) or asaas_time(payment.get("paymentDate")) or ctx.now
    )
    ctx.session.flush()
    if sub.status in {"pending", "past_due"}:  # paid: the subscription gives its tier (again)
        state = SubscriptionState(sub_id, status="active", current_period_end=invoice.period_end)
        _record_subscription(ctx, user, plan, interval, state)
    granted = grant_invoice_allowance(ctx, invoice, user, plan, interval)
    order = _first_payment_order(ctx, invoice, user, plan, sub)
    return Outcome.done(
        invoice=payment_id, subscription=sub_id, granted=str(granted), tier=plan.tier,
        **({"order_id": str(order.id)} if order is not None else {}),
    )  # fmt: skip


def _first_payment_order(ctx: Ctx, invoice: Invoice, user: User, plan: Plan, sub: Subscription) -> Order | None:
    """Every paid subscription charge goes to the one plan-order flow, which makes the subscription's order at its
    first paid charge and none after it (keyed by the subscription, so both events of a charge, replays,
    reconciliation and later charges find it). A subscription whose earlier charges made no order (paid before
    orders existed) gets it at its next paid charge."""
    if invoice.amount_paid <= 0:
        return None
    return orders.plan_order(
        ctx.session, user_id=user.id, subscription=sub, plan_id=plan.id, plan_name=plan.name,
        amount=invoice.amount_paid, currency=CURRENCY, now=ctx.now, paid=True, provider=PROVIDER,
        invoice_id=invoice.provider_invoice_id,
    )  # fmt: skip


def _record_subscription(
    ctx: Ctx, user: User, plan: Plan | None, interval: str | None, state: SubscriptionState
) -> Subscription:
    """`apply_subscription`, then the plan: Asaas has no price ids, so the plan comes from the reference."""
    sub, _ = apply_subscription(ctx, user, state)
    if plan is not None and (sub.plan_id != plan.id or sub.tier != plan.tier):
        sub.plan_id, sub.tier = plan.id, plan.tier
        sub.interval = interval or sub.interval
        sync_tier(ctx, user)
    return sub


# --- payment events ------------------------------------------------------------------------------------------------
def payment_paid(ctx: Ctx, payment: dict[str, Any]) -> Outcome:
    if str(payment.get("status")) not in WAS_PAID:
        return Outcome.ignored("the charge is not paid", payment=payment.get("id"), status=payment.get("status"))
    _, outcome = _settle(ctx, payment)
    return outcome


def _refunded_value(payment: dict[str, Any], total: Decimal) -> Decimal | None:
    """The cumulative refunded value of a charge: all of it once REFUNDED, else the sum of its refunds that were
    not cancelled (None when the event carries no refund amounts)."""
    if payment.get("status") == "REFUNDED":
        return total
    refunds = payment.get("refunds")
    if not isinstance(refunds, list):
        return None
    values = [
        _money(r.get("value")) or Decimal(0)
        for r in refunds
        if isinstance(r, dict) and str(r.get("status") or "DONE") not in {"CANCELLED", "DENIED"}
    ]
    return sum(values, Decimal(0)) if values else None


def payment_refunded(ctx: Ctx, payment: dict[str, Any]) -> Outcome:
    payment_id = str(payment["id"])
    holder, settled = _settle(ctx, payment)
    if holder is None or holder.user_id is None:
        return settled  # nothing Tollgate granted (not its checkout, or rejected): nothing to take back
    total = holder.amount if isinstance(holder, Purchase) else holder.amount_paid
    refunded = _refunded_value(payment, total)
    if refunded is None and ctx.event_type == "PAYMENT_REFUNDED":
        refunded = total
    if refunded is None:
        return Outcome.rejected("a partial refund without refund values", payment=payment_id)
    refunded = min(refunded, total)
    if refunded <= holder.refunded_amount:
        return Outcome.done(note="this refund step was already applied", payment=payment_id)
    step = refunded - holder.refunded_amount
    holder.refunded_amount = refunded
    holder.status = "refunded" if refunded >= total else "partially_refunded"
    if isinstance(holder, Purchase):
        credits, reversed_money = holder.credits, holder.refunded_amount + holder.disputed_amount
    else:
        credits, reversed_money = holder.credits_granted, holder.refunded_amount
    refund = reverse_credits(
        ctx, holder, user_id=holder.user_id, credits=credits, total=total, reversed_money=reversed_money,
        step_id=f"{payment_id}:refunded:{to_minor(refunded, CURRENCY)}", kind="refund", step_amount=step,
        currency=CURRENCY,
    )  # fmt: skip
    if refund is None:
        return Outcome.done(note="this refund step was already applied", payment=payment_id)
    moved = order_refunds.provider_refund_step(ctx.session, holder, refund, refunded, ctx.now)
    return Outcome.done(
        payment=payment_id,
        refunded=str(refunded),
        **reversal_detail(refund),
        **({"early": settled.detail} if "granted" in settled.detail else {}),
        **({"order_refund": moved} if moved else {}),
    )


def payment_chargeback(ctx: Ctx, payment: dict[str, Any]) -> Outcome:
    payment_id = str(payment["id"])
    found = payment.get("chargeback")
    chargeback: dict[str, Any] = found if isinstance(found, dict) else {}
    if ctx.event_type == "PAYMENT_AWAITING_CHARGEBACK_REVERSAL":
        return Outcome.done(payment=payment_id, note="the chargeback was won: nothing moves")
    holder, settled = _settle(ctx, payment)
    if holder is None or holder.user_id is None:
        return settled
    if not isinstance(holder, Purchase):
        return Outcome.done(payment=payment_id, note="chargebacks of subscription charges move no credits")
    step_id = f"{payment_id}:chargeback"  # one claw-back per charge, whichever chargeback event comes first
    if ctx.session.execute(
        select(Refund.id).where(Refund.provider == PROVIDER, Refund.provider_refund_id == step_id)
    ).first():
        return Outcome.done(duplicate_step=step_id)
    amount = min(_charged(payment) or holder.amount, holder.amount)
    holder.disputed_amount += amount
    refund = reverse_credits(
        ctx, holder, user_id=holder.user_id, credits=holder.credits, total=holder.amount,
        reversed_money=holder.refunded_amount + holder.disputed_amount, step_id=step_id, kind="chargeback",
        step_amount=amount, currency=CURRENCY, reason=text_or_none(chargeback.get("reason")),
    )  # fmt: skip
    if refund is None:
        return Outcome.done(duplicate_step=step_id)
    return Outcome.done(
        payment=payment_id,
        **reversal_detail(refund),
    )


def payment_overdue(ctx: Ctx, payment: dict[str, Any]) -> Outcome:
    payment_id, sub_id = str(payment["id"]), text_or_none(payment.get("subscription"))
    if not sub_id:
        return Outcome.done(payment=payment_id, note="an overdue pack charge grants nothing and stays payable")
    sub = subscription_for_update(ctx.session, PROVIDER, sub_id)
    if sub is None:
        return Outcome.ignored("the overdue charge's subscription is not known", payment=payment_id)
    user = ctx.session.get(User, sub.user_id, with_for_update={"key_share": True})
    if user is None:
        return Outcome.ignored("the subscription has no Tollgate user", payment=payment_id)
    invoice = invoice_for_update(ctx.session, PROVIDER, payment_id)
    if invoice is None:
        invoice = Invoice(provider=PROVIDER, provider_invoice_id=payment_id, status="payment_failed", currency=CURRENCY)
        ctx.session.add(invoice)
    if invoice.status in PAID_INVOICE:  # an older overdue notice of a charge paid since
        return Outcome.done(payment=payment_id, note="the charge was paid since")
    invoice.provider_subscription_id, invoice.subscription_id, invoice.user_id = sub_id, sub.id, user.id
    invoice.amount_due = _charged(payment) or invoice.amount_due
    invoice.hosted_invoice_url = payment.get("invoiceUrl") or invoice.hosted_invoice_url
    invoice.status = "payment_failed"  # the invoice status Stripe's failed charges take too
    ctx.session.flush()
    if sub.status == "active":
        apply_subscription(ctx, user, SubscriptionState(sub_id, status="past_due"))
    notify_payment_failed(ctx, user, invoice)
    return Outcome.done(payment=payment_id, subscription=sub_id, status=sub.status, notified=True)


# --- subscription events -------------------------------------------------------------------------------------------
def _has_paid_charge(ctx: Ctx, sub_id: str) -> bool:
    return (
        ctx.session.execute(
            select(Invoice.id).where(
                Invoice.provider == PROVIDER,
                Invoice.provider_subscription_id == sub_id,
                Invoice.status.in_(PAID_INVOICE),
            )
        ).first()
        is not None
    )


def subscription_event(ctx: Ctx, obj: dict[str, Any]) -> Outcome:
    sub_id = str(obj["id"])
    reference = Reference.parse(obj.get("externalReference"))
    existing = subscription_for_update(ctx.session, PROVIDER, sub_id)
    user = ctx.session.get(User, existing.user_id, with_for_update={"key_share": True}) if existing else None
    user = user or _buyer(ctx, reference, text_or_none(obj.get("customer")))
    if user is None:
        if reference is None:
            return Outcome.ignored("not a Tollgate subscription (no tg: externalReference)", subscription=sub_id)
        raise NotYetApplicable("no Tollgate user is linked to this Asaas subscription yet")
    plan, interval = _plan_of(ctx, existing, reference)
    interval = INTERVALS.get(str(obj.get("cycle"))) or interval
    value = _money(obj.get("value"))
    if plan is not None and existing is None and (value is None or value != _plan_price(plan, interval)):
        return Outcome.rejected(
            "the subscription's value does not match the plan's price",
            subscription=sub_id,
            reported={"value": str(value)},
            expected={"value": str(_plan_price(plan, interval))},
        )
    deleted = ctx.event_type == "SUBSCRIPTION_DELETED" or bool(obj.get("deleted"))
    status = "deleted" if deleted else str(obj.get("status") or "ACTIVE").lower()
    if ctx.event_type == "SUBSCRIPTION_INACTIVATED" and not deleted:
        status = "inactive"
    if status == "active" and not _has_paid_charge(ctx, sub_id):
        status = "pending"  # no tier before the first charge is paid
    if status == "active" and existing is not None and existing.status == "past_due":
        status = "past_due"  # Asaas keeps an overdue subscription ACTIVE; its charge is still unpaid
    ended = ctx.provider_time or ctx.now
    state = SubscriptionState(
        provider_subscription_id=sub_id,
        status=status,
        customer_id=text_or_none(obj.get("customer")),
        interval=interval,
        current_period_end=asaas_time(obj.get("nextDueDate")),
        canceled_at=ended if status in TERMINAL[PROVIDER] | {"inactive"} else None,
        ended_at=ended if status in TERMINAL[PROVIDER] else None,
        unit_amount=value,
        currency=CURRENCY,
        metadata={
            "external_reference": obj.get("externalReference"),
            "cycle": obj.get("cycle"),
            "billing_type": obj.get("billingType"),
        },
    )
    sub = _record_subscription(ctx, user, plan, interval, state)
    return Outcome.done(subscription=sub_id, status=sub.status, tier=user.tier)


PAYMENT_HANDLERS: dict[str, Handler] = {
    "PAYMENT_CONFIRMED": payment_paid,
    "PAYMENT_RECEIVED": payment_paid,
    "PAYMENT_REFUNDED": payment_refunded,
    "PAYMENT_PARTIALLY_REFUNDED": payment_refunded,
    "PAYMENT_CHARGEBACK_REQUESTED": payment_chargeback,
    "PAYMENT_CHARGEBACK_DISPUTE": payment_chargeback,
    "PAYMENT_AWAITING_CHARGEBACK_REVERSAL": payment_chargeback,
    "PAYMENT_OVERDUE": payment_overdue,
}
SUBSCRIPTION_EVENTS = frozenset(
    {"SUBSCRIPTION_CREATED", "SUBSCRIPTION_UPDATED", "SUBSCRIPTION_INACTIVATED", "SUBSCRIPTION_DELETED"}
)


def handle(ctx: Ctx, payload: dict[str, Any]) -> Outcome:
    handler = PAYMENT_HANDLERS.get(ctx.event_type)
    if handler is not None:
        payment = payload.get("payment")
        if not isinstance(payment, dict) or not payment.get("id"):
            return Outcome.rejected("the event carries no payment")
        return handler(ctx, payment)
    if ctx.event_type in SUBSCRIPTION_EVENTS:
        obj = payload.get("subscription")
        if not isinstance(obj, dict) or not obj.get("id"):
            return Outcome.rejected("the event carries no subscription")
        return subscription_event(ctx, obj)
    return Outcome.ignored(f"Tollgate does not handle {ctx.event_type}")
