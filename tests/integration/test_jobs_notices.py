"""BalanceNotices: a low-balance warning once per balance episode, an expiry warning once per grant."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.notices import BalanceNotices
from tollgate.models.credits import AdminSettings

NOW = datetime(2026, 6, 15, 9, tzinfo=UTC)


def plenty() -> int:
    return 600_000


def mails(db: Callable[[], UnitOfWork], kind: str) -> list[str]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT recipient FROM email_logs WHERE type = :k AND status = 'sent' ORDER BY recipient"),
                {"k": kind},
            ).scalars()
        )


def run(db: Callable[[], UnitOfWork], now: datetime) -> Any:
    return run_job(BalanceNotices(batch_size=2), now=now, remaining_ms=plenty, uow_factory=db, safety_ms=1)


def test_a_fast_burner_is_warned_once_and_again_after_a_top_up(db: Callable[[], UnitOfWork]) -> None:
    # Given chat costs 1 credit, a user who used 70 credits this week with 10 left (empty in a day),
    # and a user who used 7 with 90 left (90 days away)
    with db() as uow:
        uow.session.merge(AdminSettings(id=1, feature_costs={"chat": "1"}))
        burner = make_user(uow.session, email="burner@example.com")
        steady = make_user(uow.session, email="steady@example.com")
        ledger.grant(
            uow.session, burner.id, kind="promo", amount=Decimal("80"), source_key="p1", now=NOW - timedelta(days=6)
        )
        ledger.grant(
            uow.session, steady.id, kind="promo", amount=Decimal("97"), source_key="p2", now=NOW - timedelta(days=6)
        )
        ledger.charge(uow.session, burner.id, operation="chat", quantity=Decimal("70"), now=NOW - timedelta(days=2))
        ledger.charge(uow.session, steady.id, operation="chat", quantity=Decimal("7"), now=NOW - timedelta(days=2))
        uow.commit()
    # When the job runs on two days in a row
    first = run(db, NOW)
    second = run(db, NOW + timedelta(days=1))
    # Then only the burner is warned, once
    assert first.stats == {"low_balance_notices": 1}
    assert not second.stats
    assert mails(db, "low_balance") == ["burner@example.com"]
    # And after a top-up, running low again warns again
    with db() as uow:
        ledger.grant(
            uow.session, burner.id, kind="promo", amount=Decimal("5"), source_key="p3", now=NOW + timedelta(days=2)
        )
        uow.commit()
    third = run(db, NOW + timedelta(days=2, hours=1))
    assert third.stats == {"low_balance_notices": 1}


def test_credits_about_to_expire_are_announced_once_per_grant(db: Callable[[], UnitOfWork]) -> None:
    # Given a pack expiring in 3 days, another in 30 days, and an allowance expiring tomorrow
    with db() as uow:
        user = make_user(uow.session, email="packs@example.com")
        ledger.grant(uow.session, user.id, kind="purchase", amount=Decimal("100"), source_key="order:1",
                     expires_at=NOW + timedelta(days=3), now=NOW - timedelta(days=30))  # fmt: skip
        ledger.grant(uow.session, user.id, kind="purchase", amount=Decimal("100"), source_key="order:2",
                     expires_at=NOW + timedelta(days=30), now=NOW - timedelta(days=30))  # fmt: skip
        ledger.issue_allowance(uow.session, user.id, "2026-06", amount=Decimal("50"), rollover="none",
                               expires_at=NOW + timedelta(days=1), now=NOW - timedelta(days=14))  # fmt: skip
        uow.commit()
    # When the job runs twice
    first = run(db, NOW)
    second = run(db, NOW + timedelta(days=1))
    # Then the soon-expiring pack is announced, once; the allowance never
    assert first.stats == {"expiry_notices": 1}
    assert not second.stats
    assert mails(db, "credits_expiring") == ["packs@example.com"]
