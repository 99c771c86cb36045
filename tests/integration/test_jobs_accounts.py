"""TrialExpiry: trials that ended without a paid plan lock the account; a live subscription keeps it open."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from tests.support import make_user
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.account_jobs import TrialExpiry
from tollgate.models import User
from tollgate.services.accounts import unlock_after_payment

NOW = datetime(2026, 9, 1, 10, 5, tzinfo=UTC)


def plenty() -> int:
    return 600_000


def user_state(db: Callable[[], UnitOfWork], user_id: Any) -> tuple[str, str, bool]:
    with db() as uow:
        user = uow.session.get(User, user_id)
        assert user is not None
        return user.status, user.tier, user.trial_used


def test_an_ended_trial_without_a_paid_plan_locks_the_account_once(db: Callable[[], UnitOfWork]) -> None:
    # Given three PRO trials: one ended, one ended but the user subscribed, one still running
    with db() as uow:
        ended = make_user(uow.session, tier="PRO", trial_started_at=NOW - timedelta(days=14),
                          trial_ends_at=NOW - timedelta(hours=1))  # fmt: skip
        paid = make_user(uow.session, tier="PRO", trial_started_at=NOW - timedelta(days=14),
                         trial_ends_at=NOW - timedelta(hours=1))  # fmt: skip
        running = make_user(uow.session, tier="PRO", trial_started_at=NOW - timedelta(days=2),
                            trial_ends_at=NOW + timedelta(days=12))  # fmt: skip
        uow.session.execute(
            text(
                "INSERT INTO subscriptions (id, provider, provider_subscription_id, user_id, status) "
                "VALUES (gen_random_uuid(), 'stripe', 'sub_paid', :u, 'active')"
            ),
            {"u": paid.id},
        )
        uow.commit()
    # When the job runs twice in the hour
    report = run_job(TrialExpiry(), now=NOW, remaining_ms=plenty, uow_factory=db, safety_ms=1)
    again = run_job(TrialExpiry(), now=NOW + timedelta(minutes=30), remaining_ms=plenty, uow_factory=db, safety_ms=1)
    # Then only the unpaid ended trial is locked, back on FREE
    assert report.stats == {"accounts_locked": 1} and again.already_complete
    assert user_state(db, ended.id) == ("LOCKED", "FREE", True)
    assert user_state(db, paid.id) == ("ACTIVE", "PRO", False)
    assert user_state(db, running.id) == ("ACTIVE", "PRO", False)


def test_a_payment_unlocks_a_locked_trial() -> None:
    # Given accounts the trial job locked, and one an admin suspended
    locked = User(email="l@example.com", status="LOCKED", trial_used=True)
    suspended = User(email="s@example.com", status="SUSPENDED")
    # When a paid plan arrives for each
    # Then the locked one reopens, the suspended one does not
    assert unlock_after_payment(locked) is True and locked.status == "ACTIVE"
    assert unlock_after_payment(suspended) is False and suspended.status == "SUSPENDED"
