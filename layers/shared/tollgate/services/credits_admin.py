"""Admin credit use cases: charges on a user's behalf, adjustments, refunds, account inspection, feature costs,
the catalogue (plans, credit packs) and reconciliation. Every function checks the caller's `Actor` itself
(services/authz.py: ADMIN; support may read an account), writes an audit_logs row for what it changes, and answers
views (frozen dataclasses of plain values made inside the unit of work), never ORM rows."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from tollgate import ledger, system_config
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import Conflict, NotFound, ValidationFailed
from tollgate.models.credits import AdminSettings, CreditAccount, CreditGrant, CreditPack, Plan
from tollgate.models.users import User
from tollgate.pagination import Page, keyset_page
from tollgate.services.authz import ADMIN, SUPPORT, Actor, require_role
from tollgate.services.credits import PackView, PlanView
from tollgate.services.views import row_view

OPERATION_NAME = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
TIER_NAME = re.compile(r"^[A-Z0-9_]{1,32}$")
MAX_GRANTS_LISTED = 500

PLAN_FIELDS = frozenset(
    {"tier", "name", "description", "monthly_credits", "rollover", "rollover_cap", "price_monthly", "price_yearly",
     "currency", "features", "badge", "highlight", "cta_type", "cta_label", "cta_url", "sort_order", "active",
     "billing_source", "stripe_price_id_monthly", "stripe_price_id_yearly", "lemonsqueezy_variant_id_monthly",
     "lemonsqueezy_variant_id_yearly", "clerk_plan_id", "asaas_id"}
)  # fmt: skip
PACK_FIELDS = frozenset(
    {"name", "description", "credits", "price", "currency", "expires_after_days", "sort_order", "active",
     "stripe_price_id", "lemonsqueezy_variant_id", "asaas_id"}
)  # fmt: skip


def _admin(actor: Actor) -> None:
    require_role(actor, ADMIN)


def _user_exists(uow: UnitOfWork, user_id: uuid.UUID) -> None:
    if uow.session.get(User, user_id) is None:
        raise NotFound("no such user", details={"user_id": str(user_id)})


# --- moving credits -------------------------------------------------------------------------------------------
def charge_user(
    uow: UnitOfWork,
    actor: Actor,
    user_id: uuid.UUID,
    *,
    operation: str,
    quantity: Decimal,
    metadata: dict[str, Any] | None,
    idempotency_key: str | None,
) -> ledger.ChargeResult:
    """Charge a user on a server's behalf (same rules and answers as the user's own usage)."""
    _admin(actor)
    with uow:
        _user_exists(uow, user_id)
        result = ledger.charge(
            uow.session, user_id, operation=operation, quantity=quantity, idempotency_key=idempotency_key,
            metadata={**(metadata or {}), "charged_by": str(actor.user_id)},
        )  # fmt: skip
        if not result.replayed:
            ledger.audit(
                uow.session, actor_id=actor.user_id, action="credits.charge", target_type="user",
                target_id=str(user_id),
                details={
                    "operation": operation, "quantity": str(quantity), "transaction_id": str(result.transaction_id)
                },
            )  # fmt: skip
        uow.commit()
    return result


def adjust_user(
    uow: UnitOfWork,
    actor: Actor,
    user_id: uuid.UUID,
    *,
    amount: Decimal,
    reason: str,
    expires_at: datetime | None,
    idempotency_key: str | None,
) -> ledger.AdjustResult:
    _admin(actor)
    with uow:
        _user_exists(uow, user_id)
        result = ledger.adjust(
            uow.session, user_id, amount=amount, reason=reason, actor_id=actor.user_id, expires_at=expires_at,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        uow.commit()
    return result


def refund_transaction(
    uow: UnitOfWork,
    actor: Actor,
    *,
    transaction_id: uuid.UUID,
    amount: Decimal | None,
    reason: str,
    idempotency_key: str | None,
) -> ledger.RefundResult:
    _admin(actor)
    if not reason.strip():
        raise ValidationFailed("a reason is required", details={"field": "reason"})
    with uow:
        result = ledger.refund(
            uow.session, transaction_id, amount=amount, reason=reason, actor_id=actor.user_id,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        if not result.replayed:
            ledger.audit(
                uow.session, actor_id=actor.user_id, action="credits.refund", target_type="credit_transaction",
                target_id=str(transaction_id),
                details={"amount": str(result.refunded), "reason": reason, "refund_id": str(result.transaction_id)},
            )  # fmt: skip
        uow.commit()
    return result


def set_credit_floor(uow: UnitOfWork, actor: Actor, user_id: uuid.UUID, *, floor: Decimal, reason: str) -> Decimal:
    """Open (negative floor) or close (0) a user's credit line."""
    _admin(actor)
    with uow:
        _user_exists(uow, user_id)
        result = ledger.set_floor(uow.session, user_id, floor, actor_id=actor.user_id, reason=reason)
        uow.commit()
    return result


