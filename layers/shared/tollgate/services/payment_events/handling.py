"""What every provider's event handlers share: the context they run in, what they answer, and the business steps
(grant a purchase, claw back a refund, move a subscription, grant an invoice's allowance, sync the user's tier).

Handlers run inside the webhook's transaction and never commit. They raise on anything that a retry may fix
(the whole event rolls back, the provider retries) and answer `Outcome("rejected", ...)` for what no retry can
fix (an item that does not match what the provider reports, an unknown buyer in a one-time order).

Refund policy (credits already spent), applied to refunds and lost chargebacks alike:
  the refunded share of the money is the share of the purchase's credits asked back, computed on cumulative
  amounts (credits x min(refunded + lost in disputes, total) / total), so two partial refunds ask back exactly
  what one refund of their sum would, and a refund plus a dispute never ask back more than was granted. What
  is asked back is clawed from THAT purchase's grant only, limited to what remains of it (ledger `clawback`):
  credits already spent stay spent, no balance is driven negative, and the difference is recorded as the
  refund row's `credits_shortfall` (and on the purchase) for the operator to see.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tollgate import ledger
from tollgate.db.base import new_id
from tollgate.models.credits import CreditPack, Plan
from tollgate.models.payments import Invoice, Purchase, Refund, Subscription, SubscriptionEvent
from tollgate.models.users import User
from tollgate.outbox import EventType, emit
from tollgate.payments.money import to_major, to_minor
from tollgate.payments.statuses import ENTITLED, TERMINAL, TRIALING
from tollgate.services.accounts import unlock_after_payment

CREDIT_SCALE = Decimal("0.0001")
FREE_TIER = "FREE"


class NotYetApplicable(Exception):
    """The event depends on something not known yet (e.g. the buyer of an invoice): roll back, let the provider
    retry, keep the event for replay."""


@dataclass
class Outcome:
    status: str  # processed | ignored | rejected
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def done(cls, **detail: Any) -> Outcome:
        return cls("processed", detail)

    @classmethod
    def ignored(cls, reason: str, **detail: Any) -> Outcome:
        return cls("ignored", {"reason": reason, **detail})

    @classmethod
    def rejected(cls, reason: str, **detail: Any) -> Outcome:
        return cls("rejected", {"reason": reason, **detail})


def object_id(value: Any) -> str | None:
    """A provider field that is an id or, when expanded, an object with an id (Stripe)."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value else None


def metadata_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def text_or_none(value: Any) -> str | None:
    return str(value) if value is not None and value != "" else None


def reversal_detail(refund: Refund) -> dict[str, str]:
    """What an applied refund or chargeback step reports in its event's outcome."""
    return {
        "credits_requested": str(refund.credits_requested),
        "credits_clawed_back": str(refund.credits_clawed_back),
        "credits_shortfall": str(refund.credits_shortfall),
    }


@dataclass
class Ctx:
    session: Session
    provider: str
    event_type: str
    webhook_event_id: uuid.UUID | None  # None: a change no webhook carried (an admin's manual plan)
    provider_time: datetime | None
    livemode: bool | None
    now: datetime
    # Side effects that must happen only once the transaction committed (mail).
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    # What the provider module fetched from the provider's API before the transaction opened (`prefetch`):
    # no provider call ever runs while the event's transaction holds locks.
    fetched: dict[str, Any] = field(default_factory=dict)


# --- look-ups ----------------------------------------------------------------------------------------------------
def as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def user_by_id(session: Session, value: Any) -> User | None:
    user_id = as_uuid(value)
    return session.get(User, user_id, with_for_update={"key_share": True}) if user_id else None


# The user column that remembers each provider's customer id; providers without one (Clerk, manual) link nothing.
CUSTOMER_COLUMNS = {
    "stripe": "stripe_customer_id",
    "lemonsqueezy": "lemonsqueezy_customer_id",
    "asaas": "asaas_customer_id",
}


def user_by_customer(session: Session, provider: str, customer_id: str | None) -> User | None:
    attr = CUSTOMER_COLUMNS.get(provider)
    if not customer_id or attr is None:
        return None
    column = getattr(User, attr)
    return session.execute(
        select(User).where(column == customer_id).with_for_update(key_share=True)
    ).scalar_one_or_none()


