"""Stripe events -> purchases, subscriptions, invoices, refunds, the catalogue mirror and ledger grants.

Speaks the API version pinned in `adapters.STRIPE_API_VERSION` (periods on subscription items,
`invoice.parent.subscription_details`, line prices in `pricing.price_details`, proration flags in
`line.parent.*_details.proration`, no `invoice.charge` and no `charge.invoice`: `invoice_payment.paid` links an
invoice to the payment intent or charge that paid it), and still reads the 2020-2024 shapes (top-level
`invoice.subscription`, `invoice.charge`, `invoice.payment_intent`, `line.price`, `line.proration`,
`charge.invoice`, periods on the subscription), as in tests/fixtures/providers/stripe.

Stripe does not order its deliveries: a refund or a lost dispute can arrive before the purchase or invoice it
reverses. It is then stored `ignored` (nothing to reverse yet, 2xx), and the grant that arrives later applies it in
its own transaction (`_apply_early_reversals`), marking the stored event processed, so a redelivery is a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, func, or_, select, text

from tollgate.db import UnitOfWork
from tollgate.models.commerce import Order
from tollgate.models.credits import Plan
from tollgate.models.payments import (
    Invoice,
    PaymentMethod,
    Purchase,
    Refund,
    Subscription,
    WebhookEvent,
)
from tollgate.models.users import User
from tollgate.payments import adapters
from tollgate.payments.money import to_major, to_minor
from tollgate.payments.signatures import parse_time
from tollgate.services.payment_events import (
    stripe_auto_topup,
    stripe_catalogue_events,
    stripe_order_events,
    stripe_refund_events,
)
from tollgate.services.payment_events.handling import (
    BilledLine,
    Ctx,
    NotYetApplicable,
    Outcome,
    PackOrder,
    SubscriptionState,
    apply_subscription,
    fulfil_pack_order,
    grant_invoice_allowance,
    invoice_allowance,
    invoice_for_update,
    link_customer,
    metadata_of,
    notify_payment_failed,
    object_id,
    pack_by_id,
    paid_plan_order,
    plan_by_price,
    reversal_detail,
    reverse_credits,
    subscription_for_update,
    top_up_room,
    user_by_customer,
    user_by_id,
)

PROVIDER = "stripe"
Handler = Callable[[Ctx, dict[str, Any], dict[str, Any]], Outcome]


# --- checkout ------------------------------------------------------------------------------------------------------
def _buyer(ctx: Ctx, obj: dict[str, Any]) -> User | None:
    meta = metadata_of(obj)
    user = user_by_id(ctx.session, meta.get("user_id") or obj.get("client_reference_id"))
    return user or user_by_customer(ctx.session, PROVIDER, object_id(obj.get("customer")))


def checkout_completed(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    session_id = str(obj.get("id"))
    user = _buyer(ctx, obj)
    if user is None:
        return Outcome.rejected("no Tollgate user matches this checkout", session=session_id)
    link_customer(ctx.session, user, PROVIDER, object_id(obj.get("customer")))
    mode = obj.get("mode")
    meta = metadata_of(obj)
    if mode == "subscription":
        sub_id = object_id(obj.get("subscription"))
        if not sub_id:
            return Outcome.rejected("a subscription checkout without a subscription", session=session_id)
        sub = subscription_for_update(ctx.session, PROVIDER, sub_id)
        if sub is None:
            # Record it now; customer.subscription.* events bring its status and periods (never backwards).
            customer = object_id(obj.get("customer"))
            state = SubscriptionState(sub_id, status="incomplete", customer_id=customer, metadata=meta)
            original, ctx.provider_time = ctx.provider_time, None
            try:
                sub, _ = apply_subscription(ctx, user, state)
            finally:
                ctx.provider_time = original
        stripe_order_events.plan_checkout(ctx, obj, user.id, sub.id)  # a plan's first payment is an order too
        return Outcome.done(subscription=sub_id, user_id=str(user.id))
    if mode != "payment":
        return Outcome.ignored(f"checkout mode {mode!r} moves no credits")
    if meta.get("kind", "pack") != "pack":
        return Outcome.rejected("a payment checkout for something other than a pack", session=session_id)
    return _pack_checkout(ctx, event, obj, user)


def _pack_checkout(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any], user: User) -> Outcome:
    """A pack bought through Checkout: the one pack-order flow, with the session's line-item prices fetched
    before the transaction (`prefetch`), and the refunds or disputes that arrived first applied after the grant."""
    session_id = str(obj.get("id"))
    payment_intent = object_id(obj.get("payment_intent"))
    order = PackOrder(
        provider=PROVIDER,
        order_id=session_id,
        pack_ref=metadata_of(obj).get("item_id"),
        amount_minor=obj.get("amount_total") if isinstance(obj.get("amount_total"), int) else None,
        currency=str(obj.get("currency") or "").lower() or None,
        paid=obj.get("payment_status") in {"paid", "no_payment_required"},
        paid_at=ctx.provider_time,
        payment_id=payment_intent,
        customer_id=object_id(obj.get("customer")),
        price_refs=tuple(ctx.fetched.get(LINE_ITEM_PRICES) or ()),
    )

    def early_reversals(purchase: Purchase) -> dict[str, Any]:
        if not purchase.provider_payment_id:
            return {}
        late = _apply_early_reversals(ctx, event, PURCHASE_REVERSALS, payment_intent=purchase.provider_payment_id)
        return {"late_reversals": late} if late else {}

    outcome = fulfil_pack_order(ctx, user, order, on_granted=early_reversals)
    if outcome.detail.get("status") == "pending":
        outcome.detail["payment_status"] = obj.get("payment_status")
    return outcome


def payment_intent_event(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """`payment_intent.succeeded` / `.payment_failed`: only auto top-up's own PaymentIntents move anything (a
    Checkout's payment is carried by its session's events)."""
    if not stripe_auto_topup.is_auto_topup(obj):
        return Outcome.ignored("not an auto top-up payment: a checkout's session events carry it")
    if event.get("type") == "payment_intent.payment_failed":
        return stripe_auto_topup.payment_failed(ctx, obj)

    def early_reversals(purchase: Purchase) -> dict[str, Any]:
        late = _apply_early_reversals(ctx, event, PURCHASE_REVERSALS, payment_intent=purchase.provider_payment_id)
        return {"late_reversals": late} if late else {}

    return stripe_auto_topup.payment_succeeded(ctx, obj, on_granted=early_reversals)


# What `prefetch` stores in `ctx.fetched`: the price ids of a pack checkout's line items.
LINE_ITEM_PRICES = "line_item_prices"


def prefetch(payload: dict[str, Any], uow_factory: Callable[[], UnitOfWork]) -> dict[str, Any]:
    """What an event needs from Stripe's API, fetched BEFORE the event's transaction opens (no provider call
    under a row lock): the line-item prices of a paid checkout of a pack that sells through a Stripe price, where
    the API is configured. The pack is read in a short unit of work closed before the call. A failure raises (the
    event is recorded failed and answered 5xx, so Stripe retries)."""
    if payload.get("type") in stripe_refund_events.PREFETCHED:
        return stripe_refund_events.prefetch(payload, uow_factory)
    if payload.get("type") not in {"checkout.session.completed", "checkout.session.async_payment_succeeded"}:
        return {}
    obj = (payload.get("data") or {}).get("object")
    if not isinstance(obj, dict) or not obj.get("id") or obj.get("mode") != "payment":
        return {}
    paid = obj.get("payment_status") in {"paid", "no_payment_required"}
    if metadata_of(obj).get("kind", "pack") != "pack" or not paid:
        return {}
    if not adapters.stripe_api_configured():
        return {}
    with uow_factory() as uow:
        pack = pack_by_id(uow.session, metadata_of(obj).get("item_id"))
        sells_through_price = pack is not None and bool(pack.stripe_price_id)
    if not sells_through_price:
        return {}  # nothing to check the line items against
    return {LINE_ITEM_PRICES: adapters.stripe_gateway().checkout_price_ids(str(obj["id"]))}


def async_payment_failed(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """`checkout.session.async_payment_failed` (-> failed) and `checkout.session.expired` (-> expired): a
    pending purchase that will never be paid; nothing was granted."""
    purchase = ctx.session.execute(
        select(Purchase)
        .where(Purchase.provider == PROVIDER, Purchase.provider_order_id == str(obj.get("id")))
        .with_for_update()
    ).scalar_one_or_none()
    if purchase is None or purchase.status != "pending":
        return Outcome.ignored("no pending purchase for this session")
    purchase.status = "expired" if event.get("type") == "checkout.session.expired" else "failed"
    stripe_order_events.pack_closed(ctx, purchase)  # its order is not left PENDING
    return Outcome.done(purchase_id=str(purchase.id), status=purchase.status)


# --- subscriptions -------------------------------------------------------------------------------------------------
def _first_item(obj: dict[str, Any]) -> dict[str, Any]:
    items = (obj.get("items") or {}).get("data") or []
    return items[0] if items and isinstance(items[0], dict) else {}


def subscription_state(obj: dict[str, Any], *, deleted: bool = False) -> SubscriptionState:
    item = _first_item(obj)
    price = item.get("price") or item.get("plan") or {}
    recurring = price.get("recurring") or {}
    currency = str(price.get("currency") or obj.get("currency") or "usd").lower()
    amount = price.get("unit_amount", price.get("amount"))
    return SubscriptionState(
        provider_subscription_id=str(obj["id"]),
        status="canceled" if deleted else str(obj.get("status") or "incomplete"),
        customer_id=object_id(obj.get("customer")),
        price_id=object_id(price),
        product_id=object_id(price.get("product")),
        interval=recurring.get("interval") or price.get("interval"),
        current_period_start=parse_time(obj.get("current_period_start") or item.get("current_period_start")),
        current_period_end=parse_time(obj.get("current_period_end") or item.get("current_period_end")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end")),
        canceled_at=parse_time(obj.get("canceled_at")),
        ended_at=parse_time(obj.get("ended_at")),
        trial_start=parse_time(obj.get("trial_start")),
        trial_end=parse_time(obj.get("trial_end")),
        quantity=int(item.get("quantity") or obj.get("quantity") or 1),
        unit_amount=to_major(amount, currency) if amount is not None else None,
        currency=currency,
        metadata=metadata_of(obj),
    )


def _subscription(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any], *, deleted: bool) -> Outcome:
    state = subscription_state(obj, deleted=deleted)
    existing = subscription_for_update(ctx.session, PROVIDER, state.provider_subscription_id)
    user: User | None = None
    if existing is not None:
        user = ctx.session.get(User, existing.user_id, with_for_update={"key_share": True})
    user = user or user_by_id(ctx.session, state.metadata.get("user_id"))
    user = user or user_by_customer(ctx.session, PROVIDER, state.customer_id)
    if user is None:
        raise NotYetApplicable("no Tollgate user is linked to this subscription yet")
    link_customer(ctx.session, user, PROVIDER, state.customer_id)
    sub, applied = apply_subscription(ctx, user, state)
    return Outcome.done(subscription=sub.provider_subscription_id, status=sub.status, applied=applied, tier=user.tier)


def subscription_changed(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    return _subscription(ctx, event, obj, deleted=False)


def subscription_deleted(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    return _subscription(ctx, event, obj, deleted=True)


# --- invoices ------------------------------------------------------------------------------------------------------
def _lines(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [line for line in (obj.get("lines") or {}).get("data") or [] if isinstance(line, dict)]


def _line_parents(line: dict[str, Any]) -> list[dict[str, Any]]:
    """A line's `parent.subscription_item_details` / `parent.invoice_item_details` (current API), the one its
    `parent.type` names first."""
    parent = line.get("parent")
    if not isinstance(parent, dict):
        return []
    names = [str(parent.get("type") or ""), "subscription_item_details", "invoice_item_details"]
    return [parent[name] for name in dict.fromkeys(names) if isinstance(parent.get(name), dict)]


def _line_price(line: dict[str, Any]) -> str | None:
    pricing = (line.get("pricing") or {}).get("price_details") or {}
    return object_id(line.get("price")) or object_id(line.get("plan")) or object_id(pricing.get("price"))


def _line_proration(line: dict[str, Any]) -> bool:
    return bool(line.get("proration")) or any(bool(details.get("proration")) for details in _line_parents(line))


def _line_subscription(line: dict[str, Any]) -> str | None:
    parents = [details.get("subscription") for details in _line_parents(line)]
    found = [object_id(ref) for ref in [line.get("subscription"), *parents]]
    return next((sub for sub in found if sub), None)


def _line_is_credit(line: dict[str, Any]) -> bool:
    """A proration that gives back the unused time of the plan left behind: a negative amount (or, at 0, a line
    that names the items it credits)."""
    amount = line.get("amount")
    if isinstance(amount, int) and amount != 0:
        return amount < 0
    credited = [line.get("proration_details")] + [details.get("proration_details") for details in _line_parents(line)]
    return any(isinstance(d, dict) and d.get("credited_items") for d in credited)


def _invoice_subscription(obj: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    parent = obj.get("parent") if isinstance(obj.get("parent"), dict) else {}
    details = (parent or {}).get("subscription_details") or {}
    sub_id = object_id(obj.get("subscription")) or object_id(details.get("subscription"))
    meta = dict(details.get("metadata") or (obj.get("subscription_details") or {}).get("metadata") or {})
    for line in _lines(obj):
        if not meta and isinstance(line.get("metadata"), dict):
            meta = dict(line["metadata"])
        sub_id = sub_id or _line_subscription(line)
    return sub_id, meta


def _invoice_price(obj: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The recurring price of the invoice (its last whole-period line: after a plan change, the new plan) and
    its period."""
    chosen: tuple[str | None, dict[str, Any]] = (None, {})
    for line in _lines(obj):
        price_id = _line_price(line)
        if price_id and not _line_proration(line):
            chosen = (price_id, line.get("period") or {})
    return chosen


