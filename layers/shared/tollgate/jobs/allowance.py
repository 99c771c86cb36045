"""MonthlyAllowance: each user's allowance for their new period, on their own reset day.

A user's periods start at local midnight (their `timezone`) on their anchor day (the day of the month they
signed up; the 31st resets on the last day of shorter months). When a period starts, the allowance of their
tier's plan is issued through the ledger, keyed by the period, so it can never be issued twice; the plan's
rollover rule (none, capped, full) decides what happens to what is left of the previous one.

Who is left out (their schedule still moves on): users with a live provider subscription (each paid invoice
grants their allowance, see the payments webhooks; a manual plan is renewed by this job on its own period, see
`tollgate.services.manual_plans.renew_due`), and suspended, locked or deleted accounts. A user who comes
back gets the allowance of the period they come back in, not of the periods they missed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.jobs.account_jobs import has_entitling_subscription
from tollgate.jobs.periods import allowance_period, hourly
from tollgate.jobs.runner import Step
from tollgate.ledger.allowances import AllowanceRequest, issue_allowances

DUE = text(
    f"""
    SELECT s.user_id, s.anchor_day, s.timezone,
           (u.status = 'ACTIVE' AND u.deleted_at IS NULL AND NOT {has_entitling_subscription("u.id")}) AS eligible,
           p.monthly_credits, p.rollover
    FROM allowance_schedules s
    JOIN users u ON u.id = s.user_id
    LEFT JOIN plans p ON p.tier = u.tier AND p.active
    WHERE s.next_reset_at <= :now
    ORDER BY s.next_reset_at, s.user_id
    LIMIT :limit
    FOR UPDATE OF s SKIP LOCKED
    """
)

ADVANCE = text(
    """
    UPDATE allowance_schedules s
    SET next_reset_at = d.next_reset_at, last_period_key = d.period_key, updated_at = :now
    FROM unnest(CAST(:user_ids AS uuid[]), CAST(:next_resets AS timestamptz[]), CAST(:keys AS text[]))
         AS d(user_id, next_reset_at, period_key)
    WHERE s.user_id = d.user_id
    """
)


@cache
def known_zone(name: str | None) -> str:
    """The user's time zone if this runtime knows it, else UTC (a bad value must not stop everyone's allowance)."""
    try:
        ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name or "UTC"


class MonthlyAllowance:
    """Issues every due allowance. Users are enrolled when they are created (a trigger on `users`, see
    migration 0006_jobs): a schedule anchored on their sign-up day, first due at once."""

    name = "MonthlyAllowance"

    def __init__(self, batch_size: int = 1000) -> None:
        self.batch_size = batch_size

    def period_key(self, now: datetime) -> str:
        return hourly(now)

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        # Due users leave the due set as their schedule moves on: each step takes the next batch.
        due = session.execute(DUE, {"now": now, "limit": self.batch_size}).all()
        counts = dict(self.issue(session, now, due))
        # Manual plans (an admin's, no provider to invoice them) renew here, each on its own period.
        from tollgate.services.manual_plans import renew_due

        manual = renew_due(session, now, self.batch_size)
        counts.update({k: v for k, v in (("manual_renewed", manual.renewed), ("manual_ended", manual.ended)) if v})
        done = len(due) < self.batch_size and manual.count < self.batch_size
        return Step(None, len(due) + manual.count, counts, done=done)

    def issue(self, session: Session, now: datetime, due: Sequence[Any]) -> Mapping[str, int]:
        requests: list[AllowanceRequest] = []
        user_ids, next_resets, keys = [], [], []
        for row in due:
            period = allowance_period(row.anchor_day, known_zone(row.timezone), now)
            if row.eligible and row.monthly_credits:
                # Without rollover the allowance lasts its period; with one, the next issue trims it.
                expires_at = period.end if (row.rollover or "none") == "none" else None
                requests.append(AllowanceRequest(row.user_id, period.key, expires_at=expires_at))
            user_ids.append(row.user_id)
            next_resets.append(period.end)
            keys.append(period.key)
        results = issue_allowances(session, requests, now=now)
        if user_ids:
            session.execute(ADVANCE, {"user_ids": user_ids, "next_resets": next_resets, "keys": keys, "now": now})
        issued = sum(1 for result in results if result is not None and result.created)
        return {"allowances_issued": issued, "users_skipped": len(due) - len(requests)}