def link_customer(session: Session, user: User, provider: str, customer_id: str | None) -> None:
    """Remember the provider's customer id on the user, unless the user has one or another user owns it
    (one statement: the hot path of every purchase)."""
    attr = CUSTOMER_COLUMNS.get(provider)
    if not customer_id or attr is None:
        return
    if getattr(user, attr):
        return
    linked = session.execute(
        text(
            f"UPDATE users SET {attr} = :customer WHERE id = :id AND {attr} IS NULL "
            f"AND NOT EXISTS (SELECT 1 FROM users other WHERE other.{attr} = :customer) RETURNING id"
        ),
        {"customer": customer_id, "id": user.id},
    ).first()
    if linked is not None:
        set_committed_value(user, attr, customer_id)


def pack_by_id(session: Session, value: Any) -> CreditPack | None:
    pack_id = as_uuid(value)
    return session.get(CreditPack, pack_id) if pack_id else None


def plan_by_price(session: Session, provider: str, price_id: str | None) -> tuple[Plan | None, str | None]:
    """The plan a provider price (Stripe) / variant (Lemon Squeezy) sells, and its interval (month/year)."""
    if not price_id:
        return None, None
    if provider == "clerk":  # one Clerk plan (`cplan_*`) has both periods; the event names its own
        return session.execute(select(Plan).where(Plan.clerk_plan_id == price_id)).scalars().first(), None
    if provider == "manual":  # an admin's assignment names the plan itself
        plan_id = as_uuid(price_id)
        return (session.get(Plan, plan_id) if plan_id else None), None
    if provider == "stripe":
        monthly, yearly = Plan.stripe_price_id_monthly, Plan.stripe_price_id_yearly
    else:
        monthly, yearly = Plan.lemonsqueezy_variant_id_monthly, Plan.lemonsqueezy_variant_id_yearly
    plan = session.execute(select(Plan).where(monthly == price_id)).scalars().first()
    if plan is not None:
        return plan, "month"
    plan = session.execute(select(Plan).where(yearly == price_id)).scalars().first()
    return (plan, "year") if plan is not None else (None, None)


# --- one-time purchases --------------------------------------------------------------------------------------------
def grant_purchase(ctx: Ctx, purchase: Purchase) -> ledger.GrantResult:
    """Grant a paid purchase's credits once, keyed by the provider's order id, expiring per the pack. The
    expiry counts from the grant (when the credits become usable), not from a payment time a delayed or
    replayed event may carry."""
    paid_at = purchase.paid_at or ctx.now
    pack = pack_by_id(ctx.session, purchase.item_id)
    days = pack.expires_after_days if pack is not None else None
    purchase.expires_at = ctx.now + timedelta(days=days) if days else None
    purchase.grant_source_key = f"{purchase.provider}:order:{purchase.provider_order_id}"
    purchase.status = "completed"
    purchase.paid_at = paid_at
    emit(
        ctx.session,
        EventType.PURCHASE_COMPLETED,
        user_id=purchase.user_id,
        data={
            "purchase_id": purchase.id, "provider": purchase.provider, "order_id": purchase.provider_order_id,
            "item_kind": purchase.item_kind, "item_id": purchase.item_id, "pack": purchase.package_name,
            "credits": purchase.credits, "amount": purchase.amount, "currency": purchase.currency,
            "paid_at": paid_at,
        },
        dedupe_key=f"purchase.completed:{purchase.grant_source_key}",
    )  # fmt: skip
    return ledger.grant(
        ctx.session,
        purchase.user_id,
        kind="purchase",
        amount=purchase.credits,
        source_key=purchase.grant_source_key,
        expires_at=purchase.expires_at,
        metadata={
            "provider": purchase.provider,
            "order_id": purchase.provider_order_id,
            "purchase_id": str(purchase.id),
            "pack": purchase.package_name,
        },
        now=ctx.now,
    )


