"""AnalyticsRollup: one day's business metrics into `analytics`, upserted per (date, metric, dimension).

Metrics (seed 004's daily metrics):
- `mrr` per currency: paying subscriptions' unit amount x quantity at the end of the day, yearly plans counted
  as a twelfth. Paying means a paid status of any provider (`active`, or `past_due` while the provider still
  retries the charge: it leaves MRR when the provider gives up and cancels), a price above 0 (manual plans and
  free items are not revenue), out of its trial (`trialing`/`on_trial`, or a trial ending after that day), not
  set to cancel at the period's end (it will not recur: churn counts it the day it was canceled) and not ended;
- `active_subscriptions`: subscriptions live (trials included) at the end of the day;
- `new_users`: accounts created that day; `new_customers`: users whose first payment (a completed purchase or
  a subscription) happened that day;
- `churned_subscriptions`: subscriptions that were canceled or ended that day;
- `churn_rate`: a ratio (0.05 is 5%): of the subscriptions paying at the start of the day, the share canceled or
  ended during it (0 when none were paying);
- `revenue` per currency: completed purchases paid that day, less what was refunded of them;
- `credits_granted`, `credits_used`, `credits_expired`: from the ledger rows of that day.
A rerun for the same day overwrites that day's rows with the same figures.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.db.base import new_id
from tollgate.jobs.periods import daily
from tollgate.jobs.runner import Step

LIVE = "('active', 'trialing', 'past_due', 'on_trial')"
# The statuses in which any provider is charging for the subscription (a trial is `trialing`/`on_trial`; Asaas's
# `pending` has not been paid once; Lemon Squeezy's `cancelled` and Clerk's `canceled` will not renew).
PAYING = "('active', 'past_due')"

METRIC_QUERIES: dict[str, str] = {
    "mrr": f"""
        SELECT coalesce(currency, 'usd') AS dimension,
               sum(coalesce(unit_amount, 0) * quantity / CASE WHEN interval = 'year' THEN 12 ELSE 1 END) AS value
        FROM subscriptions
        WHERE status IN {PAYING} AND coalesce(unit_amount, 0) > 0 AND NOT cancel_at_period_end
          AND created_at < :end AND (ended_at IS NULL OR ended_at >= :end) AND (trial_end IS NULL OR trial_end < :end)
        GROUP BY 1""",
    "active_subscriptions": f"""
        SELECT '' AS dimension, count(*) AS value FROM subscriptions
        WHERE status IN {LIVE} AND created_at < :end AND (ended_at IS NULL OR ended_at >= :end)""",
    "new_users": """
        SELECT '' AS dimension, count(*) AS value FROM users WHERE created_at >= :start AND created_at < :end""",
    "new_customers": """
        WITH firsts AS (
            SELECT user_id, min(at) AS first_paid FROM (
                SELECT user_id, coalesce(paid_at, created_at) AS at FROM purchases WHERE status <> 'pending'
                UNION ALL
                SELECT user_id, created_at FROM subscriptions
            ) payments GROUP BY user_id
        )
        SELECT '' AS dimension, count(*) AS value FROM firsts WHERE first_paid >= :start AND first_paid < :end""",
    "churned_subscriptions": """
        SELECT '' AS dimension, count(*) AS value FROM subscriptions
        WHERE coalesce(ended_at, canceled_at) >= :start AND coalesce(ended_at, canceled_at) < :end""",
    # Statuses are today's, so the start-of-day base is: paid, past its trial and not stopped by then, and either
    # still paying or stopped since (what stopped since was live at the start).
    "churn_rate": f"""
        WITH base AS (
            SELECT coalesce(ended_at, canceled_at) AS stopped FROM subscriptions
            WHERE coalesce(unit_amount, 0) > 0 AND created_at < :start AND (trial_end IS NULL OR trial_end <= :start)
              AND (coalesce(ended_at, canceled_at) IS NULL OR coalesce(ended_at, canceled_at) >= :start)
              AND (status IN {PAYING} OR coalesce(ended_at, canceled_at) IS NOT NULL)
        )
        SELECT '' AS dimension,
               coalesce(round(count(*) FILTER (WHERE stopped < :end)::numeric / nullif(count(*), 0), 4), 0) AS value
        FROM base""",
    "revenue": """
        SELECT currency AS dimension, sum(amount - refunded_amount) AS value FROM purchases
        WHERE coalesce(paid_at, created_at) >= :start AND coalesce(paid_at, created_at) < :end
          AND status IN ('completed', 'partially_refunded', 'refunded')
        GROUP BY 1""",
    "credits_granted": """
        SELECT '' AS dimension, coalesce(sum(amount), 0) AS value FROM credit_transactions
        WHERE created_at >= :start AND created_at < :end
          AND type IN ('signup', 'purchase', 'monthly_allowance', 'promo', 'adjustment') AND amount > 0""",
    "credits_used": """
        SELECT '' AS dimension, coalesce(-sum(amount), 0) AS value FROM credit_transactions
        WHERE created_at >= :start AND created_at < :end AND type IN ('usage', 'capture')""",
    "credits_expired": """
        SELECT '' AS dimension, coalesce(-sum(amount), 0) AS value FROM credit_transactions
        WHERE created_at >= :start AND created_at < :end AND type = 'expiry'""",
}

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
    written = 0
    for metric, sql in METRIC_QUERIES.items():
        found = [
            (row.dimension or "", row.value or 0) for row in session.execute(text(sql), {"start": start, "end": end})
        ]
        for dimension, value in found or [("", 0)]:  # a day with nothing still says 0
            session.execute(
                UPSERT,
                {"id": new_id(), "day": day, "metric": metric, "dimension": dimension, "value": value, "now": now},
            )
            written += 1
    return written


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
