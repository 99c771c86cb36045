"""Failed sign-in counters per account and per source IP, kept in Postgres so every Lambda container sees
the same numbers. Past the threshold inside the window, the key is blocked for a cooling-off period."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.errors import RateLimited
from tollgate.models.auth import AuthThrottle

# account: failed sign-ins per email; ip: failed sign-ins per source IP; mail: mail-sending requests
# (register, forgot-password) per source IP, failed or not.
Scope = Literal["account", "ip", "mail"]


def _limit(scope: Scope) -> int:
    settings = get_settings()
    if scope == "account":
        return settings.login_max_failures_per_account
    if scope == "ip":
        return settings.login_max_failures_per_ip
    return settings.mail_requests_per_ip


def check(session: Session, keys: list[tuple[Scope, str]], now: datetime) -> None:
    """Raise 429 `too_many_attempts` if any key is cooling off."""
    wanted = [(scope, key) for scope, key in keys if key]
    if not wanted:
        return
    rows = (
        session.execute(
            select(AuthThrottle.blocked_until).where(
                tuple_(AuthThrottle.scope, AuthThrottle.key).in_(wanted), AuthThrottle.blocked_until > now
            )
        )
        .scalars()
        .all()
    )
    if rows:
        until = max(r for r in rows if r is not None)
        retry_after = max(1, int((until - now).total_seconds()))
        raise RateLimited("too many failed attempts; try again later", details={"retry_after_seconds": retry_after})


def record_failure(session: Session, scope: Scope, key: str | None, now: datetime) -> bool:
    """Count one event for the key (a failure; for `mail`, a request) and block it at the threshold. True when
    this event is the threshold's (the Nth in its window): the audit trail records such a burst once."""
    if not key:
        return False
    settings = get_settings()
    floor = now - timedelta(seconds=settings.login_failure_window_seconds)
    blocked = now + timedelta(seconds=settings.login_lockout_seconds)
    blocked_now = session.execute(
        text(
            """
            INSERT INTO auth_throttles AS t (scope, key, failures, window_started_at, blocked_until, updated_at)
            VALUES (:scope, :key, 1, :now, CASE WHEN :limit <= 1 THEN CAST(:blocked AS timestamptz) END, :now)
            ON CONFLICT (scope, key) DO UPDATE SET
                failures = CASE WHEN t.window_started_at < :floor
                                  OR (t.blocked_until IS NOT NULL AND t.blocked_until <= :now)
                                THEN 1 ELSE t.failures + 1 END,
                window_started_at = CASE WHEN t.window_started_at < :floor
                                           OR (t.blocked_until IS NOT NULL AND t.blocked_until <= :now)
                                         THEN :now ELSE t.window_started_at END,
                blocked_until = CASE
                    WHEN t.window_started_at < :floor
                         OR (t.blocked_until IS NOT NULL AND t.blocked_until <= :now)
                        THEN CASE WHEN :limit <= 1 THEN CAST(:blocked AS timestamptz) END
                    WHEN t.failures + 1 >= :limit THEN CAST(:blocked AS timestamptz)
                    ELSE t.blocked_until END,
                updated_at = :now
            RETURNING t.failures = GREATEST(:limit, 1) AS blocked_now
            """
        ),
        {"scope": scope, "key": key, "now": now, "floor": floor, "blocked": blocked, "limit": _limit(scope)},
    ).scalar()
    return bool(blocked_now)


def clear(session: Session, scope: Scope, key: str | None) -> None:
    if key:
        session.execute(delete(AuthThrottle).where(AuthThrottle.scope == scope, AuthThrottle.key == key))