@dataclass(frozen=True)
class PackOrder:
    """A one-time order of a credit pack as one provider event reports it (the one pack-order flow)."""

    provider: str
    order_id: str  # unique per provider: checkout session / order / payment id
    pack_ref: Any  # the pack id the provider echoes back (metadata)
    amount_minor: int | None  # what the provider reports as paid, in minor units
    currency: str | None
    paid: bool  # False: record the purchase pending, grant nothing
    paid_at: datetime | None = None
    payment_id: str | None = None  # payment intent / payment id refunds will name
    customer_id: str | None = None
    price_ref: str | None = None  # the provider price/variant the order carries, checked when the pack has one
    metadata: dict[str, Any] = field(default_factory=dict)
    # Every price the order carries (Stripe's line items, fetched before the transaction); `price_ref` counts too.
    price_refs: tuple[str, ...] = ()
    # False where the reported total legitimately differs from the pack's list price (Lemon Squeezy's total holds
    # tax and discounts): the provider price is then the check, and the pack must have one.
    amount_checked: bool = True


def pack_price_ref(pack: CreditPack, provider: str) -> str | None:
    """The price (Stripe) / variant (Lemon Squeezy) a pack sells through at `provider`, if it names one."""
    ref = {"stripe": pack.stripe_price_id, "lemonsqueezy": pack.lemonsqueezy_variant_id}.get(provider)
    return str(ref) if ref else None


def _order_mismatch(pack: CreditPack, order: PackOrder) -> Outcome | None:
    """Why the order does not buy `pack` (a rejection no retry can fix), or None when it does."""
    currency = (order.currency or "").lower()
    if order.amount_checked:
        try:
            expected = to_minor(pack.price, pack.currency)
        except ValueError:
            expected = -1
        if currency != pack.currency.lower() or order.amount_minor != expected:
            return Outcome.rejected(
                f"the amount {order.provider} reports does not match the pack's price",
                order=order.order_id,
                reported={"amount_minor": order.amount_minor, "currency": currency},
                expected={"amount_minor": expected, "currency": pack.currency.lower()},
            )
    carried = [ref for ref in (order.price_ref, *order.price_refs) if ref]
    wanted = pack_price_ref(pack, order.provider)
    # A pack's own price is checked whenever the order reports prices; without an amount check it is the only
    # proof of what was bought, so it must be there.
    if (wanted and (carried or not order.amount_checked) and wanted not in carried) or (
        not wanted and not order.amount_checked
    ):
        return Outcome.rejected(
            "the order does not carry the pack's price",
            order=order.order_id,
            reported={"prices": carried},
            expected={"price": wanted},
        )
    return None


def fulfil_pack_order(
    ctx: Ctx,
    user: User,
    order: PackOrder,
    *,
    on_granted: Callable[[Purchase], dict[str, Any]] | None = None,
) -> Outcome:
    """Record and, once paid, grant a pack order: the one flow of every provider. Idempotent on
    (provider, order id) under the purchase row lock: an order already completed (or refunded) answers what it
    is; a pending one is completed by the event that reports it paid. The pack, the amount/currency and the
    provider price are checked first (`_order_mismatch`). `on_granted` runs right after the grant in the same
    transaction (e.g. reversals that arrived before it) and adds to the outcome."""
    existing = ctx.session.execute(
        select(Purchase)
        .where(Purchase.provider == order.provider, Purchase.provider_order_id == order.order_id)
        .with_for_update()
    ).scalar_one_or_none()
    if existing is not None and existing.status != "pending":
        return Outcome.done(purchase_id=str(existing.id), already=existing.status)
    pack = pack_by_id(ctx.session, order.pack_ref)
    if pack is None:
        return Outcome.rejected("the order names no known pack", order=order.order_id)
    mismatch = _order_mismatch(pack, order)
    if mismatch is not None:
        return mismatch
    currency = (order.currency or pack.currency).lower()
    purchase = existing or Purchase(
        id=new_id(),
        provider=order.provider,
        provider_order_id=order.order_id,
        user_id=user.id,
        item_kind="pack",
        item_id=pack.id,
        package_name=pack.name,
        credits=pack.credits,
        amount=to_major(order.amount_minor, currency) if order.amount_minor is not None else pack.price,
        currency=currency,
        status="pending",
        metadata_=dict(order.metadata),
    )
    purchase.provider_payment_id = order.payment_id or purchase.provider_payment_id
    purchase.provider_customer_id = order.customer_id or purchase.provider_customer_id
    purchase.livemode = ctx.livemode
    # Every sale is an order: the pack's one-item order, fulfilled (the grant below) by the one order fulfilment.
    from tollgate.services import orders

    order_row, order_items = orders.pack_order(ctx.session, purchase, pack, new=existing is None)
    if not order.paid:
        ctx.session.add(purchase)
        if order_items is not None:
            orders.add_new(ctx.session, order_row, order_items)
        return Outcome.done(purchase_id=str(purchase.id), status="pending")
    purchase.paid_at = order.paid_at or ctx.provider_time or ctx.now
    ctx.session.add(purchase)  # complete before the grant's first statement flushes it: one INSERT
    fulfilled = orders.fulfil_order(
        ctx.session,
        order_row,
        now=ctx.now,
        paid_at=purchase.paid_at,
        purchase_grant=lambda: grant_purchase(ctx, purchase),
        announce=False,
        items=order_items,
    )
    granted = fulfilled.granted or grant_purchase(ctx, purchase)
    unlock_after_payment(user)  # a trial that had ended locked the account; paying reopens it
    # The pack's order.completed, as before the orders table (its order row is `order_row`).
    emit(
        ctx.session,
        EventType.ORDER_COMPLETED,
        user_id=user.id,
        data={
            "order_id": order.order_id, "provider": order.provider, "purchase_id": purchase.id,
            "amount": purchase.amount, "currency": purchase.currency,
            "items": [{"kind": "pack", "id": pack.id, "name": pack.name, "credits": pack.credits, "quantity": 1}],
        },
        dedupe_key=f"order.completed:{order.provider}:{order.order_id}",
    )  # fmt: skip
    extra = on_granted(purchase) if on_granted is not None else {}
    return Outcome.done(
        purchase_id=str(purchase.id), granted=str(granted.amount), grant_id=str(granted.grant_id), **extra
    )


