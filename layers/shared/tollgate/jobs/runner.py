"""The batch runner every scheduled job uses.

A job advances in steps; each step runs in its own transaction together with the job's saved cursor, so a
run cut short (the Lambda's remaining time, a crash) resumes at the next step and never redoes one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from tollgate.db import UnitOfWork
from tollgate.models.jobs import JobCursor

# Stop starting steps when less than this is left of the invocation: one step must fit in it.
DEFAULT_SAFETY_MS = 10_000


@dataclass(frozen=True, slots=True)
class Step:
    cursor: str | None  # where the next step starts
    processed: int  # items done in this step
    counts: Mapping[str, int]
    done: bool  # nothing is left in this period
    # Work that must not run inside the step's transaction (mail): run once the step has committed.
    after_commit: Callable[[], None] | None = None


class Job(Protocol):
    name: str
    batch_size: int

    def period_key(self, now: datetime) -> str:
        """Runs with the same key share one cursor: once it is complete, another run in it does nothing."""
        ...

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        """Do the next bounded piece of work after `cursor`, inside the caller's transaction."""
        ...


class BatchJob:
    """A job over items in a stable order: the next `batch_size` items after the cursor are one step."""

    name: str
    batch_size: int = 500

    def period_key(self, now: datetime) -> str:
        raise NotImplementedError

    def fetch(self, session: Session, now: datetime, cursor: str | None, limit: int) -> Sequence[Any]:
        """The next items after `cursor` (in a stable order), at most `limit`."""
        raise NotImplementedError

    def process(self, session: Session, now: datetime, items: Sequence[Any]) -> Mapping[str, int]:
        """Do the work for `items`; return counts to add to the report."""
        raise NotImplementedError

    def cursor_of(self, item: Any) -> str:
        """The cursor value that resumes after `item`."""
        raise NotImplementedError

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        items = self.fetch(session, now, cursor, self.batch_size)
        counts = self.process(session, now, items) if items else {}
        return Step(
            cursor=self.cursor_of(items[-1]) if items else cursor,
            processed=len(items),
            counts=counts,
            done=len(items) < self.batch_size,
        )


@dataclass
class JobReport:
    job: str
    period: str
    now: datetime
    processed: int = 0
    batches: int = 0
    complete: bool = False
    already_complete: bool = False
    stopped_for_time: bool = False
    stats: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "period": self.period,
            "now": self.now.isoformat(),
            "processed": self.processed,
            "batches": self.batches,
            "complete": self.complete,
            "already_complete": self.already_complete,
            "stopped_for_time": self.stopped_for_time,
            "stats": dict(self.stats),
        }


def scheduled_now(event: Mapping[str, Any] | None) -> datetime:
    """The job's clock: `now` from a manual invocation's input, the schedule's own time (EventBridge puts it
    in `time`), or the wall clock."""
    for key in ("now", "time"):
        value = (event or {}).get(key)
        if isinstance(value, str) and value:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.now(UTC)


def _lock_cursor(session: Session, job: str, period: str) -> JobCursor:
    # Created if missing, then locked: two overlapping runs (a retry, a manual invoke) take turns per step
    # and each continues from the other's cursor, so nothing is done twice.
    session.execute(insert(JobCursor).values(job_name=job, period_key=period).on_conflict_do_nothing())
    return session.scalars(
        select(JobCursor).where(JobCursor.job_name == job, JobCursor.period_key == period).with_for_update()
    ).one()


def run_job(
    job: Job,
    *,
    now: datetime,
    remaining_ms: Callable[[], int],
    uow_factory: Callable[[], UnitOfWork] = UnitOfWork,
    safety_ms: int = DEFAULT_SAFETY_MS,
) -> JobReport:
    period = job.period_key(now)
    report = JobReport(job=job.name, period=period, now=now)
    first = True
    while not report.complete:
        if remaining_ms() < safety_ms:
            report.stopped_for_time = True
            break
        with uow_factory() as uow:
            state = _lock_cursor(uow.session, job.name, period)
            if state.completed_at is not None:
                report.already_complete = first
                report.complete = True
                break
            if first:
                state.runs += 1
                first = False
            step = job.step(uow.session, now, state.cursor)
            state.cursor = step.cursor
            if step.processed:
                state.batches += 1
                state.processed += step.processed
                report.batches += 1
                report.processed += step.processed
            if step.counts:
                merged = dict(state.stats or {})
                for key, value in step.counts.items():
                    merged[key] = int(merged.get(key, 0)) + int(value)
                    report.stats[key] = report.stats.get(key, 0) + int(value)
                state.stats = merged
            if step.done:
                state.completed_at = datetime.now(UTC)
                report.complete = True
            uow.commit()
        if step.after_commit is not None:
            step.after_commit()
    return report
