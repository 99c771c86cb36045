"""Jobs about accounts: trials that ended without a paid plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.jobs.periods import hourly
from tollgate.jobs.runner import BatchJob
from tollgate.payments.statuses import ENTITLED


def has_entitling_subscription(user_column: str) -> str:
    """SQL: the user has a subscription that entitles them to its plan now (the payments rules' own list of
    statuses per provider, e.g. a cancelled Lemon Squeezy plan runs to the end of its paid period)."""
    per_provider = " OR ".join(
        f"(sub.provider = '{provider}' AND sub.status IN ({', '.join(repr(s) for s in sorted(statuses))}))"
        for provider, statuses in sorted(ENTITLED.items())
    )
    return f"EXISTS (SELECT 1 FROM subscriptions sub WHERE sub.user_id = {user_column} AND ({per_provider}))"


def has_paid_purchase(user_column: str) -> str:
    """SQL: the user paid for a pack (not refunded in full). A trial that ended so did not end unpaid: that
    payment unlocked the account, or keeps it open."""
    return (
        f"EXISTS (SELECT 1 FROM purchases p WHERE p.user_id = {user_column} "
        "AND p.status IN ('completed', 'partially_refunded'))"
    )


class TrialExpiry(BatchJob):
    """Seed 001's trials: when `trial_ends_at` has passed and the user has no live subscription, the account is
    locked (status LOCKED, back on the FREE tier, the trial marked used). A payment unlocks it again
    (`tollgate.services.accounts.unlock_after_payment`): a paid plan, or a paid pack, which also keeps the job from
    locking it again."""

    name = "TrialExpiry"

    def period_key(self, now: datetime) -> str:
        return hourly(now)

    def fetch(self, session: Session, now: datetime, cursor: str | None, limit: int) -> Sequence[Any]:
        return session.execute(
            text(
                "SELECT u.id FROM users u WHERE u.trial_ends_at <= :now AND u.status = 'ACTIVE' "
                "AND u.deleted_at IS NULL AND (CAST(:cursor AS uuid) IS NULL OR u.id > CAST(:cursor AS uuid)) "
                f"AND NOT {has_entitling_subscription('u.id')} AND NOT {has_paid_purchase('u.id')} "
                "ORDER BY u.id LIMIT :limit"
            ),
            {"now": now, "cursor": cursor, "limit": limit},
        ).all()

    def process(self, session: Session, now: datetime, items: Sequence[Any]) -> Mapping[str, int]:
        locked = session.execute(
            text(
                "UPDATE users SET status = 'LOCKED', tier = 'FREE', trial_used = true, updated_at = :now "
                "WHERE id = ANY(:ids) AND status = 'ACTIVE'"
            ),
            {"ids": [item.id for item in items], "now": now},
        ).rowcount  # type: ignore[attr-defined]
        return {"accounts_locked": locked}

    def cursor_of(self, item: Any) -> str:
        return str(item.id)