def reversal_target(credits: Decimal, total: Decimal, reversed_money: Decimal) -> Decimal:
    """Credits to have asked back in total once `reversed_money` of `total` was refunded or lost in disputes."""
    if total <= 0:
        return Decimal(0)
    share = min(max(reversed_money, Decimal(0)), total) / total
    return min(credits, (credits * share).quantize(CREDIT_SCALE, rounding=ROUND_HALF_UP))


def reverse_credits(
    ctx: Ctx,
    holder: Purchase | Invoice,
    *,
    user_id: uuid.UUID,
    credits: Decimal,
    total: Decimal,
    reversed_money: Decimal,
    step_id: str,
    kind: str,
    step_amount: Decimal,
    currency: str,
    reason: str | None = None,
) -> Refund | None:
    """One refund/chargeback step of a purchase or invoice (see the module's refund policy). Idempotent per
    `step_id`: a step already recorded changes nothing."""
    exists = ctx.session.execute(
        select(Refund.id).where(Refund.provider == ctx.provider, Refund.provider_refund_id == step_id)
    ).first()
    if exists is not None:
        return None
    target = reversal_target(credits, total, reversed_money)
    ask = max(target - holder.credits_reversed, Decimal(0))
    taken = Decimal(0)
    tx_id: uuid.UUID | None = None
    if ask > 0 and holder.grant_source_key:
        result = ledger.clawback(
            ctx.session,
            user_id,
            source_key=holder.grant_source_key,
            amount=ask,
            idempotency_key=f"{ctx.provider}:{kind}:{step_id}"[:300],
            reason=reason or kind,
            now=ctx.now,
        )
        taken, tx_id = result.clawed_back, result.transaction_id
        # Credits given back when an earlier refund failed live in grants of their own (order_refunds): asked
        # back the same way, after the purchase's grant.
        extra = holder.metadata_.get("returned_grant_keys", []) if isinstance(holder, Purchase) else []
        for n, source_key in enumerate(str(key) for key in extra):
            if taken >= ask:
                break
            more = ledger.clawback(
                ctx.session, user_id, source_key=source_key, amount=ask - taken,
                idempotency_key=f"{ctx.provider}:{kind}:{step_id}:returned-{n}"[:300], reason=reason or kind,
                now=ctx.now,
            )  # fmt: skip
            taken += more.clawed_back
    elif ask > 0:
        ask = Decimal(0)  # nothing was granted for it, so nothing to ask back
    holder.credits_reversed += ask
    holder.credits_clawed_back += taken
    refund = Refund(
        provider=ctx.provider,
        provider_refund_id=step_id,
        kind=kind,
        user_id=user_id,
        purchase_id=holder.id if isinstance(holder, Purchase) else None,
        invoice_id=holder.id if isinstance(holder, Invoice) else None,
        amount=step_amount,
        currency=currency,
        credits_requested=ask,
        credits_clawed_back=taken,
        credits_shortfall=ask - taken,
        reason=reason,
        ledger_transaction_id=tx_id,
    )
    ctx.session.add(refund)
    emit(
        ctx.session,
        EventType.REFUND_COMPLETED,
        user_id=user_id,
        data={
            "provider": ctx.provider, "refund_id": step_id, "kind": kind, "amount": step_amount,
            "currency": currency, "purchase_id": refund.purchase_id, "invoice_id": refund.invoice_id,
            "credits_requested": ask, "credits_clawed_back": taken, "credits_shortfall": ask - taken,
            "transaction_id": tx_id, "reason": reason,
        },
        dedupe_key=f"refund.completed:{ctx.provider}:{step_id}"[:255],
    )  # fmt: skip
    return refund


