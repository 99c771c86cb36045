"""GrantExpiry and LedgerReconciliation on seeded data, through the scheduled Lambda handlers."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text

from tests.support import make_user, project_gateway
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.models.jobs import LedgerMismatch
from tollgate_local.schedules import scheduled_event

NOW = datetime(2026, 2, 28, 23, 30, tzinfo=UTC)


def invoke_schedule(name: str, now: datetime) -> dict[str, Any]:
    gateway = project_gateway()
    schedule = gateway.template.schedules[name]
    result: dict[str, Any] = gateway.runner.invoke(schedule.function_id, scheduled_event(schedule, now))
    return result


def balance_of(db: Callable[[], UnitOfWork], user_id: Any) -> Decimal:
    with db() as uow:
        value = uow.session.execute(
            text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": user_id}
        ).scalar_one()
        return Decimal(value)


def test_grant_expiry_expires_due_grants_once(db: Callable[[], UnitOfWork]) -> None:
    # Given a user with a grant that expired an hour ago and one that expires tomorrow
    with db() as uow:
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="promo", amount=Decimal("5"), source_key="promo:old",
                     expires_at=NOW - timedelta(hours=1), now=NOW - timedelta(days=10))  # fmt: skip
        ledger.grant(uow.session, user.id, kind="promo", amount=Decimal("7"), source_key="promo:new",
                     expires_at=NOW + timedelta(days=1), now=NOW - timedelta(days=10))  # fmt: skip
        uow.commit()
    assert balance_of(db, user.id) == Decimal("12")
    # When the GrantExpiry schedule fires
    report = invoke_schedule("GrantExpiry", NOW)
    # Then the due grant left the balance in one expiry row, the other stayed
    assert report["complete"] and report["processed"] == 1
    assert balance_of(db, user.id) == Decimal("7")
    with db() as uow:
        rows = (
            uow.session.execute(
                text("SELECT amount FROM credit_transactions WHERE user_id = :u AND type = 'expiry'"), {"u": user.id}
            )
            .scalars()
            .all()
        )
        assert [Decimal(r) for r in rows] == [Decimal("-5")]
    # And a second run in the same hour does nothing more
    again = invoke_schedule("GrantExpiry", NOW + timedelta(minutes=20))
    assert again["already_complete"] and balance_of(db, user.id) == Decimal("7")


def test_reconciliation_records_mismatches_and_only_them(db: Callable[[], UnitOfWork]) -> None:
    # Given two healthy accounts and one whose cached balance was tampered with
    with db() as uow:
        users = [make_user(uow.session) for _ in range(3)]
        for u in users:
            ledger.grant(uow.session, u.id, kind="promo", amount=Decimal("3"), source_key=f"promo:{u.id}", now=NOW)
        uow.commit()
    with db() as uow:
        uow.session.execute(
            text("UPDATE credit_accounts SET balance = balance + 1 WHERE user_id = :u"), {"u": users[1].id}
        )
        uow.commit()
    # When the reconciliation runs
    report = invoke_schedule("LedgerReconciliation", NOW)
    # Then every account was checked and exactly the tampered one is recorded
    assert report["stats"] == {"users_checked": 3, "mismatches": 1}
    with db() as uow:
        found = uow.session.scalars(select(LedgerMismatch)).all()
        assert [m.user_id for m in found] == [users[1].id]
        assert "balance != sum(ledger)" in found[0].problems
        assert found[0].figures["balance"] == "4.0000"


def test_hold_expiry_releases_stale_holds_and_keeps_live_ones(db: Callable[[], UnitOfWork]) -> None:
    # Given a user with 10 credits, a hold of 4 that expired and a hold of 3 still live
    with db() as uow:
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="promo", amount=Decimal("10"), source_key="promo:h", now=NOW)
        stale = ledger.hold(uow.session, user.id, amount=Decimal("4"), ttl_seconds=60, now=NOW - timedelta(hours=1))
        live = ledger.hold(uow.session, user.id, amount=Decimal("3"), ttl_seconds=3600, now=NOW)
        uow.commit()
    # When the HoldExpiry schedule fires
    report = invoke_schedule("HoldExpiry", NOW)
    # Then the stale hold is released, the live one is still held
    assert report["stats"] == {"holds_expired": 1}
    with db() as uow:
        statuses: dict[Any, str] = dict(
            uow.session.execute(text("SELECT id, status FROM credit_holds WHERE user_id = :u"), {"u": user.id}).all()
        )
        held = uow.session.execute(text("SELECT held FROM credit_accounts WHERE user_id = :u"), {"u": user.id})
        assert statuses[stale.hold_id] == "expired" and statuses[live.hold_id] == "active"
        assert Decimal(held.scalar_one()) == Decimal("3")
    # And the ledger still reconciles
    with db() as uow:
        assert ledger.reconcile(uow.session, user.id).mismatches == []
