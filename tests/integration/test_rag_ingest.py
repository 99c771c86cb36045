"""Knowledge-base ingestion: creation, dedupe by content hash, updates, markdown versions, re-embedding, and the
admin routes that drive it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.credits_support import admin
from tests.rag_standins import HashEmbeddings
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.models.rag import FaqChunk
from tollgate.rag.embeddings import EmbeddingProvider, Embeddings, LocalMiniLM, get_embedding_provider
from tollgate.services.authz import Actor
from tollgate.services.rag_ingest import QaDocument, ingest, ingest_request, qa_drafts, reembed
from tollgate_local.rag_cli import ingest_path, read_knowledge

Db = Callable[[], UnitOfWork]
OPERATOR = Actor.operator("tests")  # ingestion is privileged: the CLI's operator does it here

DOCS = [
    QaDocument("How do I reset my password?", "POST /auth/password/forgot with your email.", "accounts"),
    QaDocument("How much does a search cost?", "0.2 credits, charged as faq_search.", "credits"),
    QaDocument("What is a hold?", "A reservation of credits before an AI call.", "credits", {"ref": "holds"}),
]


class Counting:
    """The real local model, counting what it is asked to embed."""

    def __init__(self, inner: EmbeddingProvider) -> None:
        self.inner = inner
        self.provider = inner.provider
        self.model_id = inner.model_id
        self.dimensions = inner.dimensions
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> Embeddings:
        self.texts.extend(texts)
        return self.inner.embed(texts)


@pytest.fixture
def model() -> Counting:
    provider = get_embedding_provider()
    assert isinstance(provider, LocalMiniLM)
    return Counting(provider)


def _chunks(db: Db) -> list[FaqChunk]:
    with db() as uow:
        chunks = list(uow.session.scalars(select(FaqChunk).order_by(FaqChunk.chunk_key)))
        uow.session.expunge_all()
        return chunks


def test_ingest_creates_chunks_with_384_dim_vectors_and_full_text(db: Db, model: Counting) -> None:
    # When three Q&A entries are ingested
    report = ingest(db(), OPERATOR, qa_drafts(DOCS), model, batch_size=2)
    # Then all are created, embedded in batches of two, and stored with model, dimension, hash and metadata
    assert (report.created, report.updated, report.unchanged, report.embedded) == (3, 0, 0, 3)
    chunks = _chunks(db)
    assert len(chunks) == 3
    assert {c.embedding_model for c in chunks} == {"all-MiniLM-L6-v2-int8"}
    assert all(c.embedding_dim == 384 and len(c.embedding) == 384 for c in chunks)
    hold = next(c for c in chunks if c.question == "What is a hold?")
    assert hold.metadata_ == {"ref": "holds"} and hold.category == "credits"
    assert hold.token_count > 0 and hold.answer_preview.startswith("A reservation")
    # And the generated tsvector holds the question's and the answer's lexemes
    with db() as uow:
        matches = uow.session.scalar(
            select(func.count())
            .select_from(FaqChunk)
            .where(FaqChunk.tsv.op("@@")(func.plainto_tsquery("english", "reservation")))
        )
    assert matches == 1


def test_unchanged_content_costs_no_embedding_and_changes_are_reembedded(db: Db, model: Counting) -> None:
    # Given the entries ingested once
    ingest(db(), OPERATOR, qa_drafts(DOCS), model)
    model.texts.clear()
    before = {c.chunk_key: c.updated_at for c in _chunks(db)}
    # When the same entries come again
    again = ingest(db(), OPERATOR, qa_drafts(DOCS), model)
    # Then nothing is embedded or written
    assert (again.created, again.updated, again.unchanged, again.embedded) == (0, 0, 3, 0)
    assert model.texts == []
    assert {c.chunk_key: c.updated_at for c in _chunks(db)} == before
    # When one answer changes and one entry only changes category
    changed = [
        QaDocument(DOCS[0].question, "Use the reset link we mail you.", "accounts"),
        QaDocument(DOCS[1].question, DOCS[1].answer, "billing"),
        DOCS[2],
    ]
    third = ingest(db(), OPERATOR, qa_drafts(changed), model)
    # Then both are updated but only the new text is embedded
    assert (third.created, third.updated, third.unchanged, third.embedded) == (0, 2, 1, 1)
    assert model.texts == [f"{DOCS[0].question}\nUse the reset link we mail you."]
    by_question = {c.question: c for c in _chunks(db)}
    assert by_question[DOCS[1].question].category == "billing"


def test_a_repeated_question_in_one_request_keeps_the_last_version(db: Db, model: Counting) -> None:
    docs = [QaDocument("Same?", "first", "x"), QaDocument("same", "second", "x")]
    report = ingest(db(), OPERATOR, qa_drafts(docs), model)
    assert report.created == 1
    assert [c.answer for c in _chunks(db)] == ["second"]


def test_a_new_markdown_version_replaces_the_sections_it_dropped(db: Db, model: Counting) -> None:
    # Given a two-section document ingested
    v1 = "# Guide\n\n## Install\n\nRun make run.\n\n## Upgrade\n\nRun tollgate migrate.\n"
    first = ingest_request(db(), OPERATOR, markdown=v1, category="guide", source="guide.md", provider=model)
    assert (first.created, first.deleted) == (2, 0)
    # When a version without the Upgrade section and with a new one comes
    v2 = "# Guide\n\n## Install\n\nRun make run.\n\n## Test\n\nRun make test.\n"
    second = ingest_request(db(), OPERATOR, markdown=v2, category="guide", source="guide.md", provider=model)
    # Then Install is unchanged, Test is created and Upgrade is gone
    assert (second.created, second.unchanged, second.deleted) == (1, 1, 1)
    assert sorted(c.question or "" for c in _chunks(db)) == ["Guide > Install", "Guide > Test"]


def test_reembed_moves_every_chunk_to_the_new_model(db: Db, model: Counting) -> None:
    # Given chunks embedded by the local model
    ingest(db(), OPERATOR, qa_drafts(DOCS), model)
    # When the knowledge base is re-embedded with another model of another dimension
    other = HashEmbeddings("titan-like", 256)
    moved = reembed(db(), OPERATOR, other, batch_size=2)
    # Then every chunk now carries that model's vector, and a second run has nothing left to do
    assert moved == 3
    chunks = _chunks(db)
    assert {(c.embedding_model, c.embedding_dim, len(c.embedding)) for c in chunks} == {("titan-like", 256, 256)}
    assert reembed(db(), OPERATOR, other) == 0
    assert reembed(db(), OPERATOR, other, force=True) == 3


def test_cli_ingest_of_the_example_knowledge_base_is_idempotent(db: Db) -> None:
    # Given the shipped knowledge folder
    folder = Path(__file__).resolve().parents[2] / "local" / "tollgate_local" / "knowledge"
    expected = read_knowledge(folder).chunk_count
    assert expected >= 200
    # When it is ingested twice
    first = ingest_path(folder, show_progress=False)
    second = ingest_path(folder, show_progress=False)
    # Then the first run creates every chunk and the second embeds nothing
    assert first["created"] == expected and first["embedded"] == expected
    assert second == {"created": 0, "updated": 0, "unchanged": expected, "deleted": 0, "embedded": 0}


# --- the admin routes ---------------------------------------------------------------------------------------------
def test_admin_documents_route_ingests_and_reports(db: Db) -> None:
    boss = admin(db)
    body = {"documents": [{"question": d.question, "answer": d.answer, "category": d.category} for d in DOCS]}
    first = api_call("POST", "/admin/rag/documents", body=body, as_user=boss)
    assert first.status == 200, first.json
    assert first.json == {"created": 3, "updated": 0, "unchanged": 0, "deleted": 0, "embedded": 3}
    again = api_call("POST", "/admin/rag/documents", body=body, as_user=boss)
    assert again.json["unchanged"] == 3 and again.json["embedded"] == 0
    markdown = api_call(
        "POST", "/admin/rag/documents", body={"markdown": "# FAQ\n\nSome text.", "category": "guide"}, as_user=boss
    )
    assert markdown.json["created"] == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"documents": []},
        {"documents": [{"question": "q", "answer": "", "category": "c"}]},
        {"documents": [{"question": "q", "answer": "a"}]},
        {"markdown": "# T\n\ntext"},
        {"markdown": "# T", "category": "c", "documents": [{"question": "q", "answer": "a", "category": "c"}]},
        {"documents": [{"question": "q", "answer": "a", "category": "c", "extra": 1}]},
    ],
)
def test_admin_documents_route_refuses_bad_bodies_and_writes_nothing(db: Db, body: dict[str, object]) -> None:
    boss = admin(db)
    response = api_call("POST", "/admin/rag/documents", body=body, as_user=boss)
    assert response.status == 422 and response.error_code == "validation_error"
    assert _chunks(db) == []


def test_markdown_without_text_is_empty_document(db: Db) -> None:
    boss = admin(db)
    response = api_call(
        "POST", "/admin/rag/documents", body={"markdown": "# Title only", "category": "c"}, as_user=boss
    )
    assert response.status == 422 and response.error_code == "empty_document"


def test_admin_routes_are_refused_to_users(db: Db) -> None:
    with db() as uow:
        user = make_user(uow.session)
        uow.commit()
    body = {"documents": [{"question": "q", "answer": "a", "category": "c"}]}
    assert api_call("POST", "/admin/rag/documents", body=body, as_user=user).status == 403
    assert api_call("GET", "/admin/rag/chunks", as_user=user).status == 403
    assert _chunks(db) == []


def test_admin_lists_pages_and_deletes_chunks(db: Db) -> None:
    # Given five chunks
    boss = admin(db)
    docs = [
        {"question": f"Question {i}?", "answer": f"Answer {i}.", "category": "a" if i < 3 else "b"} for i in range(5)
    ]
    api_call("POST", "/admin/rag/documents", body={"documents": docs}, as_user=boss)
    # When they are listed two at a time
    seen: list[str] = []
    cursor = ""
    while True:
        page = api_call(
            "GET", "/admin/rag/chunks", query=f"limit=2&cursor={cursor}" if cursor else "limit=2", as_user=boss
        )
        assert page.status == 200, page.json
        seen += [item["question"] for item in page.json["items"]]
        cursor = page.json["next_cursor"]
        if not cursor:
            break
    # Then every chunk appears once, and the category filter works
    assert sorted(seen) == sorted(d["question"] for d in docs)
    only_b = api_call("GET", "/admin/rag/chunks", query="category=b", as_user=boss).json["items"]
    assert {item["category"] for item in only_b} == {"b"} and len(only_b) == 2
    assert only_b[0]["embedding_dim"] == 384
    # When one is deleted
    victim = only_b[0]["id"]
    assert api_call("DELETE", f"/admin/rag/chunks/{victim}", as_user=boss).status == 204
    # Then it is gone, and deleting it again is 404 chunk_not_found; a malformed id is 422, a malformed cursor 400
    again = api_call("DELETE", f"/admin/rag/chunks/{victim}", as_user=boss)
    assert again.status == 404 and again.error_code == "chunk_not_found"
    assert api_call("DELETE", "/admin/rag/chunks/not-a-uuid", as_user=boss).status == 422
    garbage = api_call("GET", "/admin/rag/chunks", query="cursor=%%%", as_user=boss)
    assert (garbage.status, garbage.error_code) == (400, "invalid_cursor")
    assert len(_chunks(db)) == 4