# --- subscriptions -------------------------------------------------------------------------------------------------
@dataclass
class SubscriptionState:
    """A subscription as one provider event shows it (fields left None are not reported by that event)."""

    provider_subscription_id: str
    status: str
    customer_id: str | None = None
    price_id: str | None = None
    product_id: str | None = None
    interval: str | None = None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at_period_end: bool | None = None
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    trial_start: datetime | None = None
    trial_end: datetime | None = None
    quantity: int | None = None
    unit_amount: Decimal | None = None
    currency: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def subscription_for_update(session: Session, provider: str, provider_subscription_id: str) -> Subscription | None:
    return session.execute(
        select(Subscription)
        .where(Subscription.provider == provider, Subscription.provider_subscription_id == provider_subscription_id)
        .with_for_update()
    ).scalar_one_or_none()


def is_older(ctx: Ctx, sub: Subscription, state: SubscriptionState) -> bool:
    """True when the event must not move the row: older than the last change applied, or leaving a final state."""
    if sub.status in TERMINAL[sub.provider] and state.status != sub.status:
        return True
    if ctx.provider_time is None or sub.provider_updated_at is None:
        return False
    return ctx.provider_time < sub.provider_updated_at


def apply_subscription(ctx: Ctx, user: User, state: SubscriptionState) -> tuple[Subscription, bool]:
    """Create or move the subscription row to `state` unless the event is older; record the event either way;
    keep the user's tier in step. Returns (row, applied)."""
    session = ctx.session
    sub = subscription_for_update(session, ctx.provider, state.provider_subscription_id)
    plan, interval = plan_by_price(session, ctx.provider, state.price_id)
    created = sub is None
    if sub is None:
        sub = Subscription(
            provider=ctx.provider,
            provider_subscription_id=state.provider_subscription_id,
            user_id=user.id,
            status=state.status,
            plan_history=[],
            metadata_={},
        )
        session.add(sub)
        session.flush()
    from_status, from_price = (None, None) if created else (sub.status, sub.provider_price_id)
    applied = created or not is_older(ctx, sub, state)
    if applied:
        if state.price_id and state.price_id != sub.provider_price_id:
            if sub.provider_price_id:
                sub.previous_price_id = sub.provider_price_id
            sub.plan_history = [
                *sub.plan_history,
                {
                    "price_id": state.price_id,
                    "plan_id": str(plan.id) if plan else None,
                    "tier": plan.tier if plan else None,
                    "from_price_id": sub.provider_price_id,
                    "at": (ctx.provider_time or ctx.now).isoformat(),
                },
            ]
            sub.provider_price_id = state.price_id
            sub.plan_id = plan.id if plan else None
            sub.tier = plan.tier if plan else None
            # Seed 001's lastPlanChangeAt; the latest wins, whichever of the user's subscriptions changed.
            changed_at = ctx.provider_time or ctx.now
            user.last_plan_change_at = max(changed_at, user.last_plan_change_at or changed_at)
        elif plan is not None and sub.plan_id is None:
            sub.plan_id, sub.tier = plan.id, plan.tier
        sub.status = state.status
        for name in (
            "current_period_start", "current_period_end", "canceled_at", "ended_at", "trial_start", "trial_end",
            "quantity", "unit_amount", "currency", "product_id", "interval", "cancel_at_period_end",
        ):  # fmt: skip
            value = getattr(state, name)
            if value is not None:
                setattr(sub, "provider_product_id" if name == "product_id" else name, value)
        if interval and not state.interval:
            sub.interval = interval
        if state.customer_id:
            sub.provider_customer_id = state.customer_id
        if state.metadata:
            sub.metadata_ = {**sub.metadata_, **state.metadata}
        sub.livemode = ctx.livemode
        if ctx.provider_time is not None:
            sub.provider_updated_at = max(ctx.provider_time, sub.provider_updated_at or ctx.provider_time)
    session.add(
        SubscriptionEvent(
            subscription_id=sub.id,
            user_id=user.id,
            webhook_event_id=ctx.webhook_event_id,
            type=ctx.event_type,
            from_status=from_status,
            to_status=state.status,
            from_price_id=from_price,
            to_price_id=state.price_id,
            applied=applied,
            provider_time=ctx.provider_time,
            details={},
        )
    )
    if applied:
        sync_tier(ctx, user)
        if created or (from_status, from_price) != (sub.status, sub.provider_price_id):
            emit(
                session,
                EventType.SUBSCRIPTION_CHANGED,
                user_id=user.id,
                data={
                    "subscription_id": sub.id, "provider": ctx.provider,
                    "provider_subscription_id": sub.provider_subscription_id, "created": created,
                    "from_status": from_status, "to_status": sub.status, "from_price_id": from_price,
                    "to_price_id": sub.provider_price_id, "tier": sub.tier, "user_tier": user.tier,
                    "current_period_end": sub.current_period_end, "cancel_at_period_end": sub.cancel_at_period_end,
                },
            )  # fmt: skip
    return sub, applied


