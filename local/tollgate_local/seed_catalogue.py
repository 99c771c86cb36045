"""Seed loaders for the credits catalogue: `plans`, `credit_packs` and `feature_costs` sections of seed.yaml.

Each loader only adds what is missing (a plan by tier, a pack by name, a cost by operation): seeding twice
changes nothing, and a restart with `--seed` never overwrites what an admin changed since.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select, text

from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.models.credits import AdminSettings, CreditPack, Plan
from tollgate_local.seed import loader

PLAN_DECIMALS = ("monthly_credits", "rollover_cap", "price_monthly", "price_yearly")
PACK_DECIMALS = ("credits", "price")


def _rows(section: str, content: Any) -> list[dict[str, Any]]:
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(item, dict) for item in content):
        raise ValueError(f"seed section {section!r} must be a list of mappings")
    return [dict(item) for item in content]


def _decimals(row: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    for name in names:
        if row.get(name) is not None:
            row[name] = Decimal(str(row[name]))
    return row


@loader("plans")
def load_plans(uow: UnitOfWork, content: Any) -> int:
    written = 0
    for index, row in enumerate(_rows("plans", content)):
        existing = uow.session.execute(select(Plan.id).where(Plan.tier == row["tier"])).first()
        if existing is not None:
            continue
        row.setdefault("sort_order", index)
        uow.session.add(Plan(**_decimals(row, PLAN_DECIMALS)))
        uow.session.flush()
        written += 1
    return written


@loader("credit_packs")
def load_credit_packs(uow: UnitOfWork, content: Any) -> int:
    written = 0
    for index, row in enumerate(_rows("credit_packs", content)):
        existing = uow.session.execute(select(CreditPack.id).where(CreditPack.name == row["name"])).first()
        if existing is not None:
            continue
        row.setdefault("sort_order", index)
        uow.session.add(CreditPack(**_decimals(row, PACK_DECIMALS)))
        uow.session.flush()
        written += 1
    return written


@loader("feature_costs")
def load_feature_costs(uow: UnitOfWork, content: Any) -> int:
    if content is None:
        return 0
    if not isinstance(content, dict):
        raise ValueError("seed section 'feature_costs' must map operation -> cost")
    uow.session.execute(text("INSERT INTO admin_settings (id) VALUES (1) ON CONFLICT DO NOTHING"))
    settings = uow.session.execute(select(AdminSettings).where(AdminSettings.id == 1).with_for_update()).scalar_one()
    costs = dict(settings.feature_costs or {})
    written = 0
    for operation, cost in content.items():
        if operation in costs:
            continue
        costs[str(operation)] = format(ledger.credits(Decimal(str(cost)), str(operation), allow_zero=True), "f")
        written += 1
    if written:
        settings.feature_costs = costs
        uow.session.flush()
    return written


@loader("credit_settings")
def load_credit_settings(uow: UnitOfWork, content: Any) -> int:
    """The purchased-credits policy of a fresh local database, unless an admin has ever set it.

    `allow_bonus_auto_use_toggle: false` means a bought pack is spent once the free credits run out; an admin
    who wants seed 001's per-user "extra usage" toggle turns it on (PUT /admin/credits/settings), and from then
    on seeding leaves the policy alone (the audit log remembers the choice).
    """
    if content is None:
        return 0
    if not isinstance(content, dict) or set(content) - {"allow_bonus_auto_use_toggle"}:
        raise ValueError("seed section 'credit_settings' takes only allow_bonus_auto_use_toggle")
    if "allow_bonus_auto_use_toggle" not in content:
        return 0
    uow.session.execute(text("INSERT INTO admin_settings (id) VALUES (1) ON CONFLICT DO NOTHING"))
    changed = uow.session.execute(
        text(
            "UPDATE admin_settings SET allow_bonus_auto_use_toggle = :value WHERE id = 1"
            " AND allow_bonus_auto_use_toggle IS DISTINCT FROM :value"
            " AND NOT EXISTS (SELECT 1 FROM audit_logs WHERE action = 'credits.bonus_auto_use_policy')"
        ),
        {"value": bool(content["allow_bonus_auto_use_toggle"])},
    )
    return int(getattr(changed, "rowcount", 0) or 0)
