"""The knowledge base (API.md "Knowledge base"): admin ingestion and listing, charged search, grounded answers,
and the caller's conversations. Each route validates its input, calls one service function, returns a model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, Field, StringConstraints, model_validator

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import Cursor, Limit, StrictBody, idempotency_key
from tollgate.observability import logger, metrics, tracer
from tollgate.services import rag_ask, rag_ingest, rag_search

app = create_app("rag")

Category = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
Question = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
Answer = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20_000)]
Source = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
MAX_DOCUMENTS = 500


# --- bodies -------------------------------------------------------------------------------------------------
class QaDocumentIn(StrictBody):
    question: Question
    answer: Answer
    category: Category
    metadata: dict[str, Any] | None = None


class DocumentsIn(StrictBody):
    documents: list[QaDocumentIn] | None = Field(default=None, min_length=1, max_length=MAX_DOCUMENTS)
    markdown: Annotated[str, StringConstraints(min_length=1, max_length=500_000)] | None = None
    category: Category | None = None
    source: Source | None = None  # markdown: the document's name (a new version replaces its old chunks)
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> DocumentsIn:
        if (self.documents is None) == (self.markdown is None):
            raise ValueError("give either documents or markdown")
        if self.markdown is not None and self.category is None:
            raise ValueError("markdown needs a category")
        return self


class SearchIn(StrictBody):
    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
    limit: int = Field(default=5, ge=1, le=50)
    threshold: float | None = Field(default=None, ge=-1, le=1)
    category: Category | None = None
    mode: Literal["vector", "hybrid"] | None = None


class AskIn(StrictBody):
    question: Question
    conversation_id: uuid.UUID | None = None


# --- answers ------------------------------------------------------------------------------------------------
class IngestOut(BaseModel):
    created: int
    updated: int
    unchanged: int
    deleted: int
    embedded: int


class ChunkOut(BaseModel):
    id: uuid.UUID
    question: str | None
    answer: str | None
    answer_preview: str
    category: str
    kind: str
    source: str | None
    embedding_model: str
    embedding_dim: int
    token_count: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ChunkPageOut(BaseModel):
    items: list[ChunkOut]
    next_cursor: str | None


class SearchResultOut(BaseModel):
    id: uuid.UUID
    question: str | None
    answer: str
    category: str
    similarity: float
    source: str | None = None


class SearchOut(BaseModel):
    results: list[SearchResultOut]
    mode: str
    charged: str
    balance: str | None


class SourceOut(BaseModel):
    number: int
    id: uuid.UUID
    question: str | None
    category: str
    similarity: float


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    credits: str
    held: str
    model: str
    provider: str
    transaction_id: str | None


class AskOut(BaseModel):
    answer: str
    sources: list[SourceOut]
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    usage: UsageOut


class ConversationOut(BaseModel):
    id: uuid.UUID
    title: str
    model: str
    message_count: int
    total_tokens: int
    credits_used: str
    created_at: datetime
    updated_at: datetime


class ConversationPageOut(BaseModel):
    items: list[ConversationOut]
    next_cursor: str | None


class MessageOut(BaseModel):
    id: uuid.UUID
    role: str
    content: str
    sources: list[dict[str, Any]]
    model: str | None
    input_tokens: int
    output_tokens: int
    credits: str
    created_at: datetime


class ConversationDetailOut(ConversationOut):
    messages: list[MessageOut]


# --- edge helpers ---------------------------------------------------------------------------------------------
def _conversation_out(c: rag_ask.ConversationView) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "model": c.model,
        "message_count": c.message_count,
        "total_tokens": c.total_tokens,
        "credits_used": str(c.credits_used),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
    }


# --- admin: documents and chunks --------------------------------------------------------------------------------
@app.post("/admin/rag/documents", summary="Add or update knowledge-base documents (Q&A list or markdown)")
def add_documents(body: DocumentsIn) -> IngestOut:
    report = rag_ingest.ingest_request(
        UnitOfWork(),
        current_actor(app),
        documents=[rag_ingest.QaDocument(d.question, d.answer, d.category, d.metadata) for d in body.documents or []],
        markdown=body.markdown,
        category=body.category,
        source=body.source,
        metadata=body.metadata,
    )
    return IngestOut(
        created=report.created,
        updated=report.updated,
        unchanged=report.unchanged,
        deleted=report.deleted,
        embedded=report.embedded,
    )


@app.get("/admin/rag/chunks", summary="List knowledge-base chunks")
def list_chunks(
    cursor: Cursor = None,
    limit: Limit = 20,
    category: Annotated[str | None, Query(max_length=64)] = None,
    source: Annotated[str | None, Query(max_length=255)] = None,
) -> ChunkPageOut:
    page = rag_ingest.list_chunks(
        UnitOfWork(), current_actor(app), limit=limit, cursor=cursor, category=category, source=source
    )
    items = [
        ChunkOut(
            id=c.id,
            question=c.question,
            answer=c.answer,
            answer_preview=c.answer_preview,
            category=c.category,
            kind=c.kind,
            source=c.source,
            embedding_model=c.embedding_model,
            embedding_dim=c.embedding_dim,
            token_count=c.token_count,
            metadata=c.metadata,
            created_at=c.created_at,
            updated_at=c.updated_at,
        )
        for c in page.items
    ]
    return ChunkPageOut(items=items, next_cursor=page.next_cursor)


@app.delete("/admin/rag/chunks/<chunk_id>", summary="Remove a knowledge-base chunk")
def delete_chunk(chunk_id: uuid.UUID) -> Response[str]:
    rag_ingest.delete_chunk(UnitOfWork(), current_actor(app), chunk_id)
    return Response(status_code=204, body="")


# --- users: search and ask ---------------------------------------------------------------------------------------
@app.post("/rag/search", summary="Semantic search of the knowledge base (charged as faq_search)")
def search(body: SearchIn) -> SearchOut:
    principal = current_principal(app)
    outcome = rag_search.search(
        UnitOfWork(),
        principal.user_id,
        body.query,
        limit=body.limit,
        threshold=body.threshold,
        category=body.category,
        mode=body.mode,
        idempotency_key=idempotency_key(app),
    )
    return SearchOut(
        results=[SearchResultOut(**r) for r in outcome.results],
        mode=outcome.mode,
        charged=outcome.charged,
        balance=outcome.balance,
    )


@app.post("/rag/ask", summary="A grounded answer citing the knowledge base (charged by tokens through a hold)")
def ask(body: AskIn) -> AskOut:
    principal = current_principal(app)
    outcome = rag_ask.ask(
        UnitOfWork(),
        principal.user_id,
        body.question,
        conversation_id=body.conversation_id,
        tier=principal.tier,
        idempotency_key=idempotency_key(app),
    )
    return AskOut.model_validate(
        {
            "answer": outcome.answer,
            "sources": outcome.sources,
            "conversation_id": outcome.conversation_id,
            "message_id": outcome.message_id,
            "usage": outcome.usage,
        }
    )


# --- users: conversations ----------------------------------------------------------------------------------------
@app.get("/rag/conversations", summary="The caller's conversations, newest first")
def list_conversations(cursor: Cursor = None, limit: Limit = 20) -> ConversationPageOut:
    principal = current_principal(app)
    page = rag_ask.list_conversations(UnitOfWork(), principal.user_id, limit=limit, cursor=cursor)
    return ConversationPageOut.model_validate(
        {"items": [_conversation_out(c) for c in page.items], "next_cursor": page.next_cursor}
    )


@app.get("/rag/conversations/<conversation_id>", summary="One conversation with its messages")
def get_conversation(conversation_id: uuid.UUID) -> ConversationDetailOut:
    principal = current_principal(app)
    conversation, messages = rag_ask.get_conversation(UnitOfWork(), principal.user_id, conversation_id)
    return ConversationDetailOut.model_validate(
        {
            **_conversation_out(conversation),
            "messages": [
                {
                    "id": m.id,
                    "role": m.role,
                    "content": m.content,
                    "sources": m.sources,
                    "model": m.model,
                    "input_tokens": m.input_tokens,
                    "output_tokens": m.output_tokens,
                    "credits": str(m.credits),
                    "created_at": m.created_at,
                }
                for m in messages
            ],
        }
    )


@app.delete("/rag/conversations/<conversation_id>", summary="Delete a conversation and its messages")
def delete_conversation(conversation_id: uuid.UUID) -> Response[str]:
    principal = current_principal(app)
    rag_ask.delete_conversation(UnitOfWork(), principal.user_id, conversation_id)
    return Response(status_code=204, body="")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
