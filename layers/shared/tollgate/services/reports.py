"""Reading what is recorded (issue 14): the AnalyticsRollup's daily series, email logs, subscription events,
refunds, a user's own payment methods, and the low-balance report. Reads only: the admin ones take an `Actor`
and admit ADMIN; the payment methods are the caller's own. Answers are views (frozen dataclasses of plain values
made inside the unit of work), never ORM rows.

Lists are newest first by id (UUIDv7, so time order) with signed cursors; `since`/`until` bound `created_at`
(`since` inclusive, `until` exclusive).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, func, select, text
from sqlalchemy.orm import InstrumentedAttribute

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import AnalyticsRangeTooLong, ValidationFailed
from tollgate.ledger.burn_rate import BURN_PER_DAY, NOTICE_DUE, RECENT_USAGE
from tollgate.models.auth import EmailLog
from tollgate.models.credits import CreditAccount
from tollgate.models.jobs import ANALYTICS_METRICS, AnalyticsMetric
from tollgate.models.payments import PaymentMethod, Refund, Subscription, SubscriptionEvent
from tollgate.models.users import User
from tollgate.pagination import Page, keyset_page
from tollgate.services.authz import ADMIN, Actor, require_role
from tollgate.services.auto_topup import default_payment_method
from tollgate.services.views import plain_json, row_view

METRICS = ANALYTICS_METRICS
ANALYTICS_MAX_DAYS = 366
ANALYTICS_DEFAULT_DAYS = 30
DEFAULT_LOW_BALANCE_THRESHOLD = Decimal(10)  # seed 003: creditsRemaining < 10
MAX_DAYS = 36_500  # a projection further out names no date


# --- analytics ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Point:
    day: date
    value: Decimal


@dataclass(frozen=True, slots=True)
class Series:
    dimension: str  # '' for a metric without one; a currency for mrr and revenue
    points: list[Point]


@dataclass(frozen=True, slots=True)
class AnalyticsSeries:
    metric: str
    since: date
    until: date
    series: list[Series]


def analytics(
    uow: UnitOfWork,
    actor: Actor,
    *,
    metric: str,
    dimension: str | None = None,
    since: date | None = None,
    until: date | None = None,
    today: date | None = None,
) -> AnalyticsSeries:
    """The daily values of `metric` from `since` to `until` (both included; default: the last 30 rolled-up days),
    one series per dimension (or only `dimension`). Days the rollup has not written are absent."""
    require_role(actor, ADMIN)
    if metric not in METRICS:
        raise ValidationFailed("unknown metric", details={"field": "metric", "allowed": list(METRICS)})
    last = until or (today or utcnow().date()) - timedelta(days=1)  # the rollup writes complete days
    # The default start stops at the first day there is (an `until` in year 1 has no 30 days before it).
    first = since or last - min(timedelta(days=ANALYTICS_DEFAULT_DAYS - 1), last - date.min)
    if first > last:
        raise ValidationFailed("since is after until", details={"field": "since"})
    days = (last - first).days + 1
    if days > ANALYTICS_MAX_DAYS:
        raise AnalyticsRangeTooLong(
            f"a series covers at most {ANALYTICS_MAX_DAYS} days", details={"max_days": ANALYTICS_MAX_DAYS, "days": days}
        )
    query = (
        select(AnalyticsMetric.dimension, AnalyticsMetric.day, AnalyticsMetric.value)
        .where(AnalyticsMetric.metric == metric, AnalyticsMetric.day >= first, AnalyticsMetric.day <= last)
        .order_by(AnalyticsMetric.dimension, AnalyticsMetric.day)
    )
    if dimension is not None:
        query = query.where(AnalyticsMetric.dimension == dimension)
    by_dimension: dict[str, list[Point]] = {}
    with uow:
        for row in uow.session.execute(query):
            by_dimension.setdefault(row.dimension, []).append(Point(row.day, row.value))
    series = [Series(d, points) for d, points in by_dimension.items()]
    return AnalyticsSeries(metric=metric, since=first, until=last, series=series)


# --- lists --------------------------------------------------------------------------------------------------------
def _window(
    query: Select[Any], column: InstrumentedAttribute[datetime], since: datetime | None, until: datetime | None
) -> Select[Any]:
    if since is not None and until is not None and since >= until:
        raise ValidationFailed("since must be before until", details={"field": "since"})
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


@dataclass(frozen=True, slots=True)
class EmailLogView:
    id: uuid.UUID
    user_id: uuid.UUID | None
    recipient: str
    type: str
    subject: str
    status: str
    provider: str
    message_id: str | None
    error: str | None
    metadata: dict[str, object]
    sent_at: datetime | None
    created_at: datetime


# Mail whose subject carries a one-time secret (the sign-in code): an admin reading the logs never sees it.
SECRET_SUBJECTS = {"two_factor_code"}
DIGITS = re.compile(r"[0-9]")


def _shown_subject(kind: str, subject: str) -> str:
    return DIGITS.sub("*", subject) if kind in SECRET_SUBJECTS else subject


def email_logs(
    uow: UnitOfWork,
    actor: Actor,
    *,
    status: str | None = None,
    type: str | None = None,
    recipient: str | None = None,
    user_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[EmailLogView]:
    """Every message the mail service was asked to send, newest first; `recipient` matches whole addresses,
    ignoring case."""
    require_role(actor, ADMIN)
    query = _window(select(EmailLog), EmailLog.created_at, since, until)
    if status is not None:
        query = query.where(EmailLog.status == status)
    if type is not None:
        query = query.where(EmailLog.type == type)
    if recipient is not None:
        query = query.where(func.lower(EmailLog.recipient) == recipient.strip().lower())
    if user_id is not None:
        query = query.where(EmailLog.user_id == user_id)
    with uow:
        page = keyset_page(uow.session, query, EmailLog.id, cursor=cursor, limit=limit, descending=True)
        items = [
            row_view(EmailLogView, r, subject=_shown_subject(r.type, r.subject), metadata=plain_json(r.metadata_ or {}))
            for r in page.items
        ]
    return Page(items=items, next_cursor=page.next_cursor)


@dataclass(frozen=True, slots=True)
class SubscriptionEventView:
    id: uuid.UUID
    subscription_id: uuid.UUID
    provider: str
    provider_subscription_id: str
    user_id: uuid.UUID | None
    webhook_event_id: uuid.UUID | None
    type: str
    from_status: str | None
    to_status: str | None
    from_price_id: str | None
    to_price_id: str | None
    applied: bool
    provider_time: datetime | None
    details: dict[str, Any]
    created_at: datetime


def subscription_events(
    uow: UnitOfWork,
    actor: Actor,
    *,
    user_id: uuid.UUID | None = None,
    provider: str | None = None,
    subscription_id: uuid.UUID | None = None,
    type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[SubscriptionEventView]:
    """Seed 002/003's subscription events (each status or price change a webhook brought), newest first."""
    require_role(actor, ADMIN)
    query = _window(
        select(SubscriptionEvent).join(Subscription, Subscription.id == SubscriptionEvent.subscription_id),
        SubscriptionEvent.created_at,
        since,
        until,
    )
    if user_id is not None:
        query = query.where(SubscriptionEvent.user_id == user_id)
    if provider is not None:
        query = query.where(Subscription.provider == provider)
    if subscription_id is not None:
        query = query.where(SubscriptionEvent.subscription_id == subscription_id)
    if type is not None:
        query = query.where(SubscriptionEvent.type == type)
    with uow:
        page = keyset_page(uow.session, query, SubscriptionEvent.id, cursor=cursor, limit=limit, descending=True)
        ids = {e.subscription_id for e in page.items}
        subscriptions = {
            s.id: (s.provider, s.provider_subscription_id)
            for s in uow.session.execute(
                select(Subscription.id, Subscription.provider, Subscription.provider_subscription_id).where(
                    Subscription.id.in_(ids)
                )
            )
        }
        items = [
            row_view(
                SubscriptionEventView,
                e,
                provider=subscriptions[e.subscription_id][0],
                provider_subscription_id=subscriptions[e.subscription_id][1],
                details=plain_json(e.details),
            )
            for e in page.items
        ]
    return Page(items=items, next_cursor=page.next_cursor)


