"""Billing for the signed-in user: checkout (Stripe Checkout / Lemon Squeezy checkouts), the customer portal,
and the subscription, purchase and invoice history (answered as views: frozen dataclasses of plain values made
inside the unit of work, never ORM rows).

Checkouts carry the buyer and the item (API.md): Stripe `client_reference_id` = user id and `metadata` (also
on the payment intent / subscription) = {user_id, kind, item_id}; Lemon Squeezy `checkout_data.custom` = the
same. Webhooks grant only what the provider itself reports paying for (see `tollgate.payments`).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal, TypeVar

from sqlalchemy import select

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import (
    AccountDisabled,
    AlreadySubscribed,
    BillingItemNotFound,
    NoBillingAccount,
    NotFound,
    ProviderNotConfigured,
    TrialDowngradeLimit,
)
from tollgate.models.credits import CreditPack, Plan
from tollgate.models.payments import Invoice, Purchase, Subscription
from tollgate.models.users import User, UserStatus
from tollgate.pagination import Page, keyset_page
from tollgate.payments import adapters
from tollgate.payments.money import to_minor
from tollgate.payments.statuses import ENTITLED, TRIALING
from tollgate.services.views import row_view

Provider = Literal["stripe", "lemonsqueezy"]
CheckoutProvider = Literal["stripe", "lemonsqueezy", "asaas"]
ItemKind = Literal["pack", "plan"]
Interval = Literal["month", "year"]
# Seed 001: at most this many moves to a cheaper plan during a trial.
TRIAL_DOWNGRADES = 2


@dataclass(frozen=True, slots=True)
class CheckoutResult:
    url: str
    provider: str
    session_id: str


@dataclass(frozen=True, slots=True)
class SubscriptionView:
    id: uuid.UUID
    provider: str
    status: str
    tier: str | None
    plan_id: uuid.UUID | None
    plan_name: str | None  # None: no plan, or its plan is gone
    interval: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    trial_end: datetime | None
    quantity: int


@dataclass(frozen=True, slots=True)
class PurchaseView:
    id: uuid.UUID
    provider: str
    provider_order_id: str
    item_kind: str
    item_id: uuid.UUID | None
    package_name: str | None
    credits: Decimal
    amount: Decimal
    currency: str
    status: str
    refunded_amount: Decimal
    credits_clawed_back: Decimal
    expires_at: datetime | None
    paid_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InvoiceView:
    id: uuid.UUID
    provider: str
    provider_invoice_id: str
    number: str | None
    status: str
    amount_due: Decimal
    amount_paid: Decimal
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    credits_granted: Decimal
    refunded_amount: Decimal
    hosted_invoice_url: str | None
    paid_at: datetime | None
    created_at: datetime


def _provider_key(user_id: uuid.UUID, idempotency_key: str) -> str:
    """The provider-side idempotency key of a checkout: per user, and within Stripe's 255 characters whatever
    the client's key (up to 255 characters itself) is."""
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()
    return f"checkout:{user_id}:{digest}"


def _user(uow: UnitOfWork, user_id: uuid.UUID) -> User:
    user = uow.session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    # A LOCKED account (its trial ended unpaid) may pay: paying is what unlocks it. Suspended or deleted: never.
    if user.deleted_at is not None or user.status not in (UserStatus.ACTIVE, UserStatus.LOCKED):
        raise AccountDisabled("this account cannot buy anything")
    return user


