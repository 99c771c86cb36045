"""Manual plans (`billing_source = manual`): an admin gives a user a plan without a payment provider.

- Assigning makes a subscription row with provider `manual` (one live one per user), syncs the tier and grants
  the plan's allowance for its first period (a month, or a year holding twelve months) as a paid invoice would:
  an invoice row with provider `manual` and amount 0, keyed by (subscription, period start), through the same
  period rules (rollover) as paid plans. Periods run from the assignment; `until` ends the plan (the last period
  is cut at it).
- Assigning the same plan and interval again changes only `until`: no second grant in the period. Another plan
  or interval ends the current manual plan and starts the new one (its allowance now, its own periods).
- The MonthlyAllowance job renews each manual plan whose period ended (`renew_due`): the next period's
  allowance once, or the end of the plan at `until`. A plan left unrenewed for several periods grants only the
  period it is renewed in, as the job treats any returning user.
- Ending (by hand or at `until`): the row becomes `ended`, the tier follows the user's other subscriptions (else
  FREE) and nothing is clawed back (what was granted stays until it expires).
- A user whose provider subscription entitles them to a plan cannot get a manual one (two allowances a period):
  end that one at its provider first.
Every change is audited (audit_logs) in the transaction that makes it.
"""

from __future__ import annotations

import calendar
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import Conflict, NotFound, ValidationFailed
from tollgate.models.credits import Plan
from tollgate.models.payments import Invoice, Subscription
from tollgate.models.users import User
from tollgate.payments.statuses import ENTITLED
from tollgate.services.authz import ADMIN, Actor, require_role
from tollgate.services.payment_events.handling import (
    FREE_TIER,
    Ctx,
    SubscriptionState,
    apply_subscription,
    grant_invoice_allowance,
    months_in,
)

PROVIDER = "manual"
INTERVALS = frozenset({"month", "year"})


@dataclass(frozen=True, slots=True)
class ManualPlan:
    subscription_id: uuid.UUID
    user_id: uuid.UUID
    plan_id: uuid.UUID | None
    tier: str | None
    interval: str | None
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    until: datetime | None
    user_tier: str
    credits_granted: Decimal  # by this call
    changed: bool