def _plan_rank(session: Session, tier: str | None) -> Decimal:
    if not tier or tier == FREE_TIER:
        return Decimal(-1)
    plan = session.execute(select(Plan).where(Plan.tier == tier)).scalar_one_or_none()
    return plan.price_monthly if plan is not None else Decimal(0)


def sync_tier(ctx: Ctx, user: User) -> None:
    """The user's tier is that of their best entitled subscription, else FREE (seed 001: trials are marked used,
    every move to a cheaper tier counts as a downgrade)."""
    session = ctx.session
    session.flush()
    subs = session.execute(select(Subscription).where(Subscription.user_id == user.id)).scalars().all()
    entitled = [s for s in subs if s.status in ENTITLED[s.provider] and s.tier]
    best = max(entitled, key=lambda s: _plan_rank(session, s.tier), default=None)
    new_tier = best.tier if best is not None and best.tier else FREE_TIER
    if best is not None and best.status in TRIALING:
        user.trial_started_at = user.trial_started_at or best.trial_start or ctx.now
        user.trial_ends_at = best.trial_end or user.trial_ends_at
        user.trial_used = True
    if best is not None and best.status not in TRIALING:
        # A trial that had ended locked the account; paying reopens it. Another free trial is no payment.
        unlock_after_payment(user)
    if new_tier != user.tier:
        if _plan_rank(session, new_tier) < _plan_rank(session, user.tier):
            user.downgrade_count += 1
        user.tier = new_tier


# --- invoices: the plan's allowance for each paid period -----------------------------------------------------------
def invoice_for_update(session: Session, provider: str, invoice_id: str) -> Invoice | None:
    return session.execute(
        select(Invoice).where(Invoice.provider == provider, Invoice.provider_invoice_id == invoice_id).with_for_update()
    ).scalar_one_or_none()


def months_in(interval: str | None) -> int:
    return 12 if interval == "year" else 1


def period_allowance(plan: Plan, interval: str | None) -> Decimal:
    """One billing period's allowance of `plan` (a yearly period holds twelve months)."""
    return (plan.monthly_credits * months_in(interval)).quantize(CREDIT_SCALE)