def create_checkout(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    provider: CheckoutProvider,
    kind: ItemKind,
    item_id: uuid.UUID,
    success_url: str,
    cancel_url: str,
    interval: Interval = "month",
    idempotency_key: str | None = None,
    tax_id: str | None = None,
) -> CheckoutResult:
    if provider == "asaas":  # its own flow: a BRL charge or subscription, a customer with a CPF/CNPJ
        from tollgate.services import asaas_checkout

        return asaas_checkout.create_checkout(
            uow, user_id, kind=kind, item_id=item_id, success_url=success_url, interval=interval,
            idempotency_key=idempotency_key, tax_id=tax_id,
        )  # fmt: skip
    with uow:
        user = _user(uow, user_id)
        if kind == "pack":
            pack = uow.session.get(CreditPack, item_id)
            if pack is None or not pack.active:
                raise BillingItemNotFound("no such credit pack", details={"item_id": str(item_id)})
            name, amount, currency = pack.name, pack.price, pack.currency.lower()
            price_ref = pack.stripe_price_id if provider == "stripe" else pack.lemonsqueezy_variant_id
        else:
            plan = uow.session.get(Plan, item_id)
            if plan is None or not plan.active:
                raise BillingItemNotFound("no such plan", details={"item_id": str(item_id)})
            yearly = interval == "year"
            name, currency = plan.name, plan.currency.lower()
            amount = plan.price_yearly if yearly else plan.price_monthly
            if provider == "stripe":
                price_ref = plan.stripe_price_id_yearly if yearly else plan.stripe_price_id_monthly
            else:
                price_ref = plan.lemonsqueezy_variant_id_yearly if yearly else plan.lemonsqueezy_variant_id_monthly
            if not price_ref:
                raise ProviderNotConfigured(
                    f"this plan has no {interval}ly {provider} price", details={"item_id": str(item_id)}
                )
            # Before the portal answer: at the limit, the portal is no way to a cheaper plan either.
            refuse_trial_downgrade(uow, user, plan, utcnow())
            active = active_subscription(uow, user.id)
            if active is not None:
                raise AlreadySubscribed(
                    "you already have a subscription: change plans in the billing portal",
                    details={"subscription": active.provider_subscription_id, "provider": active.provider},
                )
        try:
            minor = to_minor(amount, currency)
        except ValueError:
            raise ProviderNotConfigured("the item's price does not fit its currency") from None
        customer_id = user.stripe_customer_id if provider == "stripe" else None
        request = adapters.CheckoutRequest(
            user_id=str(user.id),
            email=user.email,
            kind=kind,
            item_id=str(item_id),
            name=name,
            success_url=success_url,
            cancel_url=cancel_url,
            price_ref=price_ref,
            unit_amount_minor=minor,
            currency=currency,
            customer_id=customer_id,
            idempotency_key=_provider_key(user.id, idempotency_key) if idempotency_key else None,
        )
    # The provider call runs outside any database transaction.
    gateway = adapters.stripe_gateway() if provider == "stripe" else adapters.lemonsqueezy_gateway()
    session = gateway.create_checkout(request)
    return CheckoutResult(url=session.url, provider=provider, session_id=session.id)


def _tier_price(uow: UnitOfWork, tier: str | None) -> Decimal:
    """A tier's rank as `sync_tier` counts downgrades: its plan's monthly price, FREE below every plan."""
    if not tier or tier == "FREE":
        return Decimal(-1)
    price = uow.session.execute(select(Plan.price_monthly).where(Plan.tier == tier)).scalar_one_or_none()
    return price if price is not None else Decimal(0)


def refuse_trial_downgrade(uow: UnitOfWork, user: User, plan: Plan, now: datetime) -> None:
    """Seed 001's trial rule: once a user in a trial has moved to a cheaper plan TRIAL_DOWNGRADES times, a checkout
    for a plan cheaper than the trial's is refused. Providers change plans in their own portals and checkouts, so
    a checkout Tollgate creates is where it can say no. A user already paying for a plan is past the trial."""
    if user.downgrade_count < TRIAL_DOWNGRADES or user.trial_ends_at is None or user.trial_ends_at <= now:
        return
    subs = (
        uow.session.execute(
            select(Subscription).where(Subscription.user_id == user.id).order_by(Subscription.created_at.desc())
        )
        .scalars()
        .all()
    )
    if any(s.status in ENTITLED[s.provider] and s.status not in TRIALING for s in subs):
        return
    # The trial's plan, even when its subscription was canceled mid-trial (the tier then fell to FREE).
    trial_tier = next((s.tier for s in subs if s.tier and s.trial_end is not None and s.trial_end > now), None)
    if plan.price_monthly < _tier_price(uow, trial_tier or user.tier):
        raise TrialDowngradeLimit(
            f"a trial allows at most {TRIAL_DOWNGRADES} downgrades, and you have used them",
            details={"downgrade_count": user.downgrade_count, "trial_ends_at": user.trial_ends_at.isoformat()},
        )