def _invoice_payments(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """The payment intent and charge that paid an invoice: `invoice.payment_intent` / `invoice.charge` (2020-2024),
    or its paid `payments` (current API, when the event carries them)."""
    payment_intent, charge = object_id(obj.get("payment_intent")), object_id(obj.get("charge"))
    for paid in (obj.get("payments") or {}).get("data") or []:
        if isinstance(paid, dict) and paid.get("status") in (None, "paid"):
            payment = paid.get("payment") or {}
            payment_intent = payment_intent or object_id(payment.get("payment_intent"))
            charge = charge or object_id(payment.get("charge"))
    return payment_intent, charge


def _upsert_invoice(ctx: Ctx, obj: dict[str, Any], status: str) -> Invoice:
    invoice_id = str(obj["id"])
    currency = str(obj.get("currency") or "usd").lower()
    invoice = invoice_for_update(ctx.session, PROVIDER, invoice_id)
    if invoice is None:
        invoice = Invoice(provider=PROVIDER, provider_invoice_id=invoice_id, status=status, currency=currency)
        ctx.session.add(invoice)
    sub_id, _ = _invoice_subscription(obj)
    _, period = _invoice_price(obj)
    invoice.provider_subscription_id = sub_id or invoice.provider_subscription_id
    invoice.provider_customer_id = object_id(obj.get("customer")) or invoice.provider_customer_id
    payment_intent, charge = _invoice_payments(obj)
    invoice.provider_charge_id = charge or invoice.provider_charge_id
    invoice.provider_payment_intent_id = payment_intent or invoice.provider_payment_intent_id
    invoice.number = obj.get("number") or invoice.number
    invoice.billing_reason = obj.get("billing_reason") or invoice.billing_reason
    invoice.amount_due = to_major(obj.get("amount_due"), currency)
    invoice.amount_paid = to_major(obj.get("amount_paid"), currency)
    invoice.currency = currency
    invoice.period_start = parse_time(period.get("start")) or parse_time(obj.get("period_start"))
    invoice.period_end = parse_time(period.get("end")) or parse_time(obj.get("period_end"))
    invoice.hosted_invoice_url = obj.get("hosted_invoice_url") or invoice.hosted_invoice_url
    invoice.invoice_pdf = obj.get("invoice_pdf") or invoice.invoice_pdf
    invoice.attempt_count = int(obj.get("attempt_count") or invoice.attempt_count or 0)
    invoice.livemode = ctx.livemode
    # A paid invoice stays paid (refund states included) whatever older event arrives after it.
    if invoice.status not in PAID_INVOICE or status in {"refunded", "partially_refunded"}:
        invoice.status = status
    if ctx.provider_time is not None:
        invoice.provider_updated_at = max(ctx.provider_time, invoice.provider_updated_at or ctx.provider_time)
    ctx.session.flush()
    return invoice


def _invoice_user(ctx: Ctx, invoice: Invoice, meta: dict[str, Any]) -> User | None:
    sub = (
        subscription_for_update(ctx.session, PROVIDER, invoice.provider_subscription_id)
        if invoice.provider_subscription_id
        else None
    )
    if sub is not None:
        invoice.subscription_id = sub.id
        return ctx.session.get(User, sub.user_id, with_for_update={"key_share": True})
    return user_by_id(ctx.session, meta.get("user_id")) or user_by_customer(
        ctx.session, PROVIDER, invoice.provider_customer_id
    )


def invoice_paid(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    invoice = _upsert_invoice(ctx, obj, "paid")
    invoice.paid_at = invoice.paid_at or ctx.provider_time or ctx.now
    sub_id, meta = _invoice_subscription(obj)
    if not sub_id:
        return Outcome.done(invoice=invoice.provider_invoice_id, note="not a subscription invoice: no allowance")
    user = _invoice_user(ctx, invoice, meta)
    if user is None:
        raise NotYetApplicable("no Tollgate user is linked to this invoice's subscription yet")
    invoice.user_id = user.id
    link_customer(ctx.session, user, PROVIDER, invoice.provider_customer_id)
    lines, foreign = _billed_lines(ctx, obj)
    sub = ctx.session.get(Subscription, invoice.subscription_id) if invoice.subscription_id else None
    allowance = invoice_allowance(lines, (sub.current_period_start, sub.current_period_end) if sub else (None, None))
    if allowance is None:
        if foreign:
            return Outcome.rejected(
                "the invoice's price is not a Tollgate plan", invoice=invoice.provider_invoice_id, prices=foreign
            )
        return Outcome.done(invoice=invoice.provider_invoice_id, note="no line bills a plan: no allowance")
    if allowance.period_end is not None:
        invoice.period_start, invoice.period_end = allowance.period_start, allowance.period_end
    amount = allowance.amount
    if not allowance.new_period:
        amount = min(amount, top_up_room(ctx, invoice, allowance.plan, allowance.interval))
    granted = grant_invoice_allowance(
        ctx, invoice, user, allowance.plan, allowance.interval, amount=amount, new_period=allowance.new_period
    )
    late = (
        _apply_early_reversals(
            ctx,
            event,
            INVOICE_REVERSALS,
            payment_intent=invoice.provider_payment_intent_id,
            charge_id=invoice.provider_charge_id,
            invoice_id=invoice.provider_invoice_id,
        )
        if invoice.grant_source_key
        else []
    )
    proration = {"proration": str(allowance.proration)} if any(line.proration for line in lines) else {}
    if proration and not allowance.new_period and allowance.proration <= 0:
        proration["note"] = "a downgrade grants nothing until the next period"
    order = _plan_charge_order(ctx, invoice, user, allowance.plan, sub)
    return Outcome.done(
        invoice=invoice.provider_invoice_id,
        granted=str(granted),
        tier=allowance.plan.tier,
        **proration,
        **({"late_reversals": late} if late else {}),
        **({"order_id": str(order.id)} if order is not None else {}),
    )


def _plan_charge_order(ctx: Ctx, invoice: Invoice, user: User, plan: Plan, sub: Subscription | None) -> Order | None:
    """Every paid plan invoice of more than nothing goes to the one plan-order flow, which makes the
    subscription's order at its first paid period (after a free trial: its first `subscription_cycle` invoice) and
    none after it; a first invoice and its checkout find the same order (keyed by the subscription). An invoice
    before any subscription row (a subscription made outside Tollgate's checkout, whose customer.subscription.*
    events come later) records the row now, as a checkout does (`paid_plan_order`): else the first period would
    make no order and the next one would."""
    order: Order | None = paid_plan_order(ctx, invoice, user, plan, sub, provider=PROVIDER)
    return order


def _billed_lines(ctx: Ctx, obj: dict[str, Any]) -> tuple[list[BilledLine], list[str]]:
    """The invoice's lines that bill a Tollgate plan, and the prices of those that bill something else."""
    billed: list[BilledLine] = []
    foreign: list[str] = []
    for line in _lines(obj):
        price_id = _line_price(line)
        if not price_id:
            continue
        plan, interval = plan_by_price(ctx.session, PROVIDER, price_id)
        if plan is None:
            foreign.append(price_id)
            continue
        period = line.get("period") or {}
        proration = _line_proration(line)
        billed.append(
            BilledLine(
                plan=plan,
                interval=interval,
                proration=proration,
                credit=proration and _line_is_credit(line),
                start=parse_time(period.get("start")),
                end=parse_time(period.get("end")),
            )
        )
    return billed, foreign


def invoice_payment_paid(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """`invoice_payment.paid` (current API): which payment intent or charge paid an invoice, the link a refund of
    that invoice follows (its charge names no invoice any more). It can arrive before the invoice: the link is kept
    on an `open` invoice row that the invoice's own events complete."""
    invoice_id = object_id(obj.get("invoice"))
    if not invoice_id:
        return Outcome.rejected("an invoice payment that names no invoice", invoice_payment=obj.get("id"))
    if obj.get("status") not in (None, "paid"):
        return Outcome.ignored("the invoice payment is not paid", status=obj.get("status"))
    payment = obj.get("payment") or {}
    payment_intent, charge_id = object_id(payment.get("payment_intent")), object_id(payment.get("charge"))
    if not payment_intent and not charge_id:
        return Outcome.ignored("the invoice payment names no payment intent or charge", type=payment.get("type"))
    invoice = invoice_for_update(ctx.session, PROVIDER, invoice_id)
    if invoice is None:
        currency = str(obj.get("currency") or "usd").lower()
        invoice = Invoice(
            provider=PROVIDER,
            provider_invoice_id=invoice_id,
            status="open",
            currency=currency if len(currency) == 3 else "usd",
            livemode=ctx.livemode,
        )
        ctx.session.add(invoice)
    invoice.provider_payment_intent_id = invoice.provider_payment_intent_id or payment_intent
    invoice.provider_charge_id = invoice.provider_charge_id or charge_id
    ctx.session.flush()
    late = (
        _apply_early_reversals(
            ctx, event, INVOICE_REVERSALS, payment_intent=payment_intent, charge_id=charge_id, invoice_id=invoice_id
        )
        if invoice.grant_source_key
        else []
    )
    return Outcome.done(
        invoice=invoice_id,
        payment_intent=payment_intent,
        charge=charge_id,
        **({"late_reversals": late} if late else {}),
    )


def invoice_payment_failed(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    invoice = _upsert_invoice(ctx, obj, "payment_failed")
    sub_id, meta = _invoice_subscription(obj)
    user = _invoice_user(ctx, invoice, meta)
    if user is None:
        return Outcome.done(invoice=invoice.provider_invoice_id, note="no Tollgate user to notify")
    invoice.user_id = user.id
    if invoice.subscription_id is not None and sub_id:
        sub = subscription_for_update(ctx.session, PROVIDER, sub_id)
        if sub is not None and sub.status in {"active", "trialing"} and not _older_than(ctx, sub.provider_updated_at):
            sub.status = "past_due"
    notify_payment_failed(ctx, user, invoice)
    return Outcome.done(invoice=invoice.provider_invoice_id, status="payment_failed", notified=True)


def _older_than(ctx: Ctx, moment: Any) -> bool:
    return ctx.provider_time is not None and moment is not None and ctx.provider_time < moment


# --- refunds and disputes ------------------------------------------------------------------------------------------
PAID_INVOICE = frozenset({"paid", "refunded", "partially_refunded"})
NO_CHARGE_HOLDER = "no purchase or invoice matches this charge"
NO_DISPUTE_HOLDER = "no purchase matches this dispute"
NOT_GRANTED_YET = "the payment's credits are not granted yet"
# The reasons of a reversal stored `ignored` that a later grant must still apply (never a mode mismatch).
EARLY_REASONS = (NO_CHARGE_HOLDER, NO_DISPUTE_HOLDER, NOT_GRANTED_YET)
PURCHASE_REVERSALS = ("charge.refunded", "charge.dispute.funds_withdrawn", "charge.dispute.closed")
INVOICE_REVERSALS = ("charge.refunded",)  # disputes over invoices move no credits


def _hold_reversal_keys(ctx: Ctx, *keys: str | None) -> None:
    """Transaction locks shared by a reversal that finds nothing to reverse and the grant that would create it:
    either the grant commits first and the reversal finds it, or the grant finds the stored reversal. Sorted, so
    two transactions never wait on each other crosswise."""
    for key in sorted({key for key in keys if key}):
        ctx.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"stripe:reversal:{key}"})


def _not_granted_yet(holder: Purchase | Invoice) -> bool:
    """A purchase whose payment is still processing, an invoice not paid yet: its grant is still to come."""
    if isinstance(holder, Purchase):
        return holder.status == "pending"
    return holder.status not in PAID_INVOICE


def _payload_field(*path: str) -> ColumnElement[str]:
    return func.jsonb_extract_path_text(WebhookEvent.payload, "data", "object", *path)


def _apply_early_reversals(
    ctx: Ctx,
    event: dict[str, Any],
    types: tuple[str, ...],
    *,
    payment_intent: str | None = None,
    charge_id: str | None = None,
    invoice_id: str | None = None,
) -> list[str]:
    """Apply, right after a grant and in its transaction, the refunds and lost disputes of the same payment that
    were stored `ignored` because they arrived first. Returns their Stripe event ids."""
    _hold_reversal_keys(ctx, payment_intent, charge_id, invoice_id)
    matches: list[ColumnElement[bool]] = []
    if payment_intent:
        matches.append(_payload_field("payment_intent") == payment_intent)
    if charge_id:
        matches.append(_payload_field("id") == charge_id)  # a refund's object is the charge itself
    if invoice_id:
        matches.append(_payload_field("invoice") == invoice_id)
    if not matches:
        return []
    ctx.session.flush()  # the new purchase or invoice must be visible to the handlers' look-ups
    rows = (
        ctx.session.execute(
            select(WebhookEvent)
            .where(
                WebhookEvent.provider == PROVIDER,
                WebhookEvent.status == "ignored",
                WebhookEvent.type.in_(types),
                WebhookEvent.outcome["reason"].astext.in_(EARLY_REASONS),
                or_(*matches),
            )
            .order_by(WebhookEvent.provider_created_at.asc().nulls_last(), WebhookEvent.received_at)
            .with_for_update()
        )
        .scalars()
        .all()
    )
    applied: list[str] = []
    for row in rows:
        payload = row.payload or {}
        obj = (payload.get("data") or {}).get("object")
        handler = HANDLERS.get(row.type)
        if handler is None or not isinstance(obj, dict):
            continue
        late = Ctx(
            session=ctx.session,
            provider=PROVIDER,
            event_type=row.type,
            webhook_event_id=row.id,
            provider_time=row.provider_created_at,
            livemode=row.livemode,
            now=ctx.now,
            after_commit=ctx.after_commit,
        )
        outcome = handler(late, payload, obj)
        if outcome.status == "ignored":
            continue  # still nothing it can reverse here; it keeps waiting
        row.status = outcome.status
        row.outcome = {**outcome.detail, "applied_with": event.get("id")}
        row.processed_at = ctx.now
        applied.append(row.event_id)
    return applied


def _charge_holder(ctx: Ctx, charge_id: str | None, payment_intent: str | None, invoice_id: str | None) -> Any:
    conditions = []
    if payment_intent:
        conditions.append(Purchase.provider_payment_id == payment_intent)
    if charge_id:
        conditions.append(Purchase.provider_charge_id == charge_id)
    if conditions:
        purchase = ctx.session.execute(
            select(Purchase).where(Purchase.provider == PROVIDER, or_(*conditions)).with_for_update()
        ).scalar_one_or_none()
        if purchase is not None:
            if charge_id and not purchase.provider_charge_id:
                purchase.provider_charge_id = charge_id
            return purchase
    inv_conditions = []
    if charge_id:
        inv_conditions.append(Invoice.provider_charge_id == charge_id)
    if invoice_id:
        inv_conditions.append(Invoice.provider_invoice_id == invoice_id)
    if payment_intent:  # the current API's only link from a charge to its invoice (invoice_payment.paid)
        inv_conditions.append(Invoice.provider_payment_intent_id == payment_intent)
    if not inv_conditions:
        return None
    invoice = (
        ctx.session.execute(
            select(Invoice)
            .where(Invoice.provider == PROVIDER, or_(*inv_conditions))
            .order_by(Invoice.created_at, Invoice.id)
            .with_for_update()
        )
        .scalars()
        .first()
    )
    if invoice is not None and charge_id and not invoice.provider_charge_id:
        invoice.provider_charge_id = charge_id
    return invoice


def _reverse(ctx: Ctx, holder: Any, *, step_id: str, kind: str, step_amount: Decimal, reason: str | None) -> Outcome:
    if holder.user_id is None:
        return Outcome.ignored("the refunded payment has no Tollgate user")
    if isinstance(holder, Purchase):
        total, credits = holder.amount, holder.credits
        reversed_money = holder.refunded_amount + holder.disputed_amount
    else:
        total, credits = holder.amount_paid, holder.credits_granted
        reversed_money = holder.refunded_amount
    refund = reverse_credits(
        ctx, holder, user_id=holder.user_id, credits=credits, total=total, reversed_money=reversed_money,
        step_id=step_id, kind=kind, step_amount=step_amount, currency=holder.currency, reason=reason,
    )  # fmt: skip
    if refund is None:
        return Outcome.done(duplicate_step=step_id)
    return Outcome.done(
        step=step_id,
        **reversal_detail(refund),
    )


def charge_refunded(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    charge_id = str(obj["id"])
    keys = (charge_id, object_id(obj.get("payment_intent")), object_id(obj.get("invoice")))
    holder = _charge_holder(ctx, *keys)
    if holder is None:
        _hold_reversal_keys(ctx, *keys)
        holder = _charge_holder(ctx, *keys)  # a grant that committed while this waited is visible now
    if holder is None:
        return Outcome.ignored(NO_CHARGE_HOLDER, charge=charge_id)
    if _not_granted_yet(holder):
        return Outcome.ignored(NOT_GRANTED_YET, charge=charge_id)
    currency = str(obj.get("currency") or holder.currency).lower()
    refunded = to_major(obj.get("amount_refunded"), currency)  # cumulative
    counted: dict[str, int] | None = None
    if isinstance(holder, Purchase):  # a snapshot still counting a refund known to have failed must not count it
        refunded, counted = stripe_refund_events.live_refunded(ctx, holder, obj, refunded)
    if refunded <= holder.refunded_amount:
        return Outcome.done(note="this refund step was already applied", charge=charge_id)
    if isinstance(holder, Purchase):
        stripe_refund_events.note_counted(holder, counted)
    step = refunded - holder.refunded_amount
    total = holder.amount if isinstance(holder, Purchase) else holder.amount_paid
    holder.refunded_amount = min(refunded, total)
    full = holder.refunded_amount >= total
    holder.status = "refunded" if full else "partially_refunded"
    minor = to_minor(refunded, currency)
    step_id = f"{charge_id}:refunded:{minor}"
    # A refund that failed after it succeeded lowers the cumulative amount again (order_refunds gives its credits
    # back and counts it): a later refund reaching the same amount is a new step, not a replay of the old one.
    failed = int(holder.metadata_.get("failed_refunds", 0)) if isinstance(holder, Purchase) else 0
    if failed:
        step_id += f":after-failed-{failed}"
    return _reverse(ctx, holder, step_id=step_id, kind="refund", step_amount=step, reason=None)


def dispute_created(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    # An inquiry (warning_*) or a new chargeback moves nothing: credits move only once funds are withdrawn.
    return Outcome.done(dispute=obj.get("id"), status=obj.get("status"), note="recorded; nothing moves yet")


def dispute_lost(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    """`charge.dispute.funds_withdrawn`, or `charge.dispute.closed` with status lost: claw back once per dispute."""
    if event.get("type") == "charge.dispute.closed" and obj.get("status") != "lost":
        return Outcome.done(dispute=obj.get("id"), status=obj.get("status"), note="won or withdrawn: nothing moves")
    if str(obj.get("status", "")).startswith("warning"):
        return Outcome.done(dispute=obj.get("id"), note="an inquiry moves nothing")
    dispute_id = str(obj["id"])
    keys = (object_id(obj.get("charge")), object_id(obj.get("payment_intent")), None)
    holder = _charge_holder(ctx, *keys)
    if holder is None:
        _hold_reversal_keys(ctx, *keys)
        holder = _charge_holder(ctx, *keys)  # a grant that committed while this waited is visible now
    if holder is None or not isinstance(holder, Purchase):
        return Outcome.ignored(NO_DISPUTE_HOLDER, dispute=dispute_id)
    if _not_granted_yet(holder):
        return Outcome.ignored(NOT_GRANTED_YET, dispute=dispute_id)
    currency = str(obj.get("currency") or holder.currency).lower()
    amount = min(to_major(obj.get("amount"), currency), holder.amount)
    step_id = f"{dispute_id}:lost"  # one claw-back per dispute, whichever of its events arrives first
    if ctx.session.execute(
        select(Refund.id).where(Refund.provider == PROVIDER, Refund.provider_refund_id == step_id)
    ).first():
        return Outcome.done(duplicate_step=step_id)
    holder.disputed_amount += amount
    return _reverse(ctx, holder, step_id=step_id, kind="chargeback", step_amount=amount, reason=obj.get("reason"))


# --- customers, payment methods, catalogue -------------------------------------------------------------------------
def customer_updated(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    customer_id = str(obj.get("id"))
    user = user_by_customer(ctx.session, PROVIDER, customer_id)
    if user is None:
        user = user_by_id(ctx.session, metadata_of(obj).get("user_id"))
        if user is None:
            return Outcome.ignored("no Tollgate user for this customer")
        link_customer(ctx.session, user, PROVIDER, customer_id)
    return Outcome.done(user_id=str(user.id), customer=customer_id)


def payment_method_attached(ctx: Ctx, event: dict[str, Any], obj: dict[str, Any]) -> Outcome:
    pm_id = str(obj["id"])
    customer_id = object_id(obj.get("customer"))
    user = user_by_customer(ctx.session, PROVIDER, customer_id)
    row = ctx.session.execute(
        select(PaymentMethod).where(
            PaymentMethod.provider == PROVIDER, PaymentMethod.provider_payment_method_id == pm_id
        )
    ).scalar_one_or_none()
    if row is None:
        row = PaymentMethod(provider=PROVIDER, provider_payment_method_id=pm_id, type=str(obj.get("type") or "card"))
        ctx.session.add(row)
    card = obj.get("card") or {}
    row.provider_customer_id = customer_id
    row.user_id = user.id if user else row.user_id
    row.brand, row.last4 = card.get("brand"), card.get("last4")
    row.exp_month, row.exp_year = card.get("exp_month"), card.get("exp_year")
    row.detached = event.get("type") == "payment_method.detached"
    row.livemode = ctx.livemode
    return Outcome.done(payment_method=pm_id, user_id=str(user.id) if user else None)


HANDLERS: dict[str, Handler] = {
    # Cart orders (metadata tollgate_order_id) go to stripe_order_events; packs and plans as before.
    "checkout.session.completed": stripe_order_events.or_else(checkout_completed, stripe_order_events.completed),
    "checkout.session.async_payment_succeeded": stripe_order_events.or_else(
        checkout_completed, stripe_order_events.completed
    ),
    "checkout.session.async_payment_failed": stripe_order_events.or_else(
        async_payment_failed, stripe_order_events.closed
    ),
    "checkout.session.expired": stripe_order_events.or_else(async_payment_failed, stripe_order_events.closed),
    "customer.subscription.created": subscription_changed,
    "customer.subscription.updated": subscription_changed,
    "customer.subscription.deleted": subscription_deleted,
    "customer.subscription.paused": subscription_changed,
    "customer.subscription.resumed": subscription_changed,
    "customer.subscription.trial_will_end": subscription_changed,
    "invoice.paid": invoice_paid,
    "invoice.payment_succeeded": invoice_paid,
    "invoice.payment_failed": invoice_payment_failed,
    "invoice_payment.paid": invoice_payment_paid,
    "payment_intent.succeeded": payment_intent_event,
    "payment_intent.payment_failed": payment_intent_event,
    "charge.refunded": stripe_refund_events.with_order_refunds(charge_refunded),
    "refund.created": stripe_refund_events.refund_event,
    "refund.updated": stripe_refund_events.refund_event,
    "refund.failed": stripe_refund_events.refund_event,
    "charge.refund.updated": stripe_refund_events.refund_event,
    "charge.dispute.created": dispute_created,
    "charge.dispute.funds_withdrawn": dispute_lost,
    "charge.dispute.closed": dispute_lost,
    "customer.updated": customer_updated,
    "payment_method.attached": payment_method_attached,
    "payment_method.detached": payment_method_attached,
    "product.created": stripe_catalogue_events.product_event,
    "product.updated": stripe_catalogue_events.product_event,
    "product.deleted": stripe_catalogue_events.product_event,
    "price.created": stripe_catalogue_events.price_event,
    "price.updated": stripe_catalogue_events.price_event,
    "price.deleted": stripe_catalogue_events.price_event,
}


def handle(ctx: Ctx, payload: dict[str, Any]) -> Outcome:
    handler = HANDLERS.get(ctx.event_type)
    if handler is None:
        return Outcome.ignored(f"Tollgate does not handle {ctx.event_type}")
    obj = (payload.get("data") or {}).get("object")
    if not isinstance(obj, dict) or not obj.get("id"):
        return Outcome.rejected("the event carries no data.object")
    return handler(ctx, payload, obj)
