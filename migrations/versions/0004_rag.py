"""The knowledge base: faq_chunks (pgvector + full text), ai_usage, ai_conversations, ai_messages, ai_rate_windows.

One `vector` column without a fixed dimension holds the embeddings of whichever model the deployment uses
(MiniLM 384, Titan v2 256/512/1024, OpenAI 3-small 1536). HNSW needs a fixed dimension, so there is one partial
HNSW index per supported dimension on the expression `embedding::vector(N)` restricted to `embedding_dim = N`;
searches say the same expression and predicate, so the planner picks the right index, and an index over a
dimension nobody uses is empty and costs nothing. Moving to another model (`tollgate rag reembed`) needs no
migration. Index parameters: m = 16, ef_construction = 100 (bench/rag.py: recall@10 >= 0.98 at ef_search 64).

Revision ID: 0004_rag
Revises: 0001_users
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_rag"
down_revision: str | Sequence[str] | None = "0001_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIMENSIONS = (256, 384, 512, 1024, 1536)
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
TSV_EXPRESSION = (
    "setweight(to_tsvector('english', coalesce(question, '')), 'A') || "
    "setweight(to_tsvector('english', coalesce(answer, content)), 'B')"
)


class _Vector(sa.types.UserDefinedType[list[float]]):
    """pgvector's `vector` without a typmod: the dimension is per row (`embedding_dim`)."""

    cache_ok = True

    def get_col_spec(self, **kw: object) -> str:
        return "vector"


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "faq_chunks",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("chunk_key", sa.String(600), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("source", sa.String(255)),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("question", sa.Text()),
        sa.Column("answer", sa.Text()),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("answer_preview", sa.String(300), nullable=False),
        sa.Column("embedding", _Vector(), nullable=False),
        sa.Column("embedding_model", sa.String(128), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("tsv", postgresql.TSVECTOR(), sa.Computed(TSV_EXPRESSION, persisted=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_faq_chunks")),
        sa.UniqueConstraint("chunk_key", name="uq_faq_chunks_chunk_key"),
        sa.CheckConstraint("kind IN ('qa', 'markdown')", name=op.f("ck_faq_chunks_kind")),
        sa.CheckConstraint("embedding_dim > 0 AND embedding_dim <= 2000", name=op.f("ck_faq_chunks_embedding_dim")),
        sa.CheckConstraint("token_count >= 0", name=op.f("ck_faq_chunks_token_count")),
        sa.CheckConstraint("vector_dims(embedding) = embedding_dim", name=op.f("ck_faq_chunks_dims_match")),
    )
    op.create_index("ix_faq_chunks_model_category", "faq_chunks", ["embedding_model", "category"])
    op.create_index("ix_faq_chunks_source", "faq_chunks", ["source"])
    op.create_index("ix_faq_chunks_tsv", "faq_chunks", ["tsv"], postgresql_using="gin")
    for dim in DIMENSIONS:
        op.execute(
            f"CREATE INDEX ix_faq_chunks_hnsw_{dim} ON faq_chunks "
            f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE embedding_dim = {dim}"
        )

    op.create_table(
        "ai_conversations",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("credits_used", sa.Numeric(20, 4), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_conversations")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_ai_conversations_user_id_users")
        ),
    )
    op.create_index("ix_ai_conversations_user_updated", "ai_conversations", ["user_id", "updated_at"])

    op.create_table(
        "ai_messages",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("sources", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column("model", sa.String(128)),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("credits", sa.Numeric(20, 4), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_messages")),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["ai_conversations.id"],
            ondelete="CASCADE",
            name=op.f("fk_ai_messages_conversation_id_ai_conversations"),
        ),
        sa.CheckConstraint("role IN ('user', 'assistant', 'system')", name=op.f("ck_ai_messages_role")),
        sa.CheckConstraint("position >= 0", name=op.f("ck_ai_messages_position")),
        sa.UniqueConstraint("conversation_id", "position", name="uq_ai_messages_conversation_position"),
    )
    op.create_index("ix_ai_messages_created_at", "ai_messages", ["created_at"])

    op.create_table(
        "ai_usage",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("embedding_model", sa.String(128)),
        sa.Column("input_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("output_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("credits_charged", sa.Numeric(20, 4), nullable=False, server_default="0"),
        sa.Column("credit_transaction_id", sa.Uuid()),
        sa.Column("latency_ms", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="success"),
        sa.Column("conversation_id", sa.Uuid()),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("response", postgresql.JSONB()),
        sa.Column("metadata", postgresql.JSONB(), nullable=False, server_default="{}"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_usage")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_ai_usage_user_id_users")),
        sa.UniqueConstraint("user_id", "operation", "idempotency_key", name="uq_ai_usage_user_operation_key"),
        sa.CheckConstraint("status IN ('success', 'failed')", name=op.f("ck_ai_usage_status")),
        sa.CheckConstraint("input_tokens >= 0 AND output_tokens >= 0", name=op.f("ck_ai_usage_tokens")),
    )
    op.create_index("ix_ai_usage_user_created", "ai_usage", ["user_id", "created_at"])

    op.create_table(
        "ai_rate_windows",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("user_id", "operation", "window_start", name=op.f("pk_ai_rate_windows")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], ondelete="CASCADE", name=op.f("fk_ai_rate_windows_user_id_users")
        ),
        sa.CheckConstraint("count >= 0", name=op.f("ck_ai_rate_windows_count")),
    )


def downgrade() -> None:
    op.drop_table("ai_rate_windows")
    op.drop_index("ix_ai_usage_user_created", table_name="ai_usage")
    op.drop_table("ai_usage")
    op.drop_index("ix_ai_messages_created_at", table_name="ai_messages")
    op.drop_table("ai_messages")
    op.drop_index("ix_ai_conversations_user_updated", table_name="ai_conversations")
    op.drop_table("ai_conversations")
    for dim in DIMENSIONS:
        op.execute(f"DROP INDEX IF EXISTS ix_faq_chunks_hnsw_{dim}")
    op.drop_index("ix_faq_chunks_tsv", table_name="faq_chunks")
    op.drop_index("ix_faq_chunks_source", table_name="faq_chunks")
    op.drop_index("ix_faq_chunks_model_category", table_name="faq_chunks")
    op.drop_table("faq_chunks")
