"""Helpers for the credits tests: costs, users with credits, and a look at the ledger's state."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.models import User

D = Decimal


def set_costs(
    session: Session,
    costs: dict[str, str],
    *,
    plan_costs: dict[str, dict[str, str]] | None = None,
    allow_toggle: bool = True,
) -> None:
    session.execute(text("INSERT INTO admin_settings (id) VALUES (1) ON CONFLICT DO NOTHING"))
    session.execute(
        text(
            "UPDATE admin_settings SET feature_costs = CAST(:costs AS jsonb), "
            "plan_feature_costs = CAST(:plan AS jsonb), allow_bonus_auto_use_toggle = :toggle WHERE id = 1"
        ),
        {"costs": json.dumps(costs), "plan": json.dumps(plan_costs or {}), "toggle": allow_toggle},
    )


def funded_user(
    db: Callable[[], UnitOfWork], credits: str = "100", *, kind: str = "promo", costs: dict[str, str] | None = None,
    **user_fields: Any,
) -> uuid.UUID:  # fmt: skip
    """A committed user holding one grant of `credits` (and the cost table, if given)."""
    with db() as uow:
        if costs is not None:
            set_costs(uow.session, costs)
        user = make_user(uow.session, **user_fields)
        if D(credits) > 0:
            ledger.grant(uow.session, user.id, kind=kind, amount=D(credits), source_key=f"{kind}:seed")
        uow.commit()
        return user.id


def balance(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Decimal:
    with db() as uow:
        value = uow.session.execute(
            text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": user_id}
        ).scalar_one_or_none()
    return value if value is not None else D(0)


def ledger_rows(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT * FROM credit_transactions WHERE user_id = :u ORDER BY created_at, id"), {"u": user_id}
            ).mappings()
        )


def grants(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> dict[str, Any]:
    """source_key -> grant row."""
    with db() as uow:
        rows = uow.session.execute(text("SELECT * FROM credit_grants WHERE user_id = :u"), {"u": user_id}).mappings()
        return {r["source_key"]: dict(r) for r in rows}


def assert_consistent(db: Callable[[], UnitOfWork], user_id: uuid.UUID | None = None) -> None:
    """The ledger invariants hold (reconcile finds nothing)."""
    with db() as uow:
        report = ledger.reconcile(uow.session, user_id)
    assert report.mismatches == [], report.mismatches


def admin(db: Callable[[], UnitOfWork]) -> User:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        return user