def reconcile(uow: UnitOfWork, actor: Actor) -> ledger.ReconcileReport:
    _admin(actor)
    with uow:
        report = ledger.reconcile(uow.session)
        ledger.audit(
            uow.session, actor_id=actor.user_id, action="credits.reconcile", target_type="ledger", target_id=None,
            details={"users_checked": report.users_checked, "mismatches": len(report.mismatches)},
        )  # fmt: skip
        uow.commit()
    return report


@dataclass(frozen=True, slots=True)
class AccountView:
    balance: Decimal
    held: Decimal
    debt: Decimal
    floor: Decimal
    bonus_auto_use: bool


@dataclass(frozen=True, slots=True)
class GrantView:
    id: uuid.UUID
    kind: str
    amount: Decimal
    remaining: Decimal
    status: str
    source_key: str
    expires_at: datetime | None
    expired_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class UserCredits:
    user_id: uuid.UUID
    account: AccountView | None
    grants: list[GrantView]


def user_credits(uow: UnitOfWork, actor: Actor, user_id: uuid.UUID) -> UserCredits:
    """The account and every grant (active first, then the newest expired), with remaining and expiry. Support
    reads it too: a customer's balance is what a ticket is usually about."""
    require_role(actor, ADMIN, SUPPORT)
    with uow:
        _user_exists(uow, user_id)
        account = uow.session.get(CreditAccount, user_id)
        grants = [
            row_view(GrantView, g)
            for g in uow.session.execute(
                select(CreditGrant)
                .where(CreditGrant.user_id == user_id)
                .order_by(
                    (CreditGrant.status != "active"),
                    CreditGrant.is_pack,
                    CreditGrant.expires_at.asc().nulls_last(),
                    CreditGrant.created_at.desc(),
                )
                .limit(MAX_GRANTS_LISTED)
            ).scalars()
        ]
        account_view = row_view(AccountView, account) if account is not None else None
    return UserCredits(user_id=user_id, account=account_view, grants=grants)


# --- feature costs --------------------------------------------------------------------------------------------
def _settings_row(uow: UnitOfWork, *, lock: bool = False) -> AdminSettings:
    """The admin_settings singleton (re-created with defaults if a restore lost it)."""
    uow.session.execute(text("INSERT INTO admin_settings (id) VALUES (1) ON CONFLICT DO NOTHING"))
    statement = select(AdminSettings).where(AdminSettings.id == 1)
    if lock:
        statement = statement.with_for_update()
    return uow.session.execute(statement).scalar_one()


def _check_tier(tier: str | None) -> None:
    if tier is not None and not TIER_NAME.match(tier):
        raise ValidationFailed("tier must be 1-32 of A-Z, 0-9, _", details={"field": "tier"})


def feature_costs(uow: UnitOfWork, actor: Actor, *, tier: str | None = None) -> dict[str, Decimal]:
    """The default cost table, or with `tier` that plan's overrides."""
    _admin(actor)
    _check_tier(tier)
    with uow:
        row = _settings_row(uow)
        costs = row.feature_costs if tier is None else (row.plan_feature_costs or {}).get(tier, {})
        uow.commit()
    return {op: Decimal(cost) for op, cost in sorted(costs.items())}


def replace_feature_costs(
    uow: UnitOfWork, actor: Actor, costs: Mapping[str, Decimal], *, tier: str | None = None
) -> dict[str, Decimal]:
    """Replace the default cost table (or, with `tier`, that plan's overrides; an empty map removes them)."""
    _admin(actor)
    _check_tier(tier)
    clean: dict[str, str] = {}
    for op, cost in costs.items():
        if not OPERATION_NAME.match(op):
            raise ValidationFailed(
                "operation names are 1-64 of a-z, 0-9, _ . : - (starting with a letter or digit)",
                details={"field": op},
            )
        clean[op] = format(ledger.credits(cost, op, allow_zero=True), "f")
    with uow:
        row = _settings_row(uow, lock=True)
        before: Any
        if tier is None:
            before = row.feature_costs
            row.feature_costs = clean
        else:
            overrides = dict(row.plan_feature_costs or {})
            before = overrides.get(tier, {})
            if clean:
                overrides[tier] = clean
            else:
                overrides.pop(tier, None)
            row.plan_feature_costs = overrides
        row.updated_by = actor.user_id
        row.updated_at = utcnow()
        ledger.audit(
            uow.session, actor_id=actor.user_id, action="credits.feature_costs", target_type="admin_settings",
            target_id=tier or "default", details={"before": before, "after": clean},
        )  # fmt: skip
        uow.commit()
    return {op: Decimal(cost) for op, cost in sorted(clean.items())}


