"""Credits use cases for the caller's own account: balance, usage, holds, history, costs, settings, catalogue.

Each function takes plain values and a UnitOfWork, commits what it changed, raises domain errors, and answers
views (frozen dataclasses of plain values made inside the unit of work), never ORM rows; nothing here knows of
HTTP. The ledger rules live in `tollgate.ledger`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text

from tollgate import ledger, system_config
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import BonusAutoUseLocked, ValidationFailed
from tollgate.models.credits import CreditPack, CreditTransaction, Plan
from tollgate.pagination import Page, keyset_page
from tollgate.services import auto_topup
from tollgate.services.views import plain_json, row_view

ZERO = Decimal(0)
MAX_SUMMARY_DAYS = 366
TRANSACTION_TYPES = frozenset(
    {"signup", "usage", "refund", "purchase", "monthly_allowance", "promo", "expiry", "adjustment", "hold",
     "capture", "release", "clawback"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BalanceView:
    balance: Decimal  # owned, held credits included
    available: Decimal  # spendable now (purchased credits only when auto-use allows), credit line included
    allowance: Decimal
    bonus: Decimal  # purchased packs
    promotional: Decimal  # sign-up, promotions, adjustments, refunds
    held: Decimal
    debt: Decimal
    floor: Decimal
    next_reset_at: datetime | None
    tier: str
    bonus_auto_use: bool
    bonus_auto_use_locked: bool


@dataclass(frozen=True, slots=True)
class TransactionView:
    id: uuid.UUID
    type: str
    amount: Decimal
    balance_after: Decimal
    operation: str | None
    quantity: Decimal | None
    hold_id: uuid.UUID | None
    reverses_id: uuid.UUID | None
    metadata: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class PlanView:
    """A plan of the catalogue (the public list and the admin routes)."""

    id: uuid.UUID
    tier: str
    name: str
    description: str | None
    monthly_credits: Decimal
    rollover: str
    rollover_cap: Decimal | None
    price_monthly: Decimal
    price_yearly: Decimal
    currency: str
    features: Any  # JSON as stored (a list of feature lines)
    badge: str | None
    highlight: bool
    cta_type: str | None
    cta_label: str | None
    cta_url: str | None
    sort_order: int
    active: bool
    billing_source: str
    stripe_price_id_monthly: str | None
    stripe_price_id_yearly: str | None
    lemonsqueezy_variant_id_monthly: str | None
    lemonsqueezy_variant_id_yearly: str | None
    clerk_plan_id: str | None
    asaas_id: str | None


@dataclass(frozen=True, slots=True)
class PackView:
    """A credit pack of the catalogue (the public list and the admin routes)."""

    id: uuid.UUID
    name: str
    description: str | None
    credits: Decimal
    price: Decimal
    currency: str
    expires_after_days: int | None
    sort_order: int
    active: bool
    stripe_price_id: str | None
    lemonsqueezy_variant_id: str | None
    asaas_id: str | None


BALANCE_SQL = """
SELECT u.tier,
       coalesce(a.balance, 0) AS balance, coalesce(a.held, 0) AS held, coalesce(a.debt, 0) AS debt,
       coalesce(a.floor, 0) AS floor, coalesce(a.bonus_auto_use, false) AS bonus_auto_use,
       coalesce(s.allow_bonus_auto_use_toggle, false) AS toggle_allowed,
       tollgate_allow_packs(a.bonus_auto_use, s.allow_bonus_auto_use_toggle) AS packs_usable,
       coalesce(sum(g.remaining) FILTER (WHERE g.kind = 'allowance'), 0) AS allowance,
       coalesce(sum(g.remaining) FILTER (WHERE g.kind = 'purchase'), 0) AS bonus,
       coalesce(sum(g.remaining) FILTER (WHERE g.kind NOT IN ('allowance', 'purchase')), 0) AS promotional,
       coalesce(sum(g.remaining) FILTER (WHERE g.kind <> 'purchase' AND (g.expires_at IS NULL OR g.expires_at > :now)),
                0) AS free_live,
       coalesce(sum(g.remaining) FILTER (WHERE g.kind = 'purchase' AND (g.expires_at IS NULL OR g.expires_at > :now)),
                0) AS bonus_live,
       -- the current allowance's end; else the user's own reset day (the MonthlyAllowance job's schedule)
       coalesce(min(g.expires_at) FILTER (WHERE g.kind = 'allowance' AND g.expires_at > :now),
                CASE WHEN sch.next_reset_at > :now THEN sch.next_reset_at END) AS next_reset_at
FROM users u
LEFT JOIN credit_accounts a ON a.user_id = u.id
LEFT JOIN allowance_schedules sch ON sch.user_id = u.id
LEFT JOIN admin_settings s ON s.id = 1
LEFT JOIN credit_grants g ON g.user_id = u.id AND g.status = 'active'
WHERE u.id = :user_id
GROUP BY u.tier, a.balance, a.held, a.debt, a.floor, a.bonus_auto_use, s.allow_bonus_auto_use_toggle,
         sch.next_reset_at
"""


def _balance(uow: UnitOfWork, user_id: uuid.UUID) -> BalanceView:
    row = uow.session.execute(text(BALANCE_SQL), {"user_id": user_id, "now": utcnow()}).mappings().first()
    if row is None:
        from tollgate.errors import NotFound

        raise NotFound("no such user", details={"user_id": str(user_id)})
    packs_usable = row["packs_usable"]  # the ledger's own auto-use rule (tollgate_allow_packs)
    line_room = -row["floor"] - row["debt"]
    available = row["free_live"] + (row["bonus_live"] if packs_usable else ZERO) + line_room
    return BalanceView(
        balance=row["balance"],
        available=available,
        allowance=row["allowance"],
        bonus=row["bonus"],
        promotional=row["promotional"],
        held=row["held"],
        debt=row["debt"],
        floor=row["floor"],
        next_reset_at=row["next_reset_at"],
        tier=row["tier"],
        bonus_auto_use=bool(packs_usable),
        bonus_auto_use_locked=not row["toggle_allowed"],
    )


def available_balance(uow: UnitOfWork, user_id: uuid.UUID) -> Decimal:
    """The spendable balance, read in the caller's open unit of work (auto top-up's threshold)."""
    return _balance(uow, user_id).available


def get_balance(uow: UnitOfWork, user_id: uuid.UUID) -> BalanceView:
    with uow:
        return _balance(uow, user_id)


def record_usage(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    operation: str,
    quantity: Decimal = Decimal(1),
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> ledger.ChargeResult:
    with uow:
        # One statement in the unit of work's transaction, answered only once committed: a failed commit raises.
        result = ledger.charge(
            uow.session, user_id, operation=operation, quantity=quantity, metadata=metadata,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        if not result.replayed:  # a top-up, if due, in the charge's transaction (its provider call comes later)
            auto_topup.after_spend(uow.session, user_id, lambda: available_balance(uow, user_id))
        uow.commit()
    return result


def create_hold(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    operation: str | None,
    quantity: Decimal,
    amount: Decimal | None,
    ttl_seconds: int,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ledger.HoldResult:
    with uow:
        result = ledger.hold(
            uow.session, user_id, operation=operation, quantity=quantity, amount=amount, ttl_seconds=ttl_seconds,
            idempotency_key=idempotency_key, metadata=metadata,
        )  # fmt: skip
        if not result.replayed:
            auto_topup.after_spend(uow.session, user_id, lambda: available_balance(uow, user_id))
        uow.commit()
    return result


def capture_hold(
    uow: UnitOfWork, user_id: uuid.UUID, hold_id: uuid.UUID, *, amount: Decimal, idempotency_key: str | None = None
) -> ledger.CaptureResult:
    with uow:
        result = ledger.capture(uow.session, user_id, hold_id, amount=amount, idempotency_key=idempotency_key)
        if not result.replayed:
            auto_topup.after_spend(uow.session, user_id, lambda: available_balance(uow, user_id))
        uow.commit()
    return result


def release_hold(uow: UnitOfWork, user_id: uuid.UUID, hold_id: uuid.UUID) -> ledger.ReleaseResult:
    with uow:
        result = ledger.release(uow.session, user_id, hold_id)
        uow.commit()
    return result


def list_transactions(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    *,
    type_: str | None = None,
    operation: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Page[TransactionView]:
    """The user's ledger, newest first."""
    if type_ is not None and type_ not in TRANSACTION_TYPES:
        raise ValidationFailed(
            "unknown transaction type", details={"field": "type", "allowed": sorted(TRANSACTION_TYPES)}
        )
    statement = select(CreditTransaction).where(CreditTransaction.user_id == user_id)
    if type_ is not None:
        statement = statement.where(CreditTransaction.type == type_)
    if operation is not None:
        statement = statement.where(CreditTransaction.operation == operation)
    if since is not None:
        statement = statement.where(CreditTransaction.created_at >= since)
    if until is not None:
        statement = statement.where(CreditTransaction.created_at < until)
    with uow:
        page = keyset_page(
            uow.session, statement, CreditTransaction.created_at, CreditTransaction.id, cursor=cursor, limit=limit,
            descending=True,
        )  # fmt: skip
        items = [row_view(TransactionView, t, metadata=plain_json(t.metadata_)) for t in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


@dataclass(frozen=True, slots=True)
class UsageLine:
    operation: str
    count: int
    credits: Decimal  # charged, net of refunds


USAGE_SQL = """
SELECT operation,
       count(*) FILTER (WHERE type IN ('usage', 'capture')) AS charges,
       -coalesce(sum(amount) FILTER (WHERE type IN ('usage', 'capture', 'refund')), 0) AS credits
FROM credit_transactions
WHERE user_id = :user_id AND created_at >= :since AND operation IS NOT NULL
  AND type IN ('usage', 'capture', 'refund')
GROUP BY operation
ORDER BY credits DESC, operation
"""


def usage_summary(uow: UnitOfWork, user_id: uuid.UUID, *, days: int = 30) -> list[UsageLine]:
    """Per operation over the last `days`: how many charges (usage and captured holds) and the credits they
    cost, net of refunds made in the same window."""
    if not 1 <= days <= MAX_SUMMARY_DAYS:
        raise ValidationFailed(f"days must be 1-{MAX_SUMMARY_DAYS}", details={"field": "days"})
    since = utcnow() - timedelta(days=days)
    with uow:
        rows = uow.session.execute(text(USAGE_SQL), {"user_id": user_id, "since": since}).all()
    return [UsageLine(r.operation, int(r.charges), Decimal(r.credits).quantize(ledger.SCALE)) for r in rows]


def costs_for(uow: UnitOfWork, user_id: uuid.UUID) -> dict[str, Decimal]:
    """The cost per unit of every operation, as in force for the user's plan (overrides applied)."""
    with uow:
        row = uow.session.execute(
            text(
                "SELECT u.tier, s.feature_costs, s.plan_feature_costs FROM users u "
                "LEFT JOIN admin_settings s ON s.id = 1 WHERE u.id = :user_id"
            ),
            {"user_id": user_id},
        ).first()
    if row is None:
        return {}
    costs = {op: Decimal(cost) for op, cost in (row.feature_costs or {}).items()}
    overrides = (row.plan_feature_costs or {}).get(row.tier) or {}
    costs.update({op: Decimal(cost) for op, cost in overrides.items()})
    return dict(sorted(costs.items()))


def update_settings(uow: UnitOfWork, user_id: uuid.UUID, *, bonus_auto_use: bool) -> BalanceView:
    with uow:
        # Read now, not from the cache: the refusal must agree with what the ledger's SQL applies.
        allowed = system_config.get_bool(uow.session, system_config.ALLOW_BONUS_AUTO_USE_TOGGLE, max_age=0)
        if not allowed:  # no settings row: the default, users do not choose
            raise BonusAutoUseLocked(
                "purchased credits are always used automatically on this deployment",
                details={"bonus_auto_use": True},
            )
        ledger.set_bonus_auto_use(uow.session, user_id, bonus_auto_use)
        view = _balance(uow, user_id)
        uow.commit()
    return view


def active_plans(uow: UnitOfWork, *, cursor: str | None = None, limit: int | None = None) -> Page[PlanView]:
    with uow:
        page = keyset_page(
            uow.session, select(Plan).where(Plan.active.is_(True)), Plan.sort_order, Plan.id, cursor=cursor,
            limit=limit,
        )  # fmt: skip
        items = [row_view(PlanView, p) for p in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def active_credit_packs(uow: UnitOfWork, *, cursor: str | None = None, limit: int | None = None) -> Page[PackView]:
    with uow:
        page = keyset_page(
            uow.session, select(CreditPack).where(CreditPack.active.is_(True)), CreditPack.sort_order,
            CreditPack.id, cursor=cursor, limit=limit,
        )  # fmt: skip
        items = [row_view(PackView, p) for p in page.items]
    return Page(items=items, next_cursor=page.next_cursor)