def create_portal(
    uow: UnitOfWork, user_id: uuid.UUID, *, return_url: str | None = None, provider: Provider | None = None
) -> str:
    """The provider's customer portal: Stripe's billing portal session (back to `return_url`, default APP_URL),
    or the Lemon Squeezy customer portal URL its subscription events carry."""
    return_url = return_url or get_settings().app_url
    with uow:
        user = _user(uow, user_id)
        sub = active_subscription(uow, user.id)
        chosen = provider or (sub.provider if sub is not None else ("stripe" if user.stripe_customer_id else None))
        if chosen == "lemonsqueezy":
            rows = uow.session.execute(
                select(Subscription)
                .where(Subscription.user_id == user.id, Subscription.provider == "lemonsqueezy")
                .order_by(Subscription.updated_at.desc())
            ).scalars()
            for row in rows:
                url = row.metadata_.get("customer_portal_url")
                if url:
                    return str(url)
            raise NoBillingAccount("no Lemon Squeezy customer portal is known for you yet")
        customer_id = user.stripe_customer_id
    if not customer_id:
        raise NoBillingAccount("you have no Stripe customer record yet: buy something first")
    return adapters.stripe_gateway().create_portal(customer_id, return_url)


def active_subscription(uow: UnitOfWork, user_id: uuid.UUID) -> Subscription | None:
    """The subscription that decides the user's tier now (entitled ones first, newest first), else the newest."""
    rows = (
        uow.session.execute(
            select(Subscription).where(Subscription.user_id == user_id).order_by(Subscription.created_at.desc())
        )
        .scalars()
        .all()
    )
    entitled = [s for s in rows if s.status in ENTITLED[s.provider]]
    return entitled[0] if entitled else None


def current_subscription(uow: UnitOfWork, user_id: uuid.UUID) -> SubscriptionView | None:
    with uow:
        sub = active_subscription(uow, user_id)
        if sub is None:
            sub = uow.session.execute(
                select(Subscription)
                .where(Subscription.user_id == user_id)
                .order_by(Subscription.updated_at.desc())
                .limit(1)
            ).scalar_one_or_none()
        if sub is None:
            return None
        plan = uow.session.get(Plan, sub.plan_id) if sub.plan_id else None
        return row_view(SubscriptionView, sub, plan_name=plan.name if plan else None)


ListedView = TypeVar("ListedView", PurchaseView, InvoiceView)


def _page(
    uow: UnitOfWork,
    model: type[Purchase] | type[Invoice],
    view_type: type[ListedView],
    user_id: uuid.UUID,
    cursor: str | None,
    limit: int,
) -> Page[ListedView]:
    with uow:
        page = keyset_page(
            uow.session, select(model).where(model.user_id == user_id), model.created_at, model.id, cursor=cursor,
            limit=limit, descending=True,
        )  # fmt: skip
        items = [row_view(view_type, row) for row in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def list_purchases(
    uow: UnitOfWork, user_id: uuid.UUID, *, cursor: str | None = None, limit: int = 20
) -> Page[PurchaseView]:
    return _page(uow, Purchase, PurchaseView, user_id, cursor, limit)


def list_invoices(
    uow: UnitOfWork, user_id: uuid.UUID, *, cursor: str | None = None, limit: int = 20
) -> Page[InvoiceView]:
    return _page(uow, Invoice, InvoiceView, user_id, cursor, limit)
