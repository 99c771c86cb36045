"""Clerk Billing events (through Svix, on /webhooks/clerk beside the `user.*` events).

Shapes: `@clerk/backend`'s `BillingSubscriptionItemWebhookEventJSON`, `BillingSubscriptionWebhookEventJSON` and
`BillingPaymentAttemptWebhookEventJSON` (times in epoch milliseconds, money as `{amount (minor units), currency}`).

- `subscriptionItem.*` (created, updated, active, canceled, upcoming, ended, abandoned, incomplete, pastDue,
  freeTrialEnding): one subscription row per Clerk subscription item (provider `clerk`), its plan found by
  `plans.clerk_plan_id` (`plan.id` / `plan_id`, `cplan_*`), its user by `users.clerk_id` (`payer.user_id`). An
  event older than the last one applied never moves the row (the Svix envelope's `timestamp`), and an ended,
  expired or abandoned item never comes back. An active item Clerk marks `is_free_trial` is stored `trialing`.
- `subscription.*` (created, updated, active, pastDue): the payer's container; each of its items is applied as
  above (its `payer` is the container's).
- `paymentAttempt.*`: `paid` records an invoice (provider `clerk`, keyed by the attempt id) and grants the billed
  plan's allowance for the period it pays, once per payment attempt and once per (item, period start) whatever
  attempt pays it (`attempt_grant`): times the share of the item's price it paid; an attempt whose period overlaps
  another item's paid period of the same user is a plan change (Clerk makes a new item for each): an upgrade
  grants the allowance difference for the time left, a downgrade nothing, and never more than one period of the
  plan it bills minus what the overlapping invoices granted; `failed` records the failed invoice, moves the live
  items to `past_due` and mails the payer (recurring charges only: a failed checkout is seen on the page);
  `pending` records an open invoice.
  Clerk sends no refund event: refunds issued in Clerk's dashboard are not seen here.
- A free trial grants its period's allowance once (keyed by the item and the period start), as a provider's
  free trial invoice does; the first paid period after it grants again.
Items on Clerk's free default plan, and organization payers, are not Tollgate subscriptions (ignored).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select

from tollgate.models.commerce import Order
from tollgate.models.credits import Plan
from tollgate.models.payments import Invoice, Subscription
from tollgate.models.users import User
from tollgate.payments.money import to_major
from tollgate.services.accounts import unlock_after_payment
from tollgate.services.payment_events.handling import (
    CREDIT_SCALE,
    Ctx,
    NotYetApplicable,
    Outcome,
    SubscriptionState,
    apply_subscription,
    grant_invoice_allowance,
    invoice_for_update,
    months_in,
    notify_payment_failed,
    paid_plan_order,
    period_allowance,
    plan_by_price,
    subscription_for_update,
)

PROVIDER = "clerk"
PAID_INVOICE = frozenset({"paid", "refunded", "partially_refunded"})
LIVE = frozenset({"active", "trialing"})  # what a failed charge moves to past_due
SAME_PERIOD = timedelta(seconds=60)


# --- reading Clerk's objects ---------------------------------------------------------------------------------------
def ms(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, UTC)


def _money(value: Any) -> tuple[Decimal | None, str | None]:
    if not isinstance(value, dict) or value.get("amount") is None:
        return None, None
    currency = str(value.get("currency") or "usd").lower()
    return to_major(value.get("amount"), currency), currency


def _plan_ref(item: dict[str, Any]) -> str | None:
    plan = item.get("plan")
    if isinstance(plan, dict) and plan.get("id"):
        return str(plan["id"])
    return str(item["plan_id"]) if item.get("plan_id") else None


def _interval(item: dict[str, Any]) -> str:
    plan = item.get("plan") if isinstance(item.get("plan"), dict) else {}
    period = item.get("plan_period") or (plan or {}).get("period")
    return "year" if period == "annual" else "month"


def _is_default(item: dict[str, Any]) -> bool:
    plan = item.get("plan")
    return isinstance(plan, dict) and bool(plan.get("is_default"))


def _tollgate_plan(ctx: Ctx, item: dict[str, Any]) -> Plan | None:
    """The Tollgate plan an item bills, or None (Clerk's free default plan, or a plan Tollgate does not sell)."""
    if _is_default(item):
        return None
    plan, _ = plan_by_price(ctx.session, PROVIDER, _plan_ref(item))
    return plan if plan is not None and plan.tier != "FREE" else None


def _payer_user(ctx: Ctx, payer: Any) -> tuple[User | None, str | None]:
    """The Tollgate user who pays (by Clerk user id), or why there is none."""
    if not isinstance(payer, dict):
        return None, "the event names no payer"
    clerk_id = payer.get("user_id")
    if not clerk_id:
        return None, "an organization payer is not a Tollgate user"
    user = ctx.session.execute(
        select(User).where(User.clerk_id == str(clerk_id)).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if user is None:
        # `user.created` may still be on its way: roll back and let Svix retry.
        raise NotYetApplicable(f"no Tollgate user has the Clerk id {clerk_id} yet")
    return user, None


def item_state(item: dict[str, Any], *, trial: bool = False) -> SubscriptionState:
    status = str(item.get("status") or "incomplete")
    trialing = status == "active" and (bool(item.get("is_free_trial")) or trial)
    start, end = ms(item.get("period_start")), ms(item.get("period_end"))
    amount, currency = _money(item.get("amount"))
    payer = item.get("payer") if isinstance(item.get("payer"), dict) else {}
    return SubscriptionState(
        provider_subscription_id=str(item["id"]),
        status="trialing" if trialing else status,
        customer_id=(payer or {}).get("id") or item.get("payer_id"),
        price_id=_plan_ref(item),
        product_id=(item.get("plan") or {}).get("product_id") if isinstance(item.get("plan"), dict) else None,
        interval=_interval(item),
        current_period_start=start,
        current_period_end=end,
        cancel_at_period_end=True if status == "canceled" else (False if status == "active" else None),
        canceled_at=ms(item.get("canceled_at")),
        ended_at=ms(item.get("ended_at")) or (end if status in {"ended", "expired"} else None),
        trial_start=start if trialing else None,
        trial_end=end if trialing else None,
        unit_amount=amount,
        currency=currency,
        metadata={"clerk_plan_slug": (item.get("plan") or {}).get("slug")}
        if isinstance(item.get("plan"), dict)
        else {},
    )


# --- the allowance of a period ------------------------------------------------------------------------------------
def _period_granted(ctx: Ctx, item_id: str, start: datetime | None, exclude: Invoice) -> bool:
    """Did another invoice already grant this item's period (a second paid attempt for the same period)?"""
    if start is None:
        return False
    found = ctx.session.execute(
        select(Invoice.id).where(
            Invoice.provider == PROVIDER,
            Invoice.provider_subscription_id == item_id,
            Invoice.period_start.between(start - SAME_PERIOD, start + SAME_PERIOD),
            Invoice.grant_source_key.is_not(None),
            Invoice.id != exclude.id,
        )
    ).first()
    return found is not None


def _grant_period(ctx: Ctx, invoice: Invoice, user: User, plan: Plan, interval: str, item_id: str) -> Decimal:
    if invoice.grant_source_key or _period_granted(ctx, item_id, invoice.period_start, invoice):
        return Decimal(0)
    return grant_invoice_allowance(ctx, invoice, user, plan, interval)


def _minor(value: Any) -> tuple[int | None, str | None]:
    """A Clerk money object's amount in minor units and its currency (None when it carries no whole amount)."""
    if not isinstance(value, dict):
        return None, None
    amount = value.get("amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        return None, None
    return amount, str(value.get("currency") or "usd").lower()


def paid_share(data: dict[str, Any], item: dict[str, Any]) -> Decimal:
    """The share of the item's price that the attempt paid (`totals.grand_total` against the item's `amount`, the
    plan's `amount` if the item names none), at most 1; 1 when the payload carries no comparable price."""
    totals = data.get("totals") if isinstance(data.get("totals"), dict) else {}
    paid, paid_currency = _minor((totals or {}).get("grand_total"))
    price, price_currency = _minor(item.get("amount"))
    plan = item.get("plan") if isinstance(item.get("plan"), dict) else {}
    if price is None and _interval(item) == "month":
        price, price_currency = _minor({"amount": (plan or {}).get("amount"), "currency": (plan or {}).get("currency")})
    if paid is None or price is None or price <= 0 or paid_currency != price_currency or paid >= price:
        return Decimal(1)
    return Decimal(max(paid, 0)) / Decimal(price)


@dataclass(frozen=True, slots=True)
class AttemptGrant:
    amount: Decimal
    rule: str  # period | pro_rata | upgrade | downgrade | same_plan | capped | already
    new_period: bool


def _seconds(start: datetime, end: datetime) -> Decimal:
    return max(Decimal(int((end - start).total_seconds())), Decimal(0))


def _interval_of(start: datetime, end: datetime) -> str:
    """The interval a period of Clerk's (month or annual) spans, from its length."""
    return "year" if end - start > timedelta(days=300) else "month"


def _overlapping(ctx: Ctx, invoice: Invoice, user: User, item_id: str) -> list[Invoice]:
    """The user's paid Clerk invoices of OTHER items whose periods overlap this attempt's period. Clerk makes a new
    item on every plan change, so the allowance of one period is capped per user, not per item. An item that was
    left for this one (its period began before this item's first paid period) counts only for this item's first
    attempt: it is the plan changed from, and its period is over once the new item renews."""
    start, end = invoice.period_start, invoice.period_end
    if start is None or end is None:
        return []
    first = ctx.session.execute(
        select(func.min(Invoice.period_start)).where(
            Invoice.provider == PROVIDER,
            Invoice.provider_subscription_id == item_id,
            Invoice.status.in_(PAID_INVOICE),
            Invoice.id != invoice.id,
        )
    ).scalar_one()
    renewal = first is not None and first < start - SAME_PERIOD
    query = select(Invoice).where(
        Invoice.provider == PROVIDER,
        Invoice.user_id == user.id,
        Invoice.provider_subscription_id != item_id,
        Invoice.status.in_(PAID_INVOICE),
        Invoice.plan_id.is_not(None),
        Invoice.id != invoice.id,
        Invoice.period_start < end - SAME_PERIOD,
        Invoice.period_end > start + SAME_PERIOD,
    )
    if first is not None and renewal:
        query = query.where(Invoice.period_start >= first - SAME_PERIOD)
    return list(ctx.session.execute(query.order_by(Invoice.period_start)).scalars())


def attempt_grant(ctx: Ctx, invoice: Invoice, user: User, plan: Plan, interval: str, share: Decimal) -> AttemptGrant:
    """What a paid attempt grants. Without another item's paid period overlapping its own, it opens a period: the
    plan's allowance, times the share of the price it paid. Overlapping one, it is a plan change: an upgrade grants
    the difference between the plans' monthly allowances for the time left in the period left behind (as Stripe
    prorates), plus the new plan's allowance for any part of its period that runs past that one's end; a downgrade
    grants nothing until the next period. Either way the grant is capped at one period's allowance of the plan it
    bills minus what the overlapping invoices granted."""
    full = period_allowance(plan, interval)
    item_id = invoice.provider_subscription_id or ""
    others = _overlapping(ctx, invoice, user, item_id)
    if not others:
        return AttemptGrant((full * share).quantize(CREDIT_SCALE), "period" if share >= 1 else "pro_rata", True)
    start, end = invoice.period_start, invoice.period_end
    assert start is not None and end is not None  # `_overlapping` finds nothing without a period
    room = max(full - sum((Decimal(o.credits_granted or 0) for o in others), Decimal(0)), Decimal(0))
    before = [o for o in others if o.period_start is not None and o.period_start <= start + SAME_PERIOD]
    if not before:  # only later items overlap (their events came first): the cap alone decides
        return AttemptGrant(room, "capped", False)
    prev = before[-1]
    prev_plan = ctx.session.get(Plan, prev.plan_id)
    if prev_plan is None or plan.monthly_credits <= prev_plan.monthly_credits:
        rule = "same_plan" if prev_plan is not None and prev_plan.id == plan.id else "downgrade"
        return AttemptGrant(Decimal(0), rule, False)
    prev_start, prev_end = prev.period_start, prev.period_end
    assert prev_start is not None and prev_end is not None
    # The period left behind began with the first of the items that end with it (an up-, down- and upgrading
    # again within one period makes items that each carry only the rest of it).
    began = min(
        (
            o.period_start
            for o in before
            if o.period_start is not None and o.period_end and abs(o.period_end - prev_end) <= SAME_PERIOD
        ),
        default=prev_start,
    )
    moment = max(start, prev_start)
    length = _seconds(began, prev_end)
    left = min(_seconds(moment, prev_end), length) / length if length > 0 else Decimal(0)
    worth = (plan.monthly_credits - prev_plan.monthly_credits) * months_in(_interval_of(began, prev_end)) * left
    tail_from = max(prev_end, moment)
    if end > tail_from + SAME_PERIOD:  # Clerk started a new period that outlives the one left behind
        worth += full * _seconds(tail_from, end) / _seconds(start, end)
    return AttemptGrant(min(worth.quantize(CREDIT_SCALE, rounding=ROUND_HALF_UP), room), "upgrade", False)


def _trial_grant(ctx: Ctx, user: User, item: dict[str, Any], plan: Plan, state: SubscriptionState) -> Decimal:
    """A free trial's allowance, once per (item, trial period start)."""
    start = state.current_period_start
    if start is None:
        return Decimal(0)
    invoice_id = f"{state.provider_subscription_id}:trial:{int(start.timestamp())}"
    invoice = invoice_for_update(ctx.session, PROVIDER, invoice_id)
    if invoice is None:
        invoice = Invoice(
            provider=PROVIDER, provider_invoice_id=invoice_id, status="paid", currency=plan.currency,
            amount_due=Decimal(0), amount_paid=Decimal(0), billing_reason="free_trial",
        )  # fmt: skip
        ctx.session.add(invoice)
    invoice.user_id, invoice.provider_subscription_id = user.id, state.provider_subscription_id
    invoice.period_start, invoice.period_end = start, state.current_period_end
    invoice.paid_at = invoice.paid_at or ctx.now
    sub = subscription_for_update(ctx.session, PROVIDER, state.provider_subscription_id)
    invoice.subscription_id = sub.id if sub is not None else None
    ctx.session.flush()
    return _grant_period(ctx, invoice, user, plan, state.interval or "month", state.provider_subscription_id)


def _trial_invoiced(ctx: Ctx, item_id: str) -> bool:
    """Was this item's trial already given its allowance (a later event of the same trial)?"""
    found = ctx.session.execute(
        select(Invoice.id).where(
            Invoice.provider == PROVIDER,
            Invoice.provider_subscription_id == item_id,
            Invoice.billing_reason == "free_trial",
        )
    ).first()
    return found is not None


# --- handlers ------------------------------------------------------------------------------------------------------
def _apply_item(ctx: Ctx, item: dict[str, Any], payer: Any) -> dict[str, Any]:
    plan = _tollgate_plan(ctx, item)
    if plan is None:
        return {"item": item.get("id"), "skipped": "Clerk's free default plan" if _is_default(item) else "no plan"}
    user, why = _payer_user(ctx, payer)
    if user is None:
        return {"item": item.get("id"), "skipped": why}
    state = item_state(item, trial=ctx.event_type == "subscriptionItem.freeTrialEnding")
    # One trial allowance per user: a trial of another item (or one the TrialExpiry job ended) was the one.
    trial_allowed = not user.trial_used or _trial_invoiced(ctx, state.provider_subscription_id)
    sub, applied = apply_subscription(ctx, user, state)
    detail: dict[str, Any] = {
        "item": state.provider_subscription_id, "status": sub.status, "applied": applied, "tier": user.tier,
    }  # fmt: skip
    if applied and sub.status == "trialing":
        detail["granted"] = str(_trial_grant(ctx, user, item, plan, state)) if trial_allowed else "0"
    return detail


def subscription_item(ctx: Ctx, data: dict[str, Any]) -> Outcome:
    if not data.get("id"):
        return Outcome.rejected("the event carries no subscription item")
    if _tollgate_plan(ctx, data) is None:
        if _is_default(data):
            return Outcome.ignored("an item of Clerk's free default plan", item=data.get("id"))
        return Outcome.rejected("the Clerk plan is not a Tollgate plan", item=data.get("id"), plan=_plan_ref(data))
    detail = _apply_item(ctx, data, data.get("payer"))
    if "skipped" in detail:
        return Outcome.ignored(str(detail["skipped"]), item=data.get("id"))
    return Outcome.done(**detail)


def subscription(ctx: Ctx, data: dict[str, Any]) -> Outcome:
    items = [i for i in data.get("items") or [] if isinstance(i, dict) and i.get("id")]
    results = [_apply_item(ctx, item, data.get("payer") or item.get("payer")) for item in items]
    applied = [r for r in results if "skipped" not in r]
    if not applied:
        return Outcome.ignored("no item of this subscription bills a Tollgate plan", subscription=data.get("id"))
    return Outcome.done(subscription=data.get("id"), items=applied)


def _billed(ctx: Ctx, data: dict[str, Any]) -> tuple[dict[str, Any], Plan] | None:
    """The item a payment attempt pays for: the one billing the Tollgate plan with the largest allowance."""
    chosen: list[tuple[dict[str, Any], Plan]] = []
    for item in data.get("subscription_items") or []:
        plan = _tollgate_plan(ctx, item) if isinstance(item, dict) and item.get("id") else None
        if plan is not None:
            chosen.append((item, plan))
    if not chosen:
        return None
    return max(chosen, key=lambda pair: period_allowance(pair[1], _interval(pair[0])))


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` `months` later, the day clamped to the shorter month (31 January + 1 = 28/29 February)."""
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    return moment.replace(year=year, month=month + 1, day=min(moment.day, calendar.monthrange(year, month + 1)[1]))


def _paid_period(data: dict[str, Any], item: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    """The period a payment pays: the item's, unless the item still shows the period the charge renews (a
    recurring attempt can carry the item as it was before the renewal): then one interval from the billing date."""
    start, end = ms(item.get("period_start")), ms(item.get("period_end"))
    billing = ms(data.get("billing_date")) or ms(data.get("paid_at"))
    if billing is not None and end is not None and end <= billing + SAME_PERIOD:
        return billing, add_months(billing, months_in(_interval(item)))
    return start, end


def payment_attempt(ctx: Ctx, data: dict[str, Any]) -> Outcome:
    if not data.get("id"):
        return Outcome.rejected("the event carries no payment attempt")
    status = str(data.get("status") or "pending")
    billed = _billed(ctx, data)
    if billed is None:
        return Outcome.ignored("the payment attempt bills no Tollgate plan", attempt=data.get("id"))
    item, plan = billed
    user, why = _payer_user(ctx, data.get("payer"))
    if user is None:
        return Outcome.ignored(str(why), attempt=data.get("id"))
    totals = data.get("totals") if isinstance(data.get("totals"), dict) else {}
    amount, currency = _money((totals or {}).get("grand_total"))
    currency = currency or plan.currency
    invoice = invoice_for_update(ctx.session, PROVIDER, str(data["id"]))
    if invoice is None:
        invoice = Invoice(provider=PROVIDER, provider_invoice_id=str(data["id"]), status="open", currency=currency)
        ctx.session.add(invoice)
    item_id = str(item["id"])
    sub = subscription_for_update(ctx.session, PROVIDER, item_id)
    invoice.user_id, invoice.provider_subscription_id = user.id, item_id
    invoice.subscription_id = sub.id if sub is not None else invoice.subscription_id
    invoice.provider_customer_id = (data.get("payer") or {}).get("id") or invoice.provider_customer_id
    invoice.provider_payment_intent_id = data.get("payment_id") or invoice.provider_payment_intent_id
    invoice.provider_charge_id = data.get("gateway_external_id") or invoice.provider_charge_id
    invoice.number = data.get("statement_id") or invoice.number
    invoice.billing_reason = data.get("charge_type") or invoice.billing_reason
    invoice.amount_due = amount if amount is not None else invoice.amount_due
    invoice.currency = currency
    invoice.livemode = ctx.livemode
    if invoice.period_start is None:
        invoice.period_start, invoice.period_end = _paid_period(data, item)
    # A paid invoice stays paid whatever older event (the `pending` creation) arrives after it.
    if invoice.status not in PAID_INVOICE:
        invoice.status = {"paid": "paid", "failed": "payment_failed"}.get(status, "open")
    if ctx.provider_time is not None:
        invoice.provider_updated_at = max(ctx.provider_time, invoice.provider_updated_at or ctx.provider_time)
    ctx.session.flush()
    if status == "paid":
        unlock_after_payment(user)  # a trial that had ended locked the account; paying reopens it
        invoice.amount_paid = invoice.amount_due
        invoice.paid_at = invoice.paid_at or ms(data.get("paid_at")) or ctx.now
        if invoice.grant_source_key or _period_granted(ctx, item_id, invoice.period_start, invoice):
            rule = AttemptGrant(Decimal(0), "already", True)
        else:
            rule = attempt_grant(ctx, invoice, user, plan, _interval(item), paid_share(data, item))
        granted = grant_invoice_allowance(
            ctx, invoice, user, plan, _interval(item), amount=rule.amount, new_period=rule.new_period
        )
        order = _first_payment_order(ctx, invoice, user, plan, sub)
        return Outcome.done(
            attempt=invoice.provider_invoice_id, granted=str(granted), rule=rule.rule, tier=plan.tier, item=item_id,
            **({"order_id": str(order.id)} if order is not None else {}),
        )  # fmt: skip
    if status == "failed":
        if invoice.status in PAID_INVOICE:
            return Outcome.ignored("the attempt was already seen paid", attempt=invoice.provider_invoice_id)
        moved = []
        for entry in data.get("subscription_items") or []:
            row = subscription_for_update(ctx.session, PROVIDER, str(entry.get("id"))) if entry.get("id") else None
            if row is None or row.status not in LIVE:
                continue
            if (
                ctx.provider_time is not None
                and row.provider_updated_at
                and ctx.provider_time < row.provider_updated_at
            ):
                continue
            row.status = "past_due"
            moved.append(row.provider_subscription_id)
        notify = data.get("charge_type") != "checkout"
        if notify:
            notify_payment_failed(ctx, user, invoice)
        reason = (data.get("failed_reason") or {}).get("code") if isinstance(data.get("failed_reason"), dict) else None
        return Outcome.done(
            attempt=invoice.provider_invoice_id, status="payment_failed", past_due=moved, notified=notify,
            **({"failed_reason": reason} if reason else {}),
        )  # fmt: skip
    return Outcome.done(attempt=invoice.provider_invoice_id, status=invoice.status, note="pending: nothing granted")


def _first_payment_order(ctx: Ctx, invoice: Invoice, user: User, plan: Plan, sub: Subscription | None) -> Order | None:
    """Every paid attempt goes to the plan-order flow: the item's order comes at its first paid period (the
    `checkout` attempt, or after a free trial its first `recurring` one). One per item: Clerk makes a new item
    for each plan change, so a change is an order too."""
    order: Order | None = paid_plan_order(ctx, invoice, user, plan, sub, provider=PROVIDER)
    return order


def handle(ctx: Ctx, payload: dict[str, Any]) -> Outcome:
    data = payload.get("data")
    if not isinstance(data, dict):
        return Outcome.rejected("the event carries no data")
    kind = ctx.event_type.split(".", 1)[0]
    if kind == "subscriptionItem":
        return subscription_item(ctx, data)
    if kind == "subscription":
        return subscription(ctx, data)
    if kind == "paymentAttempt":
        return payment_attempt(ctx, data)
    return Outcome.ignored(f"Tollgate does not handle {ctx.event_type}")


BILLING_EVENT_KINDS = frozenset({"subscription", "subscriptionItem", "paymentAttempt"})