@dataclass(frozen=True, slots=True)
class BilledLine:
    """One invoice line that bills a plan: a whole period, or a proration of a plan change (`credit` when it gives
    back the unused time of the plan left behind)."""

    plan: Plan
    interval: str | None
    proration: bool
    credit: bool
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True, slots=True)
class InvoiceAllowance:
    plan: Plan
    interval: str | None
    amount: Decimal
    new_period: bool  # the invoice opens a billing period (else it only tops up the current one)
    period_start: datetime | None
    period_end: datetime | None
    proration: Decimal  # the allowance the proration lines are worth (negative for a downgrade)


def one_interval_before(moment: datetime, interval: str | None) -> datetime:
    """The start of the monthly/yearly period that ends at `moment` (the day clamped to the shorter month)."""
    months = months_in(interval)
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    month += 1
    next_year, next_month = divmod(year * 12 + month, 12)
    last_day = (moment.replace(year=next_year, month=next_month + 1, day=1) - timedelta(days=1)).day
    return moment.replace(year=year, month=month, day=min(moment.day, last_day))


def proration_share(line: BilledLine, subscription_period: tuple[datetime | None, datetime | None]) -> Decimal:
    """The share of its billing period that a proration line covers, by time, as the provider prorates the money:
    (line end - line start) / (period end - period start). The period is the subscription's when the line runs to
    its end, else the one interval that ends where the line ends. Without a period the share is 0 (never more)."""
    if line.start is None or line.end is None or line.end <= line.start:
        return Decimal(0)
    start, end = subscription_period
    if start is None or end is None or abs((end - line.end).total_seconds()) > 60 or start > line.start:
        start, end = one_interval_before(line.end, line.interval), line.end
    length = Decimal(int((end - start).total_seconds()))
    if length <= 0:
        return Decimal(0)
    return min(max(Decimal(int((line.end - line.start).total_seconds())) / length, Decimal(0)), Decimal(1))


def invoice_allowance(
    lines: list[BilledLine], subscription_period: tuple[datetime | None, datetime | None]
) -> InvoiceAllowance | None:
    """What a paid invoice grants (None when it bills no plan). A whole-period line grants that plan's period
    allowance. Proration lines grant the difference between the plans' allowances for the time they cover (an
    upgrade: the new plan's share minus the old plan's share); a downgrade's difference is negative and grants
    nothing until the next period. No invoice grants more than one period's allowance of the plan it bills (its
    last whole-period line, else its last charged proration line)."""
    whole = [line for line in lines if not line.proration]
    prorations = [line for line in lines if line.proration]
    billed = whole[-1] if whole else next((line for line in reversed(prorations) if not line.credit), None)
    if billed is None:
        return None
    cap = period_allowance(billed.plan, billed.interval)
    worth = sum(
        (
            (-1 if line.credit else 1)
            * period_allowance(line.plan, line.interval)
            * proration_share(line, subscription_period)
            for line in prorations
        ),
        Decimal(0),
    ).quantize(CREDIT_SCALE, rounding=ROUND_HALF_UP)
    base = cap if whole else Decimal(0)
    amount = min(base + max(worth, Decimal(0)), cap)
    return InvoiceAllowance(
        plan=billed.plan,
        interval=billed.interval,
        amount=amount,
        new_period=bool(whole),
        period_start=billed.start,
        period_end=billed.end,
        proration=worth,
    )


def top_up_room(ctx: Ctx, invoice: Invoice, plan: Plan, interval: str | None) -> Decimal:
    """What a proration top-up may still add to the subscription's current period: one period's allowance of the
    plan it bills minus what the period's other invoices granted. Up-, down- and upgrading again within one
    period (the downgrade's credit paying the next upgrade) then never adds up to more than one period of the
    best plan."""
    if invoice.provider_subscription_id is None or invoice.period_end is None:
        return period_allowance(plan, interval)
    window = timedelta(seconds=60)
    granted = ctx.session.execute(
        select(func.coalesce(func.sum(Invoice.credits_granted), 0)).where(
            Invoice.provider == invoice.provider,
            Invoice.provider_subscription_id == invoice.provider_subscription_id,
            Invoice.period_end.between(invoice.period_end - window, invoice.period_end + window),
            Invoice.id != invoice.id,
        )
    ).scalar_one()
    return max(period_allowance(plan, interval) - Decimal(granted), Decimal(0))