def set_bonus_auto_use_policy(uow: UnitOfWork, actor: Actor, *, allow_toggle: bool) -> bool:
    """Whether users may choose to auto-use purchased credits (off until they turn it on); when they may not,
    purchased credits are always used after the free ones."""
    _admin(actor)
    with uow:
        row = _settings_row(uow, lock=True)
        before = row.allow_bonus_auto_use_toggle
        row.allow_bonus_auto_use_toggle = allow_toggle
        row.updated_by = actor.user_id
        row.updated_at = utcnow()
        ledger.audit(
            uow.session, actor_id=actor.user_id, action="credits.bonus_auto_use_policy",
            target_type="admin_settings", target_id="default", details={"before": before, "after": allow_toggle},
            old_values={"allow_bonus_auto_use_toggle": before},
            new_values={"allow_bonus_auto_use_toggle": allow_toggle},
        )  # fmt: skip
        uow.commit()
    system_config.forget(system_config.ALLOW_BONUS_AUTO_USE_TOGGLE)  # one stored value (tollgate/system_config.py)
    return allow_toggle


def credit_settings(uow: UnitOfWork, actor: Actor) -> bool:
    _admin(actor)
    with uow:
        value = _settings_row(uow).allow_bonus_auto_use_toggle
        uow.commit()
    return value


# --- catalogue ------------------------------------------------------------------------------------------------
def _check_plan(plan: Plan) -> None:
    _check_tier(plan.tier)
    if plan.rollover not in {"none", "capped", "full"}:
        raise ValidationFailed("rollover must be none, capped or full", details={"field": "rollover"})
    if plan.rollover == "capped" and plan.rollover_cap is None:
        raise ValidationFailed("a capped rollover needs rollover_cap", details={"field": "rollover_cap"})


def _audit_change(
    uow: UnitOfWork, actor: Actor, action: str, kind: str, target: uuid.UUID, fields: Mapping[str, Any]
) -> None:
    ledger.audit(
        uow.session, actor_id=actor.user_id, action=action, target_type=kind, target_id=str(target),
        details={k: str(v) if isinstance(v, Decimal) else v for k, v in fields.items()},
    )  # fmt: skip


def _flush_unique(uow: UnitOfWork, what: str) -> None:
    try:
        uow.session.flush()
    except IntegrityError as exc:
        raise Conflict(f"a {what} with this name already exists", details={"constraint": str(exc.orig)[:200]}) from None


def list_plans(uow: UnitOfWork, actor: Actor, *, cursor: str | None, limit: int | None) -> Page[PlanView]:
    _admin(actor)
    with uow:
        page = keyset_page(uow.session, select(Plan), Plan.sort_order, Plan.id, cursor=cursor, limit=limit)
        items = [row_view(PlanView, p) for p in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def create_plan(uow: UnitOfWork, actor: Actor, fields: Mapping[str, Any]) -> PlanView:
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PLAN_FIELDS}
    with uow:
        plan = Plan(**values)
        _check_plan(plan)
        uow.session.add(plan)
        _flush_unique(uow, "plan")
        _audit_change(uow, actor, "catalogue.plan_create", "plan", plan.id, values)
        view = row_view(PlanView, plan)
        uow.commit()
    return view


def update_plan(uow: UnitOfWork, actor: Actor, plan_id: uuid.UUID, fields: Mapping[str, Any]) -> PlanView:
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PLAN_FIELDS}
    with uow:
        plan = uow.session.execute(select(Plan).where(Plan.id == plan_id).with_for_update()).scalar_one_or_none()
        if plan is None:
            raise NotFound("no such plan", details={"plan_id": str(plan_id)})
        for key, value in values.items():
            setattr(plan, key, value)
        _check_plan(plan)
        plan.updated_at = utcnow()
        _flush_unique(uow, "plan")
        _audit_change(uow, actor, "catalogue.plan_update", "plan", plan.id, values)
        view = row_view(PlanView, plan)
        uow.commit()
    return view


def list_packs(uow: UnitOfWork, actor: Actor, *, cursor: str | None, limit: int | None) -> Page[PackView]:
    _admin(actor)
    with uow:
        page = keyset_page(
            uow.session, select(CreditPack), CreditPack.sort_order, CreditPack.id, cursor=cursor, limit=limit
        )
        items = [row_view(PackView, p) for p in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def create_pack(uow: UnitOfWork, actor: Actor, fields: Mapping[str, Any]) -> PackView:
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PACK_FIELDS}
    with uow:
        pack = CreditPack(**values)
        uow.session.add(pack)
        _flush_unique(uow, "credit pack")
        _audit_change(uow, actor, "catalogue.pack_create", "credit_pack", pack.id, values)
        view = row_view(PackView, pack)
        uow.commit()
    return view


def update_pack(uow: UnitOfWork, actor: Actor, pack_id: uuid.UUID, fields: Mapping[str, Any]) -> PackView:
    _admin(actor)
    values = {k: v for k, v in fields.items() if k in PACK_FIELDS}
    with uow:
        pack = uow.session.execute(
            select(CreditPack).where(CreditPack.id == pack_id).with_for_update()
        ).scalar_one_or_none()
        if pack is None:
            raise NotFound("no such credit pack", details={"pack_id": str(pack_id)})
        for key, value in values.items():
            setattr(pack, key, value)
        pack.updated_at = utcnow()
        _flush_unique(uow, "credit pack")
        _audit_change(uow, actor, "catalogue.pack_update", "credit_pack", pack.id, values)
        view = row_view(PackView, pack)
        uow.commit()
    return view
