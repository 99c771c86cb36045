"""The batch runner: batches with a cursor, idempotent per period, cut short by the time guard and resumed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from tests.support import make_user
from tollgate.db import UnitOfWork
from tollgate.jobs import BatchJob, run_job, scheduled_now
from tollgate.models import User
from tollgate.models.jobs import JobCursor

NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)


class TouchUsers(BatchJob):
    """A job over users in id order that records which user each batch saw (and marks them)."""

    name = "TouchUsers"

    def __init__(self, batch_size: int = 3) -> None:
        self.batch_size = batch_size
        self.seen: list[str] = []

    def period_key(self, now: datetime) -> str:
        return now.strftime("%Y-%m-%d")

    def fetch(self, session: Session, now: datetime, cursor: str | None, limit: int) -> Sequence[Any]:
        query = select(User.id).order_by(User.id).limit(limit)
        if cursor:
            query = query.where(User.id > cursor)
        return session.execute(query).all()

    def process(self, session: Session, now: datetime, items: Sequence[Any]) -> Mapping[str, int]:
        for item in items:
            self.seen.append(str(item.id))
            session.execute(
                text("UPDATE users SET downgrade_count = downgrade_count + 1 WHERE id = :id"), {"id": item.id}
            )
        return {"touched": len(items)}

    def cursor_of(self, item: Any) -> str:
        return str(item.id)


def seed_users(db: Callable[[], UnitOfWork], count: int) -> None:
    with db() as uow:
        for _ in range(count):
            make_user(uow.session)
        uow.commit()


def touch_counts(db: Callable[[], UnitOfWork]) -> list[int]:
    with db() as uow:
        return list(uow.session.scalars(select(User.downgrade_count).order_by(User.id)))


def plenty() -> int:
    return 60_000


def test_works_through_more_users_than_one_batch(db: Callable[[], UnitOfWork]) -> None:
    # Given 10 users and a batch size of 3
    seed_users(db, 10)
    job = TouchUsers()
    # When the job runs
    report = run_job(job, now=NOW, remaining_ms=plenty, uow_factory=db, safety_ms=1)
    # Then every user is done exactly once, in 4 batches
    assert report.complete and report.processed == 10 and report.batches == 4
    assert report.stats == {"touched": 10}
    assert touch_counts(db) == [1] * 10


def test_a_second_run_in_the_same_period_does_nothing(db: Callable[[], UnitOfWork]) -> None:
    seed_users(db, 5)
    run_job(TouchUsers(), now=NOW, remaining_ms=plenty, uow_factory=db, safety_ms=1)
    again = run_job(TouchUsers(), now=NOW.replace(hour=23), remaining_ms=plenty, uow_factory=db, safety_ms=1)
    assert again.already_complete and again.processed == 0
    assert touch_counts(db) == [1] * 5
    # a new period starts over
    next_day = run_job(TouchUsers(), now=NOW.replace(day=30, month=4), remaining_ms=plenty, uow_factory=db, safety_ms=1)
    assert next_day.processed == 5 and touch_counts(db) == [2] * 5


def test_a_run_cut_short_by_the_time_guard_resumes_where_it_stopped(db: Callable[[], UnitOfWork]) -> None:
    # Given 10 users and an invocation with time for two batches only
    seed_users(db, 10)
    budget = iter([60_000, 60_000, 5])

    def remaining() -> int:
        return next(budget, 5)

    first = run_job(TouchUsers(), now=NOW, remaining_ms=remaining, uow_factory=db, safety_ms=1000)
    # Then it stops after two batches, with its cursor saved
    assert first.stopped_for_time and not first.complete and first.processed == 6
    with db() as uow:
        cursor = uow.session.get(JobCursor, ("TouchUsers", "2026-03-31"))
        assert cursor is not None and cursor.processed == 6 and cursor.completed_at is None
    # When the next run comes
    second = run_job(TouchUsers(), now=NOW, remaining_ms=plenty, uow_factory=db, safety_ms=1000)
    # Then it does the rest, and nobody was done twice
    assert second.complete and second.processed == 4
    assert touch_counts(db) == [1] * 10


def test_overlapping_runs_never_do_an_item_twice(db: Callable[[], UnitOfWork]) -> None:
    # Given 30 users and two runs of the same job started at once (a retry racing a manual invoke)
    seed_users(db, 30)
    jobs = [TouchUsers(batch_size=2), TouchUsers(batch_size=2)]
    threads = [
        threading.Thread(
            target=run_job, args=(job,), kwargs={"now": NOW, "remaining_ms": plenty, "uow_factory": db, "safety_ms": 1}
        )
        for job in jobs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then between them every user was done exactly once
    assert sorted(jobs[0].seen + jobs[1].seen) == sorted(set(jobs[0].seen + jobs[1].seen))
    assert touch_counts(db) == [1] * 30


def test_the_clock_comes_from_the_scheduled_event() -> None:
    assert scheduled_now({"time": "2028-02-29T00:00:00Z"}) == datetime(2028, 2, 29, tzinfo=UTC)
    assert scheduled_now({"now": "2026-01-31T23:00:00+00:00"}) == datetime(2026, 1, 31, 23, tzinfo=UTC)
    assert scheduled_now({}).tzinfo is not None
