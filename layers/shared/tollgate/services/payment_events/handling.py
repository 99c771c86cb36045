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
from tollgate.models.credits import CreditPack, Plan
from tollgate.models.payments import Invoice, Purchase, Refund, Subscription, SubscriptionEvent
from tollgate.models.users import User
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


@dataclass
class Ctx:
    session: Session
    provider: str
    event_type: str
    webhook_event_id: uuid.UUID
    provider_time: datetime | None
    livemode: bool | None
    now: datetime
    # Side effects that must happen only once the transaction committed (mail).
    after_commit: list[Callable[[], None]] = field(default_factory=list)


# --- look-ups ----------------------------------------------------------------------------------------------------
def as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None


def user_by_id(session: Session, value: Any) -> User | None:
    user_id = as_uuid(value)
    return session.get(User, user_id, with_for_update={"key_share": True}) if user_id else None


def user_by_customer(session: Session, provider: str, customer_id: str | None) -> User | None:
    if not customer_id:
        return None
    column = User.stripe_customer_id if provider == "stripe" else User.lemonsqueezy_customer_id
    return session.execute(
        select(User).where(column == customer_id).with_for_update(key_share=True)
    ).scalar_one_or_none()


def link_customer(session: Session, user: User, provider: str, customer_id: str | None) -> None:
    """Remember the provider's customer id on the user, unless the user has one or another user owns it
    (one statement: the hot path of every purchase)."""
    if not customer_id:
        return
    attr = "stripe_customer_id" if provider == "stripe" else "lemonsqueezy_customer_id"
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
    if best is not None:
        unlock_after_payment(user)  # a trial that had ended locked the account; paying reopens it
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
