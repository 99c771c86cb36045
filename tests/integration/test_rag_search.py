"""POST /rag/search: ordering on a small labelled set, threshold, category, both modes, and the charge
(faq_search in the same transaction as ai_usage; nothing charged when the search fails)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.credits_support import assert_consistent, balance, funded_user, ledger_rows
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.errors import EmbeddingUnavailable
from tollgate.models.rag import AiUsage
from tollgate.rag.embeddings import Embeddings, get_embedding_provider
from tollgate.services import rag_search
from tollgate.services.authz import Actor
from tollgate.services.rag_ingest import QaDocument, ingest, qa_drafts

Db = Callable[[], UnitOfWork]
COSTS = {"faq_search": "0.2", "rag_ask": "1"}

LABELLED = [
    QaDocument("How do I reset my password?", "POST /auth/password/forgot and follow the mailed link.", "accounts"),
    QaDocument("How do I create an API key?", "POST /auth/api-keys; the secret is shown once.", "accounts"),
    QaDocument("How do I check my credit balance?", "GET /credits/balance answers balance and held.", "credits"),
    QaDocument("What happens to unused credits at month end?", "They roll over if the plan allows it.", "credits"),
    QaDocument("Which payment providers are supported?", "Stripe and Lemon Squeezy.", "billing"),
    QaDocument("How are Stripe webhooks verified?", "With the Stripe-Signature header and the secret.", "billing"),
    QaDocument("How do I deploy to AWS?", "sam build, then sam deploy.", "deployment"),
    QaDocument("Where does mail go locally?", "To the email_logs table and .eml files.", "operations"),
]
# (query worded differently from the stored question, the question it must find first)
QUERIES = [
    ("I forgot my login password", "How do I reset my password?"),
    ("generate a token for server to server calls", "How do I create an API key?"),
    ("see how many credits I still have", "How do I check my credit balance?"),
    ("do leftover credits carry over to next month", "What happens to unused credits at month end?"),
    ("can I take payments with lemon squeezy", "Which payment providers are supported?"),
    ("ship the backend to amazon", "How do I deploy to AWS?"),
]


@pytest.fixture
def kb(db: Db) -> None:
    ingest(db(), Actor.operator(), qa_drafts(LABELLED), get_embedding_provider())


def _search(user: uuid.UUID, body: dict[str, object], headers: dict[str, str] | None = None):
    return api_call("POST", "/rag/search", body=body, as_user=user, headers=headers)


def _usage(db: Db, user: uuid.UUID) -> list[AiUsage]:
    with db() as uow:
        rows = list(uow.session.scalars(select(AiUsage).where(AiUsage.user_id == user)))
        uow.session.expunge_all()
        return rows


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_paraphrased_queries_find_their_entry_first(db: Db, kb: None, mode: str) -> None:
    user = funded_user(db, "10", costs=COSTS)
    for query, expected in QUERIES:
        # When the paraphrase is searched
        response = _search(user, {"query": query, "limit": 3, "threshold": -1, "mode": mode})
        # Then the labelled entry comes first, results are ordered by similarity (vector) or fused score
        assert response.status == 200, response.json
        results = response.json["results"]
        assert results[0]["question"] == expected, (query, [r["question"] for r in results])
        if mode == "vector":
            sims = [r["similarity"] for r in results]
            assert sims == sorted(sims, reverse=True)
        assert set(results[0]) >= {"id", "question", "answer", "category", "similarity"}


def test_threshold_drops_weak_matches(db: Db, kb: None) -> None:
    user = funded_user(db, "10", costs=COSTS)
    loose = _search(user, {"query": "I forgot my login password", "limit": 8, "threshold": -1}).json["results"]
    assert len(loose) == 8
    cut = (loose[0]["similarity"] + loose[1]["similarity"]) / 2
    strict = _search(user, {"query": "I forgot my login password", "limit": 8, "threshold": cut}).json["results"]
    assert [r["question"] for r in strict] == ["How do I reset my password?"]
    nothing = _search(user, {"query": "recipe for banana bread", "threshold": 0.6}).json["results"]
    assert nothing == []


def test_category_filter_is_exact_within_the_category(db: Db, kb: None) -> None:
    user = funded_user(db, "10", costs=COSTS)
    for mode in ("vector", "hybrid"):
        results = _search(
            user, {"query": "password reset", "category": "billing", "limit": 5, "threshold": -1, "mode": mode}
        ).json["results"]
        assert {r["category"] for r in results} == {"billing"}
        assert len(results) == 2  # every chunk of the category, however far from the query


def test_a_search_is_charged_once_and_logged_in_ai_usage(db: Db, kb: None) -> None:
    # Given a user with 1 credit and faq_search at 0.2
    user = funded_user(db, "1", costs=COSTS)
    # When they search
    response = _search(user, {"query": "reset my password"})
    # Then 0.2 is charged in the ledger as faq_search, answered with the balance, and logged in ai_usage
    assert response.status == 200
    assert response.json["charged"] == "0.2000" and response.json["balance"] == "0.8000"
    assert balance(db, user) == Decimal("0.8")
    usage_rows = [r for r in ledger_rows(db, user) if r["type"] == "usage"]
    assert [(r["operation"], r["amount"]) for r in usage_rows] == [("faq_search", Decimal("-0.2"))]
    (usage,) = _usage(db, user)
    assert usage.operation == "faq_search" and usage.credits_charged == Decimal("0.2")
    assert usage.credit_transaction_id == usage_rows[0]["id"]
    assert usage.model == "all-MiniLM-L6-v2-int8" and usage.input_tokens > 0 and usage.status == "success"
    assert_consistent(db, user)


def test_insufficient_credits_is_402_and_nothing_is_written(db: Db, kb: None) -> None:
    user = funded_user(db, "0.1", costs=COSTS)
    response = _search(user, {"query": "reset my password"})
    assert response.status == 402 and response.error_code == "insufficient_credits"
    assert balance(db, user) == Decimal("0.1")
    assert _usage(db, user) == []


class Broken:
    provider = "local"
    model_id = "all-MiniLM-L6-v2-int8"
    dimensions = 384

    def embed(self, texts: Sequence[str]) -> Embeddings:
        raise EmbeddingUnavailable("the embedding model is down", details={"provider": "local"})


def test_a_failed_search_charges_nothing(db: Db, kb: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a user with credits and an embedding provider that fails
    user = funded_user(db, "1", costs=COSTS)
    monkeypatch.setattr(rag_search, "get_embedding_provider", lambda: Broken())
    # When they search
    response = _search(user, {"query": "reset my password"})
    # Then the answer is 503 embedding_unavailable and neither the ledger nor ai_usage moved
    assert response.status == 503 and response.error_code == "embedding_unavailable"
    assert balance(db, user) == Decimal("1")
    assert [r["type"] for r in ledger_rows(db, user)] == ["promo"]
    assert _usage(db, user) == []


def test_unknown_cost_fails_the_search_without_logging(db: Db, kb: None) -> None:
    user = funded_user(db, "1", costs={"chat": "1"})
    response = _search(user, {"query": "reset my password"})
    assert response.status == 422 and response.error_code == "unknown_operation"
    assert _usage(db, user) == []


def test_idempotency_key_replays_the_first_answer_and_refuses_another_body(db: Db, kb: None) -> None:
    user = funded_user(db, "1", costs=COSTS)
    key = {"Idempotency-Key": "search-1"}
    first = _search(user, {"query": "reset my password"}, key)
    again = _search(user, {"query": "reset my password"}, key)
    assert first.status == again.status == 200
    assert again.json == first.json
    assert balance(db, user) == Decimal("0.8")  # charged once
    other = _search(user, {"query": "something else"}, key)
    assert other.status == 409 and other.error_code == "idempotency_conflict"
    bad = _search(user, {"query": "x"}, {"Idempotency-Key": "é" * 3})
    assert bad.status == 422


@pytest.mark.parametrize(
    "body",
    [{}, {"query": ""}, {"query": "x", "limit": 0}, {"query": "x", "limit": 51}, {"query": "x", "threshold": 2},
     {"query": "x", "mode": "fuzzy"}, {"query": "x" * 1001}],
)  # fmt: skip
def test_bad_search_bodies_are_422_and_free(db: Db, body: dict[str, object]) -> None:
    user = funded_user(db, "1", costs=COSTS)
    response = _search(user, body)
    assert response.status == 422 and response.error_code == "validation_error"
    assert balance(db, user) == Decimal("1")


def test_search_needs_a_caller(db: Db) -> None:
    response = api_call("POST", "/rag/search", body={"query": "x"}, through_authorizer=True)
    assert response.status in (401, 403)
