"""Failed sign-in counters per account and per source IP (and wrong discount codes per user and per source IP),
kept in Postgres so every Lambda container sees the same numbers. Past the threshold inside the window, the key
is blocked for a cooling-off period."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select, text, tuple_
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.errors import RateLimited
from tollgate.models.auth import AuthThrottle

# account: failed sign-ins per email; ip: failed sign-ins per source IP; mail: mail-sending requests
# (register, forgot-password) per source IP, failed or not; discount_user / discount_ip: unknown discount codes
# (validate or checkout) per user id and per source IP.
Scope = Literal["account", "ip", "mail", "discount_user", "discount_ip"]


def _limit(scope: Scope) -> int:
    settings = get_settings()
    if scope == "account":
        return settings.login_max_failures_per_account
    if scope == "ip":
        return settings.login_max_failures_per_ip
    if scope == "discount_user":
        return settings.discount_max_failures_per_user
    if scope == "discount_ip":
        return settings.discount_max_failures_per_ip
    return settings.mail_requests_per_ip


def _timing(scope: Scope) -> tuple[int, int]:
    """The window and the cooling-off period of `scope`, in seconds."""
    settings = get_settings()
    if scope in ("discount_user", "discount_ip"):
        return settings.discount_failure_window_seconds, settings.discount_lockout_seconds
    return settings.login_failure_window_seconds, settings.login_lockout_seconds


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


def hold(session: Session, keys: list[tuple[Scope, str]]) -> None:
    """Share-lock the counter rows of `keys` (those that exist) to the end of the transaction: a failure being
    counted on one of them now is waited for, and none can be counted until this transaction ends. One row at a
    time, in the order given (the order `record_failure` is called in), so lockers never wait on each other in a
    cycle; a transaction holding these must not count a failure on them afterwards."""
    for scope, key in keys:
        if key:
            session.execute(
                select(AuthThrottle.scope)
                .where(AuthThrottle.scope == scope, AuthThrottle.key == key)
                .with_for_update(read=True)
            )


def record_failure(session: Session, scope: Scope, key: str | None, now: datetime) -> bool:
    """Count one event for the key (a failure; for `mail`, a request) and block it at the threshold. True when
    this event is the threshold's (the Nth in its window): the audit trail records such a burst once."""
    if not key:
        return False
    window, lockout = _timing(scope)
    floor = now - timedelta(seconds=window)
    blocked = now + timedelta(seconds=lockout)
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
