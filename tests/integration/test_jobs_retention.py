"""Retention: what is past its keeping period goes, a batch at a time; what is not, stays; the ledger is never
touched; webhook events keep their row (for dedupe) and lose only their payload."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import func, select, text

from tests.support import make_user
from tollgate import ledger
from tollgate.config import Settings
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.retention import Retention
from tollgate.models.auth import AuthSession, EmailLog, VerificationToken
from tollgate.models.payments import WebhookEvent
from tollgate.models.rag import AiConversation, AiMessage

NOW = datetime(2026, 8, 1, 4, 0, tzinfo=UTC)


def plenty() -> int:
    return 600_000


def count(db: Callable[[], UnitOfWork], model: type) -> int:
    with db() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(model)) or 0)


def test_removes_only_what_is_past_retention_and_never_the_ledger(db: Callable[[], UnitOfWork]) -> None:
    old, recent = NOW - timedelta(days=400), NOW - timedelta(days=1)
    with db() as uow:
        s = uow.session
        user = make_user(s)
        ledger.grant(s, user.id, kind="promo", amount=Decimal("5"), source_key="old-grant", now=old)
        for i, when in enumerate([old, old, recent]):
            s.add(EmailLog(user_id=user.id, recipient="a@example.com", type="verify_email", subject="s",
                           status="sent", provider="local", created_at=when + timedelta(seconds=i)))  # fmt: skip
        # a token used long ago, one expired long ago, one still valid
        s.add(VerificationToken(user_id=user.id, email="a@example.com", token_hash="h1", expires_at=old, used_at=old))
        s.add(VerificationToken(user_id=user.id, email="a@example.com", token_hash="h2", expires_at=old))
        s.add(
            VerificationToken(
                user_id=user.id, email="a@example.com", token_hash="h3", expires_at=NOW + timedelta(hours=5)
            )
        )
        # an expired session, a revoked one, a live one
        s.add(AuthSession(family_id=uuid.uuid4(), user_id=user.id, refresh_token_hash="s1", expires_at=old))
        s.add(AuthSession(family_id=uuid.uuid4(), user_id=user.id, refresh_token_hash="s2",
                      expires_at=NOW + timedelta(days=9), revoked_at=old))  # fmt: skip
        s.add(
            AuthSession(
                family_id=uuid.uuid4(), user_id=user.id, refresh_token_hash="s3", expires_at=NOW + timedelta(days=9)
            )
        )
        # webhook events: processed long ago, processed yesterday, failed long ago (kept for replay)
        events = [("evt_old", "processed", old), ("evt_new", "processed", recent), ("evt_failed", "failed", old)]
        for event_id, status, when in events:
            s.add(
                WebhookEvent(
                    provider="stripe",
                    event_id=event_id,
                    type="checkout.session.completed",
                    payload={"id": event_id},
                    status=status,
                    received_at=when,
                    processed_at=when,
                )
            )
        # an old conversation (all its messages old) and a current one with an old first message
        stale = AiConversation(user_id=user.id, title="t", model="m", created_at=old, updated_at=old)
        live = AiConversation(user_id=user.id, title="t", model="m", created_at=old, updated_at=recent)
        s.add_all([stale, live])
        s.flush()
        s.add(AiMessage(conversation_id=stale.id, position=0, role="user", content="q", created_at=old))
        s.add(AiMessage(conversation_id=live.id, position=0, role="user", content="q", created_at=old))
        s.add(AiMessage(conversation_id=live.id, position=1, role="user", content="q2", created_at=recent))
        uow.commit()
    # When the job runs with batches of 1 (every sweep takes several steps), twice
    job = Retention(Settings(_env_file=None), batch_size=1)
    report = run_job(job, now=NOW, remaining_ms=plenty, uow_factory=db, safety_ms=1)
    again = run_job(
        Retention(Settings(_env_file=None), batch_size=1), now=NOW, remaining_ms=plenty, uow_factory=db, safety_ms=1
    )
    # Then exactly the expired data went
    assert report.complete and again.already_complete
    assert report.stats == {
        "email_logs": 2, "verification_tokens": 2, "sessions": 2, "webhook_payloads": 1,
        "ai_messages": 2, "ai_conversations": 1,
    }  # fmt: skip
    assert count(db, EmailLog) == 1 and count(db, VerificationToken) == 1 and count(db, AuthSession) == 1
    assert count(db, AiConversation) == 1 and count(db, AiMessage) == 1
    with db() as uow:
        payloads: dict[str, bool] = dict(
            uow.session.execute(text("SELECT event_id, payload IS NOT NULL FROM webhook_events")).all()
        )
        ledger_rows = uow.session.execute(text("SELECT count(*) FROM credit_transactions")).scalar_one()
    assert payloads == {"evt_old": False, "evt_new": True, "evt_failed": True}
    assert ledger_rows == 1


def test_a_run_cut_short_resumes_in_the_same_sweep(db: Callable[[], UnitOfWork]) -> None:
    with db() as uow:
        user = make_user(uow.session)
        for i in range(5):
            uow.session.add(EmailLog(user_id=user.id, recipient="b@example.com", type="t", subject="s", status="sent",
                                     provider="local", created_at=NOW - timedelta(days=200, seconds=i)))  # fmt: skip
        uow.commit()
    budget = iter([600_000, 600_000])
    first = run_job(Retention(Settings(_env_file=None), batch_size=2), now=NOW, remaining_ms=lambda: next(budget, 0),
                    uow_factory=db, safety_ms=1)  # fmt: skip
    assert first.stopped_for_time and first.stats == {"email_logs": 4}
    second = run_job(Retention(Settings(_env_file=None), batch_size=2), now=NOW, remaining_ms=plenty, uow_factory=db,
                     safety_ms=1)  # fmt: skip
    assert second.complete and second.stats == {"email_logs": 1}
    assert count(db, EmailLog) == 0
