"""POST /rag/ask: hold before the model, capture by tokens after (release on failure), conversations and
messages stored, the per-tier rate limit in Postgres, and the conversation routes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.credits_support import assert_consistent, balance, funded_user, ledger_rows
from tests.rag_standins import OpenAIStandIn, openai_standin
from tests.support import api_call
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import LlmUnavailable
from tollgate.models.rag import AiConversation, AiMessage, AiUsage
from tollgate.rag.embeddings import get_embedding_provider
from tollgate.rag.llm import Completion, OpenAIChat, Passage, Turn
from tollgate.services import rag_ask
from tollgate.services.authz import Actor
from tollgate.services.rag_ingest import QaDocument, ingest, qa_drafts

Db = Callable[[], UnitOfWork]
COSTS = {"faq_search": "0.2", "rag_ask": "1"}
NOON = datetime(2026, 11, 24, 12, 0, 10, tzinfo=UTC)
DOCS = [
    QaDocument("How do I search the knowledge base?", "POST /rag/search with {query}.", "knowledge-base"),
    QaDocument("How much does a search cost?", "0.2 credits, charged as faq_search.", "knowledge-base"),
    QaDocument("How do I reset my password?", "POST /auth/password/forgot.", "accounts"),
]


@pytest.fixture
def kb(db: Db) -> None:
    ingest(db(), Actor.operator(), qa_drafts(DOCS), get_embedding_provider())


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIStandIn]:
    """Answers come from OpenAIChat talking to the local stand-in server."""
    with openai_standin() as server:
        model = OpenAIChat("sk-test", base_url=server.base_url, max_tokens=get_settings().llm_max_output_tokens)
        monkeypatch.setattr(rag_ask, "get_answer_model", lambda: model)
        yield server


def _ask(user: uuid.UUID, body: dict[str, object], **kwargs: object):
    return api_call("POST", "/rag/ask", body=body, as_user=user, **kwargs)  # type: ignore[arg-type]


def _holds(db: Db, user: uuid.UUID) -> list[tuple[str, Decimal]]:
    return [(r["type"], r["amount"]) for r in ledger_rows(db, user) if r["type"] in ("hold", "capture", "release")]


def test_extractive_ask_holds_then_captures_the_tokens_used(db: Db, kb: None) -> None:
    # Given a user with 5 credits and rag_ask at 1 credit per 1,000 tokens, and no LLM configured
    user = funded_user(db, "5", costs=COSTS)
    # When they ask
    response = _ask(user, {"question": "find answers in the knowledge base"})
    # Then the best entry answers, cited, with its sources
    assert response.status == 200, response.json
    body = response.json
    assert body["answer"].startswith("POST /rag/search with {query}. [1]")
    assert body["sources"][0]["question"] == "How do I search the knowledge base?"
    assert body["sources"][0]["number"] == 1
    # And a hold was taken, then the tokens used were captured (less than held) and the rest released
    usage = body["usage"]
    charged, held = Decimal(usage["credits"]), Decimal(usage["held"])
    assert usage["provider"] == "local" and usage["model"] == "extractive"
    assert 0 < charged < held
    assert charged == (held * usage["total_tokens"] / _estimate(db, user)).quantize(Decimal("0.0001"), "ROUND_UP")
    assert [t for t, _ in _holds(db, user)] == ["hold", "capture"]
    assert balance(db, user) == Decimal(5) - charged
    # And the conversation holds the question and the answer, and ai_usage the cost
    with db() as uow:
        conversation = uow.session.get(AiConversation, uuid.UUID(body["conversation_id"]))
        assert conversation is not None and conversation.user_id == user and conversation.message_count == 2
        messages = list(uow.session.scalars(select(AiMessage).where(AiMessage.conversation_id == conversation.id)))
        (row,) = uow.session.scalars(select(AiUsage).where(AiUsage.user_id == user))
        uow.session.expunge_all()
    assert [(m.position, m.role) for m in sorted(messages, key=lambda m: m.position)] == [(0, "user"), (1, "assistant")]
    assert row.operation == "rag_ask" and row.credits_charged == charged
    assert_consistent(db, user)


def _estimate(db: Db, user: uuid.UUID) -> int:
    with db() as uow:
        (row,) = uow.session.scalars(select(AiUsage).where(AiUsage.user_id == user, AiUsage.operation == "rag_ask"))
        return int(row.metadata_["estimated_tokens"])


def test_llm_ask_captures_by_the_providers_token_counts(db: Db, kb: None, standin: OpenAIStandIn) -> None:
    user = funded_user(db, "5", costs=COSTS)
    response = _ask(user, {"question": "How do I search?"})
    assert response.status == 200, response.json
    usage = response.json["usage"]
    # The stand-in reports 321 prompt and 12 completion tokens
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (321, 12, 333)
    assert response.json["answer"] == standin.answer
    held = Decimal(usage["held"])
    assert Decimal(usage["credits"]) == (held * 333 / _estimate(db, user)).quantize(Decimal("0.0001"), "ROUND_UP")
    # The model saw the retrieved passages
    prompt = standin.requests[0]["body"]["messages"][-1]["content"]
    assert "How do I search the knowledge base?" in prompt
    assert_consistent(db, user)


def test_a_failing_model_releases_the_hold_and_charges_nothing(db: Db, kb: None, standin: OpenAIStandIn) -> None:
    # Given a model that answers 500
    user = funded_user(db, "5", costs=COSTS)
    standin.fail_with = 500
    # When the user asks
    response = _ask(user, {"question": "How do I search?"})
    # Then 503 llm_unavailable, the hold was released, the balance is whole and nothing is stored
    assert response.status == 503 and response.error_code == "llm_unavailable"
    assert [t for t, _ in _holds(db, user)] == ["hold", "release"]
    assert balance(db, user) == Decimal(5)
    with db() as uow:
        assert uow.session.scalars(select(AiConversation)).all() == []
        assert uow.session.scalars(select(AiUsage)).all() == []
    assert_consistent(db, user)


def test_not_enough_credits_for_the_hold_is_402_before_the_model_runs(db: Db, kb: None, standin: OpenAIStandIn) -> None:
    user = funded_user(db, "0.01", costs=COSTS)
    response = _ask(user, {"question": "How do I search?"})
    assert response.status == 402 and response.error_code == "insufficient_credits"
    assert standin.requests == []
    assert balance(db, user) == Decimal("0.01")


def test_a_conversation_continues_with_its_history(db: Db, kb: None, standin: OpenAIStandIn) -> None:
    user = funded_user(db, "10", costs=COSTS)
    first = _ask(user, {"question": "How do I search?"}).json
    second = _ask(user, {"question": "And what does it cost?", "conversation_id": first["conversation_id"]})
    assert second.status == 200 and second.json["conversation_id"] == first["conversation_id"]
    roles = [m["role"] for m in standin.requests[1]["body"]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]  # the earlier turn went to the model
    detail = api_call("GET", f"/rag/conversations/{first['conversation_id']}", as_user=user).json
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "user", "assistant"]
    assert detail["message_count"] == 4 and detail["messages"][1]["sources"]


def test_someone_elses_conversation_is_not_found(db: Db, kb: None) -> None:
    owner = funded_user(db, "5", costs=COSTS)
    stranger = funded_user(db, "5")
    conversation_id = _ask(owner, {"question": "How do I search?"}).json["conversation_id"]
    for response in (
        _ask(stranger, {"question": "hi", "conversation_id": conversation_id}),
        api_call("GET", f"/rag/conversations/{conversation_id}", as_user=stranger),
        api_call("DELETE", f"/rag/conversations/{conversation_id}", as_user=stranger),
    ):
        assert response.status == 404 and response.error_code == "conversation_not_found"
    assert balance(db, stranger) == Decimal(5)


def test_conversations_are_listed_newest_first_paged_and_deleted(db: Db, kb: None) -> None:
    user = funded_user(db, "10", costs=COSTS)
    ids = [_ask(user, {"question": f"How do I search? ({i})"}).json["conversation_id"] for i in range(3)]
    page1 = api_call("GET", "/rag/conversations", query="limit=2", as_user=user).json
    page2 = api_call("GET", "/rag/conversations", query=f"limit=2&cursor={page1['next_cursor']}", as_user=user).json
    assert [c["id"] for c in page1["items"] + page2["items"]] == ids[::-1]
    assert page2["next_cursor"] is None
    assert api_call("DELETE", f"/rag/conversations/{ids[0]}", as_user=user).status == 204
    with db() as uow:
        left = uow.session.scalars(select(AiMessage.conversation_id)).all()
    assert uuid.UUID(ids[0]) not in left and len(left) == 4  # its messages went with it
    assert api_call("GET", f"/rag/conversations/{ids[0]}", as_user=user).status == 404


def test_ask_is_rate_limited_per_tier_across_containers(db: Db, kb: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given FREE users limited to 2 asks a window
    monkeypatch.setenv("RAG_ASK_RATE_LIMITS", "FREE=2,PRO=5")
    monkeypatch.setenv("RAG_ASK_RATE_WINDOW_SECONDS", "3600")  # no window boundary falls inside the test
    get_settings.cache_clear()
    try:
        user = funded_user(db, "10", costs=COSTS)  # tier FREE by default
        # When they ask three times
        statuses = [_ask(user, {"question": "How do I search?"}).status for _ in range(3)]
        # Then the third is 429 rate_limited, with when to retry, and is not charged
        assert statuses == [200, 200, 429]
        refused = _ask(user, {"question": "How do I search?"})
        assert refused.error_code == "rate_limited"
        assert refused.json["error"]["details"]["limit"] == 2
        assert 1 <= refused.json["error"]["details"]["retry_after_seconds"] <= 3601
        assert [t for t, _ in _holds(db, user)].count("hold") == 2
        # And the tier the authorizer reports decides the limit (PRO: 5)
        pro = api_call(
            "POST",
            "/rag/ask",
            body={"question": "How do I search?"},
            authorizer_context={"user_id": str(user), "role": "USER", "session_id": "", "tier": "PRO"},
        )
        assert pro.status == 200
    finally:
        get_settings.cache_clear()


def test_rate_limit_counter_is_one_row_per_window(db: Db) -> None:
    user = funded_user(db, "0")
    counts = [rag_ask.check_rate_limit(db(), user, "BUSINESS", now=NOON) for _ in range(3)]
    assert counts == [1, 2, 3]
    # The next window starts again from 1
    assert rag_ask.check_rate_limit(db(), user, "BUSINESS", now=NOON + timedelta(seconds=60)) == 1


class Exploding:
    provider = "test"
    model_id = "exploding"

    def answer(self, question: str, passages: Sequence[Passage], history: Sequence[Turn]) -> Completion:
        raise LlmUnavailable("down")


def test_idempotent_ask_replays_without_a_second_charge(db: Db, kb: None) -> None:
    user = funded_user(db, "5", costs=COSTS)
    headers = {"Idempotency-Key": "ask-1"}
    first = _ask(user, {"question": "How do I search?"}, headers=headers)
    after_first = balance(db, user)
    again = _ask(user, {"question": "How do I search?"}, headers=headers)
    assert again.status == 200 and again.json == first.json
    assert balance(db, user) == after_first
    other = _ask(user, {"question": "Something else?"}, headers=headers)
    assert other.status == 409 and other.error_code == "idempotency_conflict"


def test_a_failed_ask_can_be_retried_with_the_same_key(db: Db, kb: None, monkeypatch: pytest.MonkeyPatch) -> None:
    user = funded_user(db, "5", costs=COSTS)
    headers = {"Idempotency-Key": "ask-retry"}
    monkeypatch.setattr(rag_ask, "get_answer_model", lambda: Exploding())
    assert _ask(user, {"question": "How do I search?"}, headers=headers).status == 503
    monkeypatch.undo()
    retried = _ask(user, {"question": "How do I search?"}, headers=headers)
    assert retried.status == 200
    assert [t for t, _ in _holds(db, user)] == ["hold", "release", "hold", "capture"]
    assert_consistent(db, user)


@pytest.mark.parametrize(
    "body", [{}, {"question": ""}, {"question": "x" * 2001}, {"question": "x", "conversation_id": "nope"}]
)
def test_bad_ask_bodies_are_422(db: Db, body: dict[str, object]) -> None:
    user = funded_user(db, "5", costs=COSTS)
    response = _ask(user, body)
    assert response.status == 422 and response.error_code == "validation_error"
    assert balance(db, user) == Decimal(5)


def test_concurrent_asks_are_counted_exactly(db: Db) -> None:
    # Given one user and 4 threads (as 4 Lambda containers would) each counting 10 asks at once
    from concurrent.futures import ThreadPoolExecutor

    user = funded_user(db, "0")
    with ThreadPoolExecutor(max_workers=4) as pool:
        counts = list(pool.map(lambda _: rag_ask.check_rate_limit(UnitOfWork(), user, "BUSINESS", now=NOON), range(40)))
    # Then every ask got its own count: no lost update, no duplicate
    assert sorted(counts) == list(range(1, 41))