@dataclass(frozen=True, slots=True)
class Renewals:
    renewed: int
    ended: int

    @property
    def count(self) -> int:
        return self.renewed + self.ended


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` `months` later, the day clamped to the shorter month."""
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    return moment.replace(year=year, month=month + 1, day=min(moment.day, calendar.monthrange(year, month + 1)[1]))


def _until(sub: Subscription) -> datetime | None:
    value = sub.metadata_.get("until")
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _anchor(sub: Subscription) -> datetime:
    value = sub.metadata_.get("anchor")
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return sub.current_period_start or sub.created_at


def period_end(anchor: datetime, interval: str | None, start: datetime, until: datetime | None) -> datetime:
    """The end of the period starting at `start`: the next anchored date after it, cut at `until`. Counting from
    the first period's start keeps the 31st on the last day of shorter months without drifting to the 28th."""
    months, step = months_in(interval), 1
    end = add_months(anchor, months)
    while end <= start:
        step += 1
        end = add_months(anchor, months * step)
    return min(end, until) if until is not None else end


def _period_after(sub: Subscription, start: datetime) -> datetime:
    return period_end(_anchor(sub), sub.interval, start, _until(sub))


def _ctx(session: Session, event_type: str, now: datetime) -> Ctx:
    # No provider time: changes to a user's manual plan are serialized by the user's row lock, so the one applied
    # last wins. Comparing the callers' clocks would let an assignment that waited on the lock (its `now` older
    # than the plan it replaces) fail to end that plan, leaving two live.
    return Ctx(
        session=session, provider=PROVIDER, event_type=event_type, webhook_event_id=None, provider_time=None,
        livemode=None, now=now,
    )  # fmt: skip


def _live(session: Session, user_id: uuid.UUID) -> Subscription | None:
    return (
        session.execute(
            select(Subscription)
            .where(
                Subscription.user_id == user_id,
                Subscription.provider == PROVIDER,
                Subscription.status.in_(ENTITLED[PROVIDER]),
            )
            .order_by(Subscription.created_at.desc())
            .with_for_update()
        )
        .scalars()
        .first()
    )


def _grant(ctx: Ctx, user: User, sub: Subscription, plan: Plan) -> Decimal:
    """The allowance of the subscription's current period, once (keyed by the subscription and period start)."""
    assert sub.current_period_start is not None
    invoice_id = f"{sub.provider_subscription_id}:{sub.current_period_start.isoformat()}"
    invoice = ctx.session.execute(
        select(Invoice).where(Invoice.provider == PROVIDER, Invoice.provider_invoice_id == invoice_id).with_for_update()
    ).scalar_one_or_none()
    if invoice is None:
        invoice = Invoice(
            provider=PROVIDER, provider_invoice_id=invoice_id, provider_subscription_id=sub.provider_subscription_id,
            user_id=user.id, subscription_id=sub.id, status="paid", billing_reason="manual", currency=plan.currency,
            amount_due=Decimal(0), amount_paid=Decimal(0), period_start=sub.current_period_start,
            period_end=sub.current_period_end, paid_at=ctx.now,
        )  # fmt: skip
        ctx.session.add(invoice)
        ctx.session.flush()
    return grant_invoice_allowance(ctx, invoice, user, plan, sub.interval)


def _end(ctx: Ctx, user: User, sub: Subscription, at: datetime) -> None:
    apply_subscription(
        ctx,
        user,
        SubscriptionState(
            provider_subscription_id=sub.provider_subscription_id, status="ended", ended_at=at, canceled_at=at,
            cancel_at_period_end=False,
        ),
    )  # fmt: skip


def _view(sub: Subscription, user: User, granted: Decimal, changed: bool) -> ManualPlan:
    return ManualPlan(
        subscription_id=sub.id, user_id=sub.user_id, plan_id=sub.plan_id, tier=sub.tier, interval=sub.interval,
        status=sub.status, current_period_start=sub.current_period_start, current_period_end=sub.current_period_end,
        until=_until(sub), user_tier=user.tier, credits_granted=granted, changed=changed,
    )  # fmt: skip


def _locked_user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id, with_for_update=True)
    if user is None or user.deleted_at is not None:
        raise NotFound("no such user", details={"user_id": str(user_id)})
    assert isinstance(user, User)
    return user


def assign_plan(
    uow: UnitOfWork,
    actor: Actor,
    user_id: uuid.UUID,
    *,
    plan_id: uuid.UUID,
    interval: str,
    until: datetime | None = None,
    now: datetime | None = None,
) -> ManualPlan:
    """Give `user_id` the plan `plan_id` by hand (see the module docstring)."""
    require_role(actor, ADMIN)
    now = now or utcnow()
    if interval not in INTERVALS:
        raise ValidationFailed("interval must be month or year", details={"interval": interval})
    if until is not None and (until.tzinfo is None or until <= now):
        raise ValidationFailed("until must be a time in the future, with its offset", details={"until": str(until)})
    with uow:
        session = uow.session
        user = _locked_user(session, user_id)
        plan = session.get(Plan, plan_id)
        if plan is None:
            raise NotFound("no such plan", details={"plan_id": str(plan_id)})
        if plan.tier == FREE_TIER:
            raise ValidationFailed("a manual plan must be a paid tier", details={"plan_id": str(plan_id)})
        others = session.execute(
            select(Subscription).where(Subscription.user_id == user.id, Subscription.provider != PROVIDER)
        ).scalars()
        live_elsewhere = [s for s in others if s.status in ENTITLED.get(s.provider, frozenset())]
        if live_elsewhere:
            raise Conflict(
                "the user has a live provider subscription; end it at its provider first",
                details={"provider": live_elsewhere[0].provider, "subscription_id": str(live_elsewhere[0].id)},
            )
        ctx = _ctx(session, "manual.assigned", now)
        current = _live(session, user.id)
        if current is not None and current.plan_id == plan.id and current.interval == interval:
            before = _until(current)
            if before != until:
                current.metadata_ = {**current.metadata_, "until": until.isoformat() if until else None}
                assert current.current_period_start is not None
                current.current_period_end = _period_after(current, current.current_period_start)
                ledger.audit(
                    session, actor_id=actor.user_id, action="plan.manual.update", target_type="user",
                    target_id=str(user.id), now=now,
                    details={"subscription_id": str(current.id), "plan_id": str(plan.id),
                             "until": {"from": before.isoformat() if before else None,
                                       "to": until.isoformat() if until else None}},
                )  # fmt: skip
            view = _view(current, user, Decimal(0), changed=before != until)
            uow.commit()
            return view
        if current is not None:
            _end(ctx, user, current, now)
        sub_ref = f"manual_{uuid.uuid4().hex}"
        sub, _ = apply_subscription(
            ctx,
            user,
            SubscriptionState(
                provider_subscription_id=sub_ref, status="active", price_id=str(plan.id), interval=interval,
                current_period_start=now, current_period_end=period_end(now, interval, now, until),
                cancel_at_period_end=until is not None, unit_amount=Decimal(0), currency=plan.currency,
                metadata={"anchor": now.isoformat(), "until": until.isoformat() if until else None,
                          "assigned_by": str(actor.user_id)},
            ),
        )  # fmt: skip
        granted = _grant(ctx, user, sub, plan)
        ledger.audit(
            session, actor_id=actor.user_id, action="plan.manual.assign", target_type="user", target_id=str(user.id),
            now=now,
            details={"subscription_id": str(sub.id), "plan_id": str(plan.id), "tier": plan.tier, "interval": interval,
                     "until": until.isoformat() if until else None, "credits_granted": str(granted),
                     "replaced": str(current.id) if current is not None else None},
        )  # fmt: skip
        view = _view(sub, user, granted, changed=True)
        uow.commit()
    return view


def end_plan(uow: UnitOfWork, actor: Actor, user_id: uuid.UUID, *, now: datetime | None = None) -> ManualPlan:
    """End the user's manual plan now: tier back to what their other subscriptions give (else FREE), nothing is
    clawed back."""
    require_role(actor, ADMIN)
    now = now or utcnow()
    with uow:
        session = uow.session
        user = _locked_user(session, user_id)
        current = _live(session, user.id)
        if current is None:
            raise NotFound("the user has no manual plan", details={"user_id": str(user_id)})
        _end(_ctx(session, "manual.ended", now), user, current, now)
        ledger.audit(
            session, actor_id=actor.user_id, action="plan.manual.end", target_type="user", target_id=str(user.id),
            now=now,
            details={"subscription_id": str(current.id), "plan_id": str(current.plan_id), "tier": current.tier},
        )  # fmt: skip
        view = _view(current, user, Decimal(0), changed=True)
        uow.commit()
    return view


def renew_due(session: Session, now: datetime, limit: int) -> Renewals:
    """Renew the manual plans whose period ended by `now` (the MonthlyAllowance job's step, in its transaction):
    the period holding `now` and its allowance once, or the end of the plan once `until` is reached."""
    due = (
        session.execute(
            select(Subscription)
            .where(
                Subscription.provider == PROVIDER,
                Subscription.status.in_(ENTITLED[PROVIDER]),
                Subscription.current_period_end <= now,
            )
            .order_by(Subscription.current_period_end, Subscription.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    renewed = ended = 0
    for sub in due:
        user = session.get(User, sub.user_id, with_for_update={"key_share": True})
        until = _until(sub)
        end = sub.current_period_end or now
        if (until is not None and end >= until) or sub.plan_id is None or user is None:
            if user is not None:
                _end(_ctx(session, "manual.ended", now), user, sub, until or end)
            ended += 1
            continue
        start = end
        while True:  # skip the periods nobody renewed: only the one holding `now` is granted
            stop = _period_after(sub, start)
            if stop > now or (until is not None and stop >= until):
                break
            start = stop
        ctx = _ctx(session, "manual.renewed", now)
        apply_subscription(
            ctx,
            user,
            SubscriptionState(
                provider_subscription_id=sub.provider_subscription_id, status="active",
                current_period_start=start, current_period_end=_period_after(sub, start),
            ),
        )  # fmt: skip
        plan = session.get(Plan, sub.plan_id)
        if plan is not None:
            _grant(ctx, user, sub, plan)
        renewed += 1
    return Renewals(renewed=renewed, ended=ended)
