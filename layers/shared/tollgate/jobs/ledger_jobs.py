"""Jobs that keep the ledger true while nobody calls: grant and hold expiry, and reconciliation."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate import ledger
from tollgate.jobs.periods import daily, hourly
from tollgate.jobs.runner import BatchJob, Step
from tollgate.models.jobs import LedgerMismatch


class _DueSetJob:
    """A job that drains a due set through a ledger function taking `limit`: what it handles leaves the set,
    so each step simply takes the next batch (no cursor), and the period ends when a batch comes back short."""

    name: str
    stat: str
    drain: Callable[..., int]

    def __init__(self, batch_size: int = 500) -> None:
        self.batch_size = batch_size

    def period_key(self, now: datetime) -> str:
        return hourly(now)

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        handled = self.drain(session, now=now, limit=self.batch_size)
        return Step(None, handled, {self.stat: handled} if handled else {}, done=handled < self.batch_size)


class GrantExpiry(_DueSetJob):
    """Expire every grant whose `expires_at` has passed: one `expiry` ledger row per grant with credits left."""

    name = "GrantExpiry"
    stat = "grants_expired"
    drain = staticmethod(ledger.expire_due_grants)


class HoldExpiry(_DueSetJob):
    """Release every hold past its expiry: the held credits go back to the grants they came from."""

    name = "HoldExpiry"
    stat = "holds_expired"
    drain = staticmethod(ledger.expire_holds)

    def period_key(self, now: datetime) -> str:
        return now.strftime("%Y-%m-%dT%H:%M")  # it runs every few minutes


class LedgerReconciliation(BatchJob):
    """Check `balance == sum(grants) == sum(ledger)` for every account; record each mismatch found."""

    name = "LedgerReconciliation"

    def period_key(self, now: datetime) -> str:
        return daily(now)

    def fetch(self, session: Session, now: datetime, cursor: str | None, limit: int) -> Sequence[Any]:
        return session.execute(
            text(
                "SELECT user_id FROM credit_accounts "
                "WHERE CAST(:cursor AS uuid) IS NULL OR user_id > CAST(:cursor AS uuid) ORDER BY user_id LIMIT :limit"
            ),
            {"cursor": cursor, "limit": limit},
        ).all()

    def process(self, session: Session, now: datetime, items: Sequence[Any]) -> Mapping[str, int]:
        report = ledger.reconcile(session, user_ids=[item.user_id for item in items])  # one query per batch
        for found in report.mismatches:
            session.add(
                LedgerMismatch(
                    user_id=found.user_id,
                    detected_at=now,
                    problems=list(found.problems),
                    figures={
                        "balance": str(found.balance),
                        "ledger_sum": str(found.ledger_sum),
                        "grants_remaining": str(found.grants_remaining),
                        "debt": str(found.debt),
                        "held": str(found.held),
                        "active_holds": str(found.active_holds),
                    },
                )
            )
        mismatches = len(report.mismatches)
        return {"users_checked": len(items), "mismatches": mismatches}

    def cursor_of(self, item: Any) -> str:
        return str(item.user_id)
