"""MonthlyAllowance: each user's own reset day and time zone, month ends, leap years, rollover, idempotency,
more users than a batch, and a run cut short then resumed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.allowance import MonthlyAllowance
from tollgate.models.credits import Plan
from tollgate.models.jobs import AllowanceSchedule


def utc(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def plenty() -> int:
    return 600_000


def add_plans(db: Callable[[], UnitOfWork]) -> None:
    with db() as uow:
        uow.session.add_all(
            [
                Plan(tier="FREE", name="Free", monthly_credits=Decimal("50"), rollover="none"),
                Plan(
                    tier="PRO",
                    name="Pro",
                    monthly_credits=Decimal("1000"),
                    rollover="capped",
                    rollover_cap=Decimal("300"),
                ),
            ]
        )
        uow.commit()


def signed_up(db: Callable[[], UnitOfWork], created_at: datetime, **fields: Any) -> Any:
    with db() as uow:
        user = make_user(uow.session, created_at=created_at, **fields)
        uow.commit()
        return user.id


def run(db: Callable[[], UnitOfWork], now: datetime, batch_size: int = 1000, remaining: Callable[[], int] = plenty):
    return run_job(
        MonthlyAllowance(batch_size=batch_size), now=now, remaining_ms=remaining, uow_factory=db, safety_ms=1
    )


def allowances(db: Callable[[], UnitOfWork], user_id: Any) -> list[tuple[str, Decimal]]:
    with db() as uow:
        rows = uow.session.execute(
            text(
                "SELECT metadata->>'period' AS period, amount FROM credit_grants "
                "WHERE user_id = :u AND kind = 'allowance' ORDER BY created_at"
            ),
            {"u": user_id},
        ).all()
        return [(r.period, Decimal(r.amount)) for r in rows]


def balance(db: Callable[[], UnitOfWork], user_id: Any) -> Decimal:
    with db() as uow:
        value = uow.session.execute(text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": user_id})
        return Decimal(value.scalar_one())


def test_a_new_user_gets_the_current_periods_allowance_once(db: Callable[[], UnitOfWork]) -> None:
    # Given a FREE user who signed up on the 15th
    add_plans(db)
    user = signed_up(db, utc("2026-01-15T09:00:00"))
    # When the job runs twice in the same hour, and again later that month
    first = run(db, utc("2026-01-20T10:00:00"))
    second = run(db, utc("2026-01-20T10:30:00"))
    later = run(db, utc("2026-02-01T10:00:00"))
    # Then the period starting on the 15th got its allowance exactly once
    assert first.stats["allowances_issued"] == 1
    assert second.already_complete
    assert later.processed == 0
    assert allowances(db, user) == [("2026-01-15", Decimal("50"))]
    with db() as uow:
        schedule = uow.session.get(AllowanceSchedule, user)
        assert schedule is not None and schedule.next_reset_at == utc("2026-02-15T00:00:00")


def test_the_31st_resets_on_the_last_day_of_february_and_in_leap_years_on_the_29th(
    db: Callable[[], UnitOfWork],
) -> None:
    add_plans(db)
    user = signed_up(db, utc("2027-12-31T12:00:00"))
    run(db, utc("2028-01-01T00:00:00"))  # enrolled: the period of 31 December
    run(db, utc("2028-01-31T00:00:00"))
    run(db, utc("2028-02-29T00:00:00"))  # leap day
    run(db, utc("2028-03-31T00:00:00"))
    keys = [period for period, _ in allowances(db, user)]
    assert keys == ["2027-12-31", "2028-01-31", "2028-02-29", "2028-03-31"]


def test_without_rollover_the_old_allowance_expires_at_the_reset(db: Callable[[], UnitOfWork]) -> None:
    add_plans(db)
    user = signed_up(db, utc("2026-03-01T08:00:00"))
    run(db, utc("2026-03-01T09:00:00"))
    assert balance(db, user) == Decimal("50")
    run(db, utc("2026-04-01T00:00:00"))
    # the unused 50 expired, a fresh 50 came: never 100
    assert balance(db, user) == Decimal("50")
    with db() as uow:
        expired = uow.session.execute(
            text("SELECT count(*) FROM credit_transactions WHERE user_id = :u AND type = 'expiry'"), {"u": user}
        ).scalar_one()
        assert expired == 1


def test_capped_rollover_keeps_at_most_the_cap(db: Callable[[], UnitOfWork]) -> None:
    add_plans(db)
    user = signed_up(db, utc("2026-05-10T08:00:00"), tier="PRO")
    run(db, utc("2026-05-10T09:00:00"))
    run(db, utc("2026-06-10T00:00:00"))
    # 1000 unused -> 300 carried over (the cap) + 1000 new
    assert balance(db, user) == Decimal("1300")


def test_users_reset_at_midnight_in_their_own_time_zone(db: Callable[[], UnitOfWork]) -> None:
    # Given a user in Tokyo who signed up on 1 March local time (28 February 16:00 UTC)
    add_plans(db)
    user = signed_up(db, utc("2026-02-28T16:00:00"), timezone="Asia/Tokyo")
    run(db, utc("2026-02-28T16:30:00"))
    assert allowances(db, user) == [("2026-03-01", Decimal("50"))]
    # When it is 1 April 00:30 in Tokyo (31 March 15:30 UTC), the next period has begun there
    run(db, utc("2026-03-31T15:30:00"))
    assert [p for p, _ in allowances(db, user)] == ["2026-03-01", "2026-04-01"]


def test_subscribers_and_locked_accounts_are_skipped_but_their_schedule_moves_on(
    db: Callable[[], UnitOfWork],
) -> None:
    add_plans(db)
    locked = signed_up(db, utc("2026-01-05T00:00:00"), status="LOCKED")
    subscriber = signed_up(db, utc("2026-01-05T00:00:00"), tier="PRO")
    with db() as uow:
        uow.session.execute(
            text(
                "INSERT INTO subscriptions (id, provider, provider_subscription_id, user_id, status) "
                "VALUES (gen_random_uuid(), 'stripe', 'sub_1', :u, 'active')"
            ),
            {"u": subscriber},
        )
        uow.commit()
    report = run(db, utc("2026-01-06T00:00:00"))
    assert report.stats.get("users_skipped") == 2 and not report.stats.get("allowances_issued")
    assert allowances(db, locked) == [] and allowances(db, subscriber) == []
    with db() as uow:
        assert uow.session.get(AllowanceSchedule, locked).next_reset_at == utc("2026-02-05T00:00:00")  # type: ignore[union-attr]


def test_more_users_than_one_batch_and_a_run_cut_short_then_resumed(db: Callable[[], UnitOfWork]) -> None:
    # Given 25 users and batches of 4
    add_plans(db)
    users = [signed_up(db, utc("2026-07-03T00:00:00")) for _ in range(25)]
    now = utc("2026-07-03T12:00:00")
    # When a run has time for 3 steps only
    budget = iter([600_000] * 3)
    first = run(db, now, batch_size=4, remaining=lambda: next(budget, 0))
    assert first.stopped_for_time and not first.complete
    # And the next run finishes the period
    second = run(db, now + timedelta(minutes=5), batch_size=4)
    assert second.complete
    # Then every user got exactly one allowance
    assert all(allowances(db, u) == [("2026-07-03", Decimal("50"))] for u in users)
    assert first.stats.get("allowances_issued", 0) + second.stats["allowances_issued"] == 25


def test_the_balance_shows_the_users_next_reset(db: Callable[[], UnitOfWork]) -> None:
    # Given a FREE user whose period was issued by the job
    add_plans(db)
    user = signed_up(db, datetime.now(UTC) - timedelta(days=3))
    run(db, datetime.now(UTC))
    # When they read their balance
    body = api_call("GET", "/credits/balance", as_user=user).json
    # Then it shows the allowance and when it resets (their own anchor day, next month)
    with db() as uow:
        schedule = uow.session.get(AllowanceSchedule, user)
        assert schedule is not None
        next_reset = schedule.next_reset_at
    assert body["allowance"] == "50.0000"
    assert datetime.fromisoformat(body["next_reset_at"]) == next_reset
