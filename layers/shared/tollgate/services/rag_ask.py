"""`POST /rag/ask`: retrieve, answer with the configured model citing the sources, charge by tokens through a hold;
and the caller's conversations.

The money path (each step its own committed transaction, so a crash between steps leaves a hold that the
HoldExpiry job releases, never a charge without an answer):
1. count the ask against the caller's tier limit (Postgres, so every container sees the same count);
2. hold an estimate: (prompt tokens + the answer's token cap) priced per 1k tokens (`rag_ask`);
3. call the model, outside any transaction; on failure release the hold and answer 503;
4. capture what the tokens used cost (never more than held; the rest is released) and store the messages.

Conversations are answered as views (frozen dataclasses of plain values made inside the unit of work), never ORM
rows.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_UP, Decimal
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import AskRateLimited, ConversationNotFound, NotFound
from tollgate.models import User
from tollgate.models.rag import AiConversation, AiMessage, AiUsage
from tollgate.pagination import Page, keyset_page
from tollgate.rag.embeddings import get_embedding_provider
from tollgate.rag.llm import Completion, Passage, Turn, estimate_prompt_tokens, get_answer_model
from tollgate.services.rag_search import replay, request_fingerprint, retrieve
from tollgate.services.views import row_view

ASK_OPERATION = "rag_ask"  # priced per 1,000 tokens: quantity = tokens / 1000
CREDIT_STEP = Decimal("0.0001")
TOKENS_PER_UNIT = Decimal(1000)


@dataclass(frozen=True, slots=True)
class AskOutcome:
    answer: str
    sources: list[dict[str, Any]]
    conversation_id: str
    message_id: str
    usage: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConversationView:
    id: uuid.UUID
    title: str
    model: str
    message_count: int
    total_tokens: int
    credits_used: Decimal
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MessageView:
    id: uuid.UUID
    role: str
    content: str
    sources: list[dict[str, Any]]
    model: str | None
    input_tokens: int
    output_tokens: int
    credits: Decimal
    created_at: datetime


def _window_start(now: datetime, seconds: int) -> datetime:
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def check_rate_limit(uow: UnitOfWork, user_id: uuid.UUID, tier: str, *, now: datetime | None = None) -> int:
    """Count one ask in the caller's current window; refuse (counting nothing) past the tier's limit.

    Returns the count in the window. One upsert, so concurrent asks from many containers count exactly.
    """
    settings = get_settings()
    limit = settings.rag_ask_rate_limits.get(tier.upper(), settings.rag_ask_rate_limit_default)
    window = settings.rag_ask_rate_window_seconds
    now = now or utcnow()
    start = _window_start(now, window)
    with uow:
        count = int(
            uow.session.execute(
                text(
                    "INSERT INTO ai_rate_windows (user_id, operation, window_start, count) "
                    "VALUES (:user_id, :operation, :start, 1) "
                    "ON CONFLICT (user_id, operation, window_start) "
                    "DO UPDATE SET count = ai_rate_windows.count + 1 RETURNING count"
                ),
                {"user_id": user_id, "operation": ASK_OPERATION, "start": start},
            ).scalar_one()
        )
        if count > limit:
            retry_after = int((start + timedelta(seconds=window) - now).total_seconds()) + 1
            raise AskRateLimited(
                f"at most {limit} asks every {window} seconds on the {tier} tier",
                details={"limit": limit, "window_seconds": window, "retry_after_seconds": retry_after, "tier": tier},
            )  # the unit of work rolls the increment back
        uow.session.execute(
            text("DELETE FROM ai_rate_windows WHERE user_id = :user_id AND window_start < :old"),
            {"user_id": user_id, "old": start - timedelta(days=1)},
        )
        uow.commit()
    return count


def credits_for(tokens: int, held_amount: Decimal, held_tokens: int) -> Decimal:
    """The price of `tokens`, at the per-token rate the hold was priced at, rounded up to 0.0001, capped at the hold."""
    if held_tokens <= 0:
        return Decimal(0)
    amount = (held_amount * Decimal(tokens) / Decimal(held_tokens)).quantize(CREDIT_STEP, rounding=ROUND_UP)
    return min(amount, held_amount)


def ask(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    question: str,
    *,
    conversation_id: uuid.UUID | None = None,
    tier: str | None = None,
    idempotency_key: str | None = None,
) -> AskOutcome:
    from tollgate import ledger

    settings = get_settings()
    fingerprint = request_fingerprint({"question": question, "conversation_id": str(conversation_id)})
    history: list[Turn] = []
    with uow:
        session = uow.session
        if idempotency_key:
            stored = replay(session, user_id, ASK_OPERATION, idempotency_key, fingerprint)
            if stored is not None:
                return AskOutcome(**stored)
        if tier is None:
            user = session.get(User, user_id)
            if user is None:
                raise NotFound("no such user")
            tier = user.tier
        if conversation_id is not None:
            conversation = session.get(AiConversation, conversation_id)
            if conversation is None or conversation.user_id != user_id:
                raise ConversationNotFound("no such conversation", details={"conversation_id": str(conversation_id)})
            if settings.rag_ask_history_messages:
                recent = session.scalars(
                    select(AiMessage)
                    .where(AiMessage.conversation_id == conversation_id, AiMessage.role.in_(("user", "assistant")))
                    .order_by(AiMessage.position.desc())
                    .limit(settings.rag_ask_history_messages)
                ).all()
                history = [Turn("user" if m.role == "user" else "assistant", m.content) for m in reversed(recent)]

    check_rate_limit(uow, user_id, tier)

    started = time.perf_counter()
    provider = get_embedding_provider()
    model = get_answer_model()
    embedded = provider.embed([question])
    with uow:
        hits = retrieve(
            uow.session,
            provider,
            embedded.vectors[0],
            question,
            limit=settings.rag_ask_context_chunks,
            threshold=settings.rag_search_threshold,
            mode=settings.rag_search_mode,
        )
    passages = [Passage(n, hit.question, hit.answer, hit.similarity) for n, hit in enumerate(hits, start=1)]
    estimate = estimate_prompt_tokens(question, passages, history) + settings.llm_max_output_tokens

    with uow:
        held = ledger.hold(
            uow.session,
            user_id,
            operation=ASK_OPERATION,
            quantity=Decimal(estimate) / TOKENS_PER_UNIT,
            metadata={"estimated_tokens": estimate},
        )
        uow.commit()

    try:
        completion: Completion = model.answer(question, passages, history)
    except BaseException:
        with uow:
            ledger.release(uow.session, user_id, held.hold_id)
            uow.commit()
        raise

    used = completion.input_tokens + completion.output_tokens
    amount = credits_for(used, Decimal(str(held.amount)), estimate)
    sources = [
        {
            "number": p.number,
            "id": str(h.id),
            "question": h.question,
            "category": h.category,
            "similarity": h.similarity,
        }
        for p, h in zip(passages, hits, strict=True)
    ]
    with uow:
        session = uow.session
        if amount > 0:
            captured_tx: uuid.UUID | None = ledger.capture(session, user_id, held.hold_id, amount=amount).transaction_id
        else:
            ledger.release(session, user_id, held.hold_id)
            captured_tx = None
        if conversation_id is None:
            conversation = AiConversation(
                user_id=user_id, title=question.strip()[:200], model=completion.model, message_count=0, total_tokens=0
            )
            session.add(conversation)
            session.flush()
        else:
            found = session.get(AiConversation, conversation_id, with_for_update=True)
            if found is None:  # deleted while the model answered: the answer is paid for, so keep it in a new one
                found = AiConversation(user_id=user_id, title=question.strip()[:200], model=completion.model)
                session.add(found)
                session.flush()
            conversation = found
        position = conversation.message_count or 0
        session.add(AiMessage(conversation_id=conversation.id, position=position, role="user", content=question))
        reply = AiMessage(
            conversation_id=conversation.id,
            position=position + 1,
            role="assistant",
            content=completion.text,
            sources=sources,
            model=completion.model,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            credits=amount,
        )
        session.add(reply)
        conversation.message_count = (conversation.message_count or 0) + 2
        conversation.total_tokens = (conversation.total_tokens or 0) + used
        conversation.credits_used = (conversation.credits_used or Decimal(0)) + amount
        conversation.updated_at = utcnow()
        session.flush()
        outcome = AskOutcome(
            answer=completion.text,
            sources=sources,
            conversation_id=str(conversation.id),
            message_id=str(reply.id),
            usage={
                "input_tokens": completion.input_tokens,
                "output_tokens": completion.output_tokens,
                "total_tokens": used,
                "credits": str(amount),
                "held": str(held.amount),
                "model": completion.model,
                "provider": completion.provider,
                "transaction_id": str(captured_tx) if captured_tx else None,
            },
        )
        session.add(
            AiUsage(
                user_id=user_id,
                operation=ASK_OPERATION,
                provider=completion.provider,
                model=completion.model,
                embedding_model=provider.model_id,
                input_tokens=completion.input_tokens,
                output_tokens=completion.output_tokens,
                credits_charged=amount,
                credit_transaction_id=captured_tx,
                latency_ms=int((time.perf_counter() - started) * 1000),
                status="success",
                conversation_id=conversation.id,
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
                response=asdict(outcome) if idempotency_key else None,
                metadata_={"sources": len(sources), "hold_id": str(held.hold_id), "estimated_tokens": estimate},
            )
        )
        try:
            session.flush()
        except IntegrityError:
            # A concurrent request with the same Idempotency-Key finished first: give this hold back and
            # answer what that one stored.
            uow.rollback()
            ledger.release(session, user_id, held.hold_id)
            uow.commit()
            stored = replay(session, user_id, ASK_OPERATION, idempotency_key or "", fingerprint)
            if stored is None:
                raise
            return AskOutcome(**stored)
        uow.commit()
    return outcome


# --- conversations ---------------------------------------------------------------------------------------------
def list_conversations(
    uow: UnitOfWork, user_id: uuid.UUID, *, limit: int, cursor: str | None
) -> Page[ConversationView]:
    query = select(AiConversation).where(AiConversation.user_id == user_id)
    with uow:
        page = keyset_page(uow.session, query, AiConversation.id, cursor=cursor, limit=limit, descending=True)
        items = [row_view(ConversationView, c) for c in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def get_conversation(
    uow: UnitOfWork, user_id: uuid.UUID, conversation_id: uuid.UUID
) -> tuple[ConversationView, list[MessageView]]:
    with uow:
        conversation = uow.session.get(AiConversation, conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise ConversationNotFound("no such conversation", details={"conversation_id": str(conversation_id)})
        messages = [
            row_view(MessageView, m)
            for m in uow.session.scalars(
                select(AiMessage).where(AiMessage.conversation_id == conversation_id).order_by(AiMessage.position)
            )
        ]
        found = row_view(ConversationView, conversation)
    return found, messages


def delete_conversation(uow: UnitOfWork, user_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
    with uow:
        result = uow.session.execute(
            delete(AiConversation).where(AiConversation.id == conversation_id, AiConversation.user_id == user_id)
        )
        if not getattr(result, "rowcount", 0):
            raise ConversationNotFound("no such conversation", details={"conversation_id": str(conversation_id)})
        uow.commit()
