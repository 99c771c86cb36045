"""BalanceNotices: mail a user once when their recent usage would empty their balance soon, and once per grant
when purchased or promotional credits are about to expire unused.

"Once" is kept in `credit_notices`: a low-balance notice is keyed by the user's latest grant (a top-up starts a
new episode, so they can be warned again), an expiry notice by the grant. Notices are recorded in the step's
transaction and mailed after it commits: at most once, even if the job runs again. Monthly allowances are not
announced (they reset by design).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id
from tollgate.jobs.periods import daily
from tollgate.jobs.runner import Step
from tollgate.ledger.burn_rate import NOTICE_DUE, RECENT_USAGE
from tollgate.mail import OutgoingMail, send_mail

ACCOUNTS = text(
    "SELECT user_id FROM credit_accounts WHERE user_id > coalesce(CAST(:after AS uuid), "
    "'00000000-0000-0000-0000-000000000000') ORDER BY user_id LIMIT :limit"
)

LOW_BALANCE = text(
    f"""
    SELECT a.user_id, u.email, a.balance - a.held AS spendable, used.credits AS used,
           (SELECT max(g.created_at) FROM credit_grants g WHERE g.user_id = a.user_id) AS last_grant_at
    FROM credit_accounts a
    JOIN users u ON u.id = a.user_id
    {RECENT_USAGE}
    WHERE a.user_id = ANY(CAST(:ids AS uuid[])) AND u.deleted_at IS NULL AND u.status = 'ACTIVE'
      AND {NOTICE_DUE}
    """
)

EXPIRING = text(
    """
    SELECT g.user_id, u.email, g.id AS grant_id, g.remaining, g.expires_at
    FROM credit_grants g JOIN users u ON u.id = g.user_id
    WHERE g.user_id = ANY(CAST(:ids AS uuid[])) AND g.status = 'active' AND g.remaining > 0
      AND g.kind <> 'allowance' AND g.expires_at > :now AND g.expires_at <= :until
      AND u.deleted_at IS NULL AND u.status = 'ACTIVE'
    """
)

RECORD = text(
    "INSERT INTO credit_notices (id, user_id, kind, key, details, created_at) "
    "VALUES (:id, :user_id, :kind, :key, CAST(:details AS jsonb), :now) ON CONFLICT DO NOTHING RETURNING id"
)


def _low_balance_mail(row: Any, days: int) -> OutgoingMail:
    spendable = Decimal(row.spendable).normalize()
    return OutgoingMail(
        to=row.email,
        type="low_balance",
        subject="Your credits are running low",
        text=(
            f"At your recent pace your {spendable} remaining credits will run out within {days} days.\n"
            f"Top up or change plan: {get_settings().app_url}/billing\n"
        ),
        user_id=row.user_id,
    )


def _expiring_mail(row: Any) -> OutgoingMail:
    return OutgoingMail(
        to=row.email,
        type="credits_expiring",
        subject="Some of your credits expire soon",
        text=(
            f"{Decimal(row.remaining).normalize()} of your credits expire on "
            f"{row.expires_at:%Y-%m-%d %H:%M} UTC unless you use them.\n{get_settings().app_url}\n"
        ),
        user_id=row.user_id,
        metadata={"grant_id": str(row.grant_id)},
    )


class BalanceNotices:
    name = "BalanceNotices"

    def __init__(self, settings: Settings | None = None, batch_size: int = 500) -> None:
        self.settings = settings or get_settings()
        self.batch_size = batch_size

    def period_key(self, now: datetime) -> str:
        return daily(now)

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        ids = session.execute(ACCOUNTS, {"after": cursor, "limit": self.batch_size}).scalars().all()
        if not ids:
            return Step(cursor, 0, {}, done=True)
        s = self.settings
        mails: list[OutgoingMail] = []
        for row in session.execute(
            LOW_BALANCE,
            {"ids": list(ids), "since": now - timedelta(days=s.burn_rate_days), "burn_days": s.burn_rate_days,
             "notice_days": s.low_balance_notice_days},
        ):  # fmt: skip
            key = (row.last_grant_at or now).isoformat()
            if self._record(session, row.user_id, "low_balance", key, {"spendable": str(row.spendable)}, now):
                mails.append(_low_balance_mail(row, s.low_balance_notice_days))
        for row in session.execute(
            EXPIRING, {"ids": list(ids), "now": now, "until": now + timedelta(days=s.expiry_notice_days)}
        ):
            details = {"remaining": str(row.remaining), "expires_at": row.expires_at.isoformat()}
            if self._record(session, row.user_id, "credits_expiring", str(row.grant_id), details, now):
                mails.append(_expiring_mail(row))
        counts = {
            "low_balance_notices": sum(1 for m in mails if m.type == "low_balance"),
            "expiry_notices": sum(1 for m in mails if m.type == "credits_expiring"),
        }
        return Step(
            cursor=str(ids[-1]),
            processed=len(ids),
            counts={k: v for k, v in counts.items() if v},
            done=len(ids) < self.batch_size,
            after_commit=_sender(mails) if mails else None,
        )

    @staticmethod
    def _record(session: Session, user_id: Any, kind: str, key: str, details: dict[str, str], now: datetime) -> bool:
        inserted = session.execute(
            RECORD,
            {"id": new_id(), "user_id": user_id, "kind": kind, "key": key, "details": json.dumps(details), "now": now},
        ).first()
        return inserted is not None


def _sender(mails: Sequence[OutgoingMail]) -> Callable[[], None]:
    def send() -> None:
        for mail in mails:
            send_mail(UnitOfWork(), mail)

    return send
