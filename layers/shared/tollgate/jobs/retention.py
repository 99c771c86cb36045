"""Retention: data past its keeping period leaves the database, a bounded batch at a time.

What goes, and when (days are settings; see README "Scheduled jobs"):
- email logs older than `EMAIL_LOG_RETENTION_DAYS` (GDPR: recipients are personal data);
- verification, reset and 2FA tokens, 2FA confirmations and OAuth states, a grace period after they were
  used or expired (`TOKEN_RETENTION_DAYS`); sign-in throttle rows whose window and block are long over;
- sessions `SESSION_RETENTION_DAYS` after they expired or were revoked;
- webhook payloads `WEBHOOK_PAYLOAD_RETENTION_DAYS` after processing: the row stays (its provider and event id
  are what make a late duplicate delivery a no-op), only the payload goes;
- AI messages and usage rows past `AI_MESSAGE_RETENTION_DAYS` / `AI_USAGE_RETENTION_DAYS`, and conversations left
  without messages;
- the scheduled jobs' own cursors after `JOB_CURSOR_RETENTION_DAYS`;
- outbox deliveries DELIVERED or DEAD longer ago than `OUTBOX_RETENTION_DAYS`, then the events older than that
  left with no delivery at all: never an event not yet fanned out or with a delivery still PENDING. An event with
  a dedupe key stays (its deliveries go): it is what makes a repeated emit a no-op (one credits.low per balance
  episode, one purchase.completed per order), and there are only as many as there are grants and payments;
- files soft-deleted longer ago than `FILE_RESTORE_DAYS`, and uploads never completed within
  `FILE_UPLOAD_COMPLETE_MINUTES`, each 15 minutes more (files.PURGE_MARGIN: a restore or completion admitted
  inside its window has committed by then): their objects leave the store, then their rows go. The step only
  reads which (no lock); the store is called after the step's transaction has committed, and each row is
  deleted only if it still qualifies.
The ledger is never touched: credit_transactions is kept forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.config import Settings, get_settings
from tollgate.jobs.periods import daily
from tollgate.jobs.runner import Step

if TYPE_CHECKING:
    from tollgate.storage import Storage

FILES_SWEEP = "storage_objects"


@dataclass(frozen=True, slots=True)
class Sweep:
    name: str
    sql: str  # removes at most :limit rows older than :cutoff; its rowcount is what it removed
    days: int


def _delete(table: str, condition: str, key: str = "id") -> str:
    return (
        f"DELETE FROM {table} WHERE {key} IN "  # identifiers are this module's constants
        f"(SELECT {key} FROM {table} WHERE {condition} LIMIT :limit)"
    )


def sweeps(settings: Settings) -> tuple[Sweep, ...]:
    token_days = settings.token_retention_days
    return (
        Sweep("email_logs", _delete("email_logs", "created_at < :cutoff"), settings.email_log_retention_days),
        Sweep(
            "verification_tokens",
            _delete("verification_tokens", "coalesce(used_at, expires_at) < :cutoff OR expires_at < :cutoff"),
            token_days,
        ),
        Sweep(
            "password_reset_tokens",
            _delete("password_reset_tokens", "coalesce(used_at, expires_at) < :cutoff OR expires_at < :cutoff"),
            token_days,
        ),
        Sweep(
            "two_factor_tokens",
            _delete("two_factor_tokens", "coalesce(used_at, expires_at) < :cutoff OR expires_at < :cutoff"),
            token_days,
        ),
        Sweep("two_factor_confirmations", _delete("two_factor_confirmations", "expires_at < :cutoff"), token_days),
        Sweep("oauth_states", _delete("oauth_states", "expires_at < :cutoff"), token_days),
        Sweep(
            "auth_throttles",
            "DELETE FROM auth_throttles WHERE (scope, key) IN (SELECT scope, key FROM auth_throttles "
            "WHERE updated_at < :cutoff AND coalesce(blocked_until, updated_at) < :cutoff LIMIT :limit)",
            token_days,
        ),
        Sweep(
            "sessions",
            _delete("sessions", "expires_at < :cutoff OR revoked_at < :cutoff"),
            settings.session_retention_days,
        ),
        Sweep(
            "webhook_payloads",
            "UPDATE webhook_events SET payload = NULL WHERE id IN (SELECT id FROM webhook_events "
            "WHERE payload IS NOT NULL AND status IN ('processed', 'ignored', 'rejected') "
            "AND coalesce(processed_at, received_at) < :cutoff LIMIT :limit)",
            settings.webhook_payload_retention_days,
        ),
        Sweep("ai_messages", _delete("ai_messages", "created_at < :cutoff"), settings.ai_message_retention_days),
        Sweep(
            "ai_conversations",
            _delete(
                "ai_conversations",
                "updated_at < :cutoff AND NOT EXISTS "
                "(SELECT 1 FROM ai_messages m WHERE m.conversation_id = ai_conversations.id)",
            ),
            settings.ai_message_retention_days,
        ),
        Sweep("ai_usage", _delete("ai_usage", "created_at < :cutoff"), settings.ai_usage_retention_days),
        Sweep(
            "outbox_deliveries",
            _delete(
                "outbox_deliveries",
                "status IN ('DELIVERED', 'DEAD') AND coalesce(delivered_at, last_attempt_at, created_at) < :cutoff",
            ),
            settings.outbox_retention_days,
        ),
        Sweep(
            "outbox_events",
            _delete(
                "outbox_events",
                "dispatched_at IS NOT NULL AND dedupe_key IS NULL AND created_at < :cutoff AND NOT EXISTS "
                "(SELECT 1 FROM outbox_deliveries d WHERE d.event_id = outbox_events.id)",
            ),
            settings.outbox_retention_days,
        ),
        Sweep(
            "job_cursors",
            "DELETE FROM job_cursors WHERE (job_name, period_key) IN (SELECT job_name, period_key FROM job_cursors "
            "WHERE completed_at < :cutoff LIMIT :limit)",
            settings.job_cursor_retention_days,
        ),
    )


class Retention:
    """Works through the sweeps in order; the cursor names the sweep in progress."""

    name = "Retention"

    def __init__(
        self, settings: Settings | None = None, batch_size: int = 1000, storage: Storage | None = None
    ) -> None:
        self.settings = settings or get_settings()
        self.sweeps = sweeps(self.settings)
        self.batch_size = batch_size
        self._storage = storage

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sweeps] + [FILES_SWEEP]

    def _files_step(self, session: Session, now: datetime) -> Step:
        from tollgate.db import UnitOfWork
        from tollgate.services import files
        from tollgate.storage import get_storage

        storage = self._storage or get_storage()
        refs = files.purgeable(session, self.settings, storage, now, self.batch_size)
        done = len(refs) < self.batch_size

        def remove() -> None:
            files.purge(UnitOfWork(), storage, refs, condition=files.purgeable_condition(self.settings, now))

        return Step(
            cursor=None if done else FILES_SWEEP,
            processed=len(refs),
            counts={FILES_SWEEP: len(refs)} if refs else {},
            done=done,
            after_commit=remove if refs else None,
        )

    def period_key(self, now: datetime) -> str:
        return daily(now)

    def step(self, session: Session, now: datetime, cursor: str | None) -> Step:
        names = self.names
        index = names.index(cursor) if cursor in names else 0
        if names[index] == FILES_SWEEP:
            return self._files_step(session, now)
        sweep = self.sweeps[index]
        removed = session.execute(
            text(sweep.sql), {"cutoff": now - timedelta(days=sweep.days), "limit": self.batch_size}
        ).rowcount  # type: ignore[attr-defined]
        if removed < self.batch_size:  # this sweep is finished: the next step starts the next one
            index += 1
        done = index >= len(names)
        return Step(
            cursor=None if done else names[index],
            processed=removed,
            counts={sweep.name: removed} if removed else {},
            done=done,
        )