@dataclass(frozen=True, slots=True)
class RefundView:
    id: uuid.UUID
    provider: str
    provider_refund_id: str | None
    kind: str
    status: str
    user_id: uuid.UUID | None
    purchase_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    order_id: uuid.UUID | None
    amount: Decimal
    currency: str
    credits_requested: Decimal
    credits_clawed_back: Decimal
    credits_shortfall: Decimal
    reason: str | None
    requested_by: uuid.UUID | None
    processed_at: datetime | None
    created_at: datetime


def refunds(
    uow: UnitOfWork,
    actor: Actor,
    *,
    user_id: uuid.UUID | None = None,
    provider: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[RefundView]:
    """Every refund and charge-back, whoever asked for it, newest first."""
    require_role(actor, ADMIN)
    query = _window(select(Refund), Refund.created_at, since, until)
    if user_id is not None:
        query = query.where(Refund.user_id == user_id)
    if provider is not None:
        query = query.where(Refund.provider == provider)
    if status is not None:
        query = query.where(Refund.status == status)
    with uow:
        page = keyset_page(uow.session, query, Refund.id, cursor=cursor, limit=limit, descending=True)
        items = [row_view(RefundView, r) for r in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


# --- the caller's payment methods ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PaymentMethodView:
    id: uuid.UUID
    provider: str
    type: str
    brand: str | None
    last4: str | None
    exp_month: int | None
    exp_year: int | None
    default: bool
    created_at: datetime


def payment_methods(
    uow: UnitOfWork, user_id: uuid.UUID, *, cursor: str | None = None, limit: int = 20
) -> Page[PaymentMethodView]:
    """The caller's saved payment methods still attached (as the provider's webhooks recorded them), newest first;
    `default` is the card auto top-up would charge (services/auto_topup.default_payment_method)."""
    query = select(PaymentMethod).where(PaymentMethod.user_id == user_id, PaymentMethod.detached.is_(False))
    with uow:
        user = uow.session.get(User, user_id)
        default = default_payment_method(uow.session, user) if user is not None else None
        page = keyset_page(uow.session, query, PaymentMethod.id, cursor=cursor, limit=limit, descending=True)
        items = [row_view(PaymentMethodView, m, default=default is not None and m.id == default.id) for m in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


# --- low balances ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LowBalanceRow:
    user_id: uuid.UUID
    email: str
    tier: str | None
    balance: Decimal
    held: Decimal
    spendable: Decimal
    used_recently: Decimal  # credits used over the last BURN_RATE_DAYS
    burn_per_day: Decimal
    days_left: Decimal | None  # at that pace; None when nothing was used
    runs_out_at: datetime | None
    notice_due: bool  # the BalanceNotices job's rule: empty within LOW_BALANCE_NOTICE_DAYS at that pace


@dataclass(frozen=True, slots=True)
class LowBalancePage:
    threshold: Decimal
    burn_rate_days: int
    items: list[LowBalanceRow]
    next_cursor: str | None


BURN = text(
    f"""
    SELECT a.user_id, used.credits AS used, {BURN_PER_DAY} AS burn_per_day, ({NOTICE_DUE}) AS notice_due
    FROM credit_accounts a
    {RECENT_USAGE}
    WHERE a.user_id = ANY(CAST(:ids AS uuid[]))
    """
)


def low_balance(
    uow: UnitOfWork,
    actor: Actor,
    *,
    threshold: Decimal = DEFAULT_LOW_BALANCE_THRESHOLD,
    cursor: str | None = None,
    limit: int = 20,
    now: datetime | None = None,
) -> LowBalancePage:
    """Seed 003's low-balance query (accounts whose spendable credits, balance less holds, are under `threshold`),
    each with the burn-rate projection the low-balance notices use. Deleted users are left out; by user id."""
    require_role(actor, ADMIN)
    settings = get_settings()
    clock = now or utcnow()
    query = (
        select(CreditAccount)
        .join(User, User.id == CreditAccount.user_id)
        .where(CreditAccount.balance - CreditAccount.held < threshold, User.deleted_at.is_(None))
    )
    with uow:
        page = keyset_page(uow.session, query, CreditAccount.user_id, cursor=cursor, limit=limit)
        accounts: Sequence[CreditAccount] = page.items
        ids = [a.user_id for a in accounts]
        users = {u.id: u for u in uow.session.execute(select(User).where(User.id.in_(ids))).scalars()}
        burn = {
            row.user_id: (Decimal(row.used), Decimal(row.burn_per_day), bool(row.notice_due))
            for row in uow.session.execute(
                BURN,
                {
                    "ids": ids,
                    "since": clock - timedelta(days=settings.burn_rate_days),
                    "burn_days": settings.burn_rate_days,
                    "notice_days": settings.low_balance_notice_days,
                },
            )
        }
        items = []
        for account in accounts:
            spendable = account.balance - account.held
            used, per_day, notice_due = burn[account.user_id]
            days_left = (max(spendable, Decimal(0)) / per_day).quantize(Decimal("0.01")) if per_day > 0 else None
            runs_out_at = (
                clock + timedelta(days=float(days_left)) if days_left is not None and days_left < MAX_DAYS else None
            )
            user = users[account.user_id]
            items.append(
                LowBalanceRow(
                    user_id=account.user_id,
                    email=user.email,
                    tier=user.tier,
                    balance=account.balance,
                    held=account.held,
                    spendable=spendable,
                    used_recently=used,
                    burn_per_day=per_day,
                    days_left=days_left,
                    runs_out_at=runs_out_at,
                    notice_due=notice_due,
                )
            )
    return LowBalancePage(
        threshold=threshold, burn_rate_days=settings.burn_rate_days, items=items, next_cursor=page.next_cursor
    )
