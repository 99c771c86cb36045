"""The knowledge base and AI bookkeeping (DESIGN.md §3 "AI"): FAQ chunks with their embeddings, usage rows,
conversations and their messages, and the per-user ask rate-limit windows.

Embeddings of several models live in one `vector` column without a fixed dimension: each row names its model
and dimension, and one partial HNSW index per dimension (`embedding::vector(N)` where `embedding_dim = N`)
serves the searches of that dimension (see migration 0004_rag). Vectors of different models are never compared:
every search filters on the model id.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Computed,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import UserDefinedType

from tollgate.db.base import Base, CreatedAt, UpdatedAt, UUIDPk

# Dimensions that have an HNSW index (migration 0004_rag): MiniLM 384, Titan v2 256/512/1024, OpenAI 1536.
INDEXED_DIMENSIONS = (256, 384, 512, 1024, 1536)
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
CREDITS = Numeric(20, 4)
TSV_EXPRESSION = (
    "setweight(to_tsvector('english', coalesce(question, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(answer, content)), 'B')"
)


def vector_literal(values: Sequence[float]) -> str:
    """pgvector's text form: `[0.1,0.2,...]` (exact float repr, so nothing is lost on the way)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


class Vector(UserDefinedType[list[float]]):
    """pgvector's `vector` without a typmod (the dimension is per row); sent and read in its text form."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "vector"

    def bind_processor(self, dialect: Any) -> Any:
        def process(value: Sequence[float] | None) -> str | None:
            return None if value is None else vector_literal(value)

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        def process(value: Any) -> list[float] | None:
            if value is None:
                return None
            if isinstance(value, str):
                return [float(v) for v in value.strip("[]").split(",") if v]
            return [float(v) for v in value]

        return process


class FaqChunk(Base):
    __tablename__ = "faq_chunks"
    __table_args__ = (
        UniqueConstraint("chunk_key", name="uq_faq_chunks_chunk_key"),
        CheckConstraint("kind IN ('qa', 'markdown')", name="kind"),
        CheckConstraint("embedding_dim > 0 AND embedding_dim <= 2000", name="embedding_dim"),
        CheckConstraint("token_count >= 0", name="token_count"),
        Index("ix_faq_chunks_model_category", "embedding_model", "category"),
        Index("ix_faq_chunks_source", "source"),
        Index("ix_faq_chunks_tsv", "tsv", postgresql_using="gin"),
        # One partial HNSW index per supported dimension (migration 0004_rag creates them).
        *(
            Index(
                f"ix_faq_chunks_hnsw_{dim}",
                literal_column(f"(embedding::vector({dim}))").label(f"embedding_{dim}"),
                postgresql_using="hnsw",
                postgresql_ops={f"embedding_{dim}": "vector_cosine_ops"},
                postgresql_with={"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION},
                postgresql_where=text(f"embedding_dim = {dim}"),
            )
            for dim in INDEXED_DIMENSIONS
        ),
    )

    id: Mapped[UUIDPk]
    # What identifies the chunk across ingestions: `qa:<normalised question>` or `md:<source>:<section>:<n>`.
    chunk_key: Mapped[str] = mapped_column(String(600))
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(255))
    category: Mapped[str] = mapped_column(String(64))
    question: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    # The text that was embedded (question + answer, or heading path + paragraphs).
    content: Mapped[str] = mapped_column(Text)
    answer_preview: Mapped[str] = mapped_column(String(300))
    embedding: Mapped[list[float]] = mapped_column(Vector())
    embedding_model: Mapped[str] = mapped_column(String(128))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    # sha256 of what the embedding depends on (the embedded text); unchanged content is never re-embedded.
    content_hash: Mapped[str] = mapped_column(String(64))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict, server_default="{}")
    token_count: Mapped[int] = mapped_column(Integer)
    tsv: Mapped[Any] = mapped_column(TSVECTOR, Computed(TSV_EXPRESSION, persisted=True))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class AiUsage(Base):
    """One AI operation of a user (a search, an ask): what it used, what it cost, how long it took."""

    __tablename__ = "ai_usage"
    __table_args__ = (
        CheckConstraint("status IN ('success', 'failed')", name="status"),
        CheckConstraint("input_tokens >= 0 AND output_tokens >= 0", name="tokens"),
        UniqueConstraint("user_id", "operation", "idempotency_key", name="uq_ai_usage_user_operation_key"),
        Index("ix_ai_usage_user_created", "user_id", "created_at"),
    )

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    operation: Mapped[str] = mapped_column(String(64))  # faq_search, rag_ask
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    embedding_model: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    credits_charged: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    credit_transaction_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="success")
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # A repeat of the same request with the same key answers `response` again (API.md Idempotency-Key).
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, default=dict, server_default="{}")
    created_at: Mapped[CreatedAt]


class AiConversation(Base):
    __tablename__ = "ai_conversations"
    __table_args__ = (Index("ix_ai_conversations_user_updated", "user_id", "updated_at"),)

    id: Mapped[UUIDPk]
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(128))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    total_tokens: Mapped[int] = mapped_column(Integer, default=0)
    credits_used: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]

    messages: Mapped[list[AiMessage]] = relationship(
        back_populates="conversation", order_by="AiMessage.position", cascade="all, delete-orphan", passive_deletes=True
    )


class AiMessage(Base):
    __tablename__ = "ai_messages"
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system')", name="role"),
        CheckConstraint("position >= 0", name="position"),
        # Messages of a conversation in order (ids made in the same millisecond are not ordered).
        UniqueConstraint("conversation_id", "position", name="uq_ai_messages_conversation_position"),
        Index("ix_ai_messages_created_at", "created_at"),  # retention sweeps
    )

    id: Mapped[UUIDPk]
    conversation_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("ai_conversations.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list, server_default="[]")
    model: Mapped[str | None] = mapped_column(String(128))
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    credits: Mapped[Decimal] = mapped_column(CREDITS, default=Decimal(0))
    created_at: Mapped[CreatedAt]

    conversation: Mapped[AiConversation] = relationship(back_populates="messages")


class AiRateWindow(Base):
    """Asks counted per user per fixed window, in the database so every Lambda container sees the same count."""

    __tablename__ = "ai_rate_windows"
    __table_args__ = (CheckConstraint("count >= 0", name="count"),)

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