def grant_invoice_allowance(
    ctx: Ctx,
    invoice: Invoice,
    user: User,
    plan: Plan,
    interval: str | None,
    *,
    amount: Decimal | None = None,
    new_period: bool = True,
) -> Decimal:
    """Issue the allowance `invoice` paid for, once (keyed by the invoice id): by default the plan's allowance
    for the invoice's period (a yearly period grants twelve months), else `amount`. An invoice that opens a period
    goes through the period rules (earlier allowance expires, is trimmed or kept per the plan's rollover); one that
    only tops up the current period (a proration) adds a grant and leaves the others alone. With rollover `none`
    the grant expires at the period's end."""
    if invoice.grant_source_key:
        return Decimal(0)
    amount = period_allowance(plan, interval) if amount is None else amount.quantize(CREDIT_SCALE)
    invoice.plan_id = plan.id
    if amount <= 0:
        return Decimal(0)
    expires_at = invoice.period_end if plan.rollover == "none" else None
    if expires_at is not None and expires_at <= ctx.now:
        expires_at = None
    period_key = f"{invoice.provider}:{invoice.provider_invoice_id}"
    if new_period:
        result = ledger.issue_allowance(
            ctx.session,
            user.id,
            period_key,
            amount=amount,
            expires_at=expires_at,
            rollover=plan.rollover,
            rollover_cap=plan.rollover_cap,
            now=ctx.now,
        )
    else:
        result = ledger.grant(
            ctx.session,
            user.id,
            kind="allowance",
            amount=amount,
            source_key=f"allowance:{period_key}",
            expires_at=expires_at,
            metadata={"provider": invoice.provider, "invoice": invoice.provider_invoice_id, "proration": True},
            now=ctx.now,
        )
    if result is None:
        return Decimal(0)
    invoice.grant_source_key = f"allowance:{period_key}"
    invoice.credits_granted = result.amount
    return result.amount


def notify_payment_failed(ctx: Ctx, user: User, invoice: Invoice) -> None:
    """Mail the user that a subscription payment failed, once the event's transaction committed."""
    from tollgate.db import UnitOfWork
    from tollgate.mail import OutgoingMail, send_mail

    mail = OutgoingMail(
        to=user.email,
        type="payment_failed",
        subject="Your payment did not go through",
        text=(
            f"We could not collect {invoice.amount_due} {invoice.currency.upper()} for your subscription.\n"
            "Please update your payment method to keep your plan"
            + (f": {invoice.hosted_invoice_url}\n" if invoice.hosted_invoice_url else ".\n")
        ),
        user_id=user.id,
        metadata={"invoice": invoice.provider_invoice_id, "provider": invoice.provider},
    )
    ctx.after_commit.append(lambda: _discard(send_mail(UnitOfWork(), mail)))


def _discard(_: object) -> None:
    return None


def paid_plan_order(
    ctx: Ctx, invoice: Invoice, user: User, plan: Plan, sub: Subscription | None, *, provider: str
) -> Any:
    """A paid plan charge of more than nothing into the one plan-order flow, which makes the subscription's order
    at its first paid period and none after it. A payment that comes before its subscription records the row now,
    as Stripe's checkout does (the subscription's own events bring its status, plan and periods): the order names
    it, and a subscription event racing this one finds the row once this one commits (or, failing on the row's
    unique key, is retried). Answers the order, or None when nothing was paid."""
    from tollgate.services import orders

    if not invoice.provider_subscription_id or (invoice.amount_paid or 0) <= 0:
        return None
    if sub is None:
        state = SubscriptionState(
            invoice.provider_subscription_id, status="incomplete", customer_id=invoice.provider_customer_id
        )
        original, ctx.provider_time = ctx.provider_time, None
        try:
            sub, _ = apply_subscription(ctx, user, state)
        finally:
            ctx.provider_time = original
        invoice.subscription_id = sub.id
    return orders.plan_order(
        ctx.session, user_id=user.id, subscription=sub, plan_id=plan.id, plan_name=plan.name,
        amount=invoice.amount_paid, currency=invoice.currency, now=ctx.now, paid=True, provider=provider,
        invoice_id=invoice.provider_invoice_id,
    )  # fmt: skip
