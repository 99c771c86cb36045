"""AnalyticsRollup: one day's business metrics into `analytics`, upserted per (date, metric, dimension).

What each metric counts (MRR and who is paying, churn and its rate, revenue, credits) has one definition, in SQL:
`tollgate_analytics_day` (migrations/sql/analytics/tollgate_analytics_day.v1.sql, whose header lists them all),
which answers every metric's rows of a day in one statement. This job only writes them. A rerun for the same day
overwrites that day's rows with the same figures.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.db.base import new_id
from tollgate.jobs.periods import daily
from tollgate.jobs.runner import Step

DAY_FIGURES = text("SELECT metric, dimension, value FROM tollgate_analytics_day(:start, :end)")

UPSERT = text(
    "INSERT INTO analytics (id, day, metric, dimension, value, computed_at) "
    "VALUES (:id, :day, :metric, :dimension, :value, :now) "
    "ON CONFLICT (day, metric, dimension) DO UPDATE SET value = EXCLUDED.value, computed_at = EXCLUDED.computed_at"
)


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), UTC)
    return start, start + timedelta(days=1)


def rollup_day(session: Session, day: date, now: datetime) -> int:
    """Write every metric of `day` (UTC). Returns how many rows were written."""
    start, end = day_bounds(day)
    rows = [
        {"id": new_id(), "day": day, "metric": r.metric, "dimension": r.dimension, "value": r.value, "now": now}
        for r in session.execute(DAY_FIGURES, {"start": start, "end": end})
    ]
    if rows:  # the function answers a row of each metric; an empty list would be no statement at all
        session.execute(UPSERT, rows)
    return len(rows)


class AnalyticsRollup:
    """Rolls up the last complete UTC day (the day before the run's clock)."""

    name = "AnalyticsRollup"
    batch_size = 1

    def period_key(self, now: datetime) -> str:
        return daily(now)

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        day = (now.astimezone(UTC) - timedelta(days=1)).date()
        written = rollup_day(session, day, now)
        return Step(cursor=day.isoformat(), processed=written, counts={"metrics_written": written}, done=True)
