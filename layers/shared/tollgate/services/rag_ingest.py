"""Knowledge-base ingestion: Q&A lists and markdown in, chunks with embeddings out; listing, removal, re-embedding.

Unchanged content (same text hash, same embedding model) is recognised and costs no embedding. Embeddings are
computed in batches between two short transactions (read what exists; write the result), so no database
transaction stays open while a remote provider is called.

Every entry point takes an `Actor`: admins over HTTP, and the operator at the CLI for ingesting files and
re-embedding (services/authz.py). The chunk list answers views (frozen dataclasses of plain values made inside
the unit of work), never ORM rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from tollgate.db import UnitOfWork
from tollgate.errors import ChunkNotFound, EmptyDocument
from tollgate.models.rag import FaqChunk
from tollgate.pagination import Page, keyset_page
from tollgate.rag.embeddings import EmbeddingProvider
from tollgate.rag.text import ChunkDraft, estimate_tokens, markdown_chunks, preview, qa_chunk, slug
from tollgate.services.authz import ADMIN, OPERATOR, Actor, audit, require_role
from tollgate.services.views import plain_json, row_view

Progress = Callable[[int, int], None]  # (chunks embedded so far, chunks to embed)


@dataclass(frozen=True, slots=True)
class QaDocument:
    question: str
    answer: str
    category: str
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class IngestReport:
    created: int
    updated: int
    unchanged: int
    deleted: int
    embedded: int  # chunks whose text was sent to the embedding provider
    embedding_tokens: int


@dataclass(frozen=True, slots=True)
class ChunkView:
    """A stored chunk as an admin lists it (without its embedding)."""

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


def qa_drafts(documents: Sequence[QaDocument], source: str | None = None) -> list[ChunkDraft]:
    return [qa_chunk(d.question, d.answer, d.category, d.metadata, source) for d in documents]


def markdown_drafts(
    markdown: str, category: str, source: str | None = None, metadata: dict[str, Any] | None = None
) -> tuple[list[ChunkDraft], str]:
    """The chunks of one markdown document and the source name they are filed under.

    Without an explicit source, the document's first heading names it (else its category), so ingesting a
    new version of the same document replaces its old chunks.
    """
    if source is None:
        first = next((ln.lstrip("#").strip() for ln in markdown.splitlines() if ln.startswith("#")), "")
        source = f"{category}/{slug(first) or 'document'}"
    drafts = markdown_chunks(markdown, category, source, metadata)
    if not drafts:
        raise EmptyDocument("the markdown has no text to store", details={"source": source})
    return drafts, source


def _dedupe(drafts: Sequence[ChunkDraft]) -> list[ChunkDraft]:
    """One draft per key; a key repeated in one request keeps its last version."""
    by_key: dict[str, ChunkDraft] = {}
    for draft in drafts:
        by_key.pop(draft.chunk_key, None)
        by_key[draft.chunk_key] = draft
    return list(by_key.values())


def ingest(
    uow: UnitOfWork,
    actor: Actor,
    drafts: Sequence[ChunkDraft],
    provider: EmbeddingProvider,
    *,
    replace_source: str | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> IngestReport:
    """Store `drafts`: create new chunks, update changed ones, leave identical ones alone.

    With `replace_source`, chunks filed under that source that are not among `drafts` are deleted (a new
    version of a markdown document drops the sections it no longer has).
    """
    require_role(actor, ADMIN, OPERATOR)
    drafts = _dedupe(drafts)
    if not drafts:
        raise EmptyDocument("nothing to ingest")
    keys = [d.chunk_key for d in drafts]
    with uow:
        known = {
            key: (digest, model, dim)
            for key, digest, model, dim in uow.session.execute(
                select(
                    FaqChunk.chunk_key, FaqChunk.content_hash, FaqChunk.embedding_model, FaqChunk.embedding_dim
                ).where(FaqChunk.chunk_key.in_(keys))
            )
        }
    current = (provider.model_id, provider.dimensions)
    # Sorted by length: a batch is padded to its longest text, so similar lengths waste the least compute.
    to_embed = sorted(
        (d for d in drafts if known.get(d.chunk_key) != (d.content_hash, *current)), key=lambda d: len(d.content)
    )
    vectors: dict[str, list[float]] = {}
    tokens = 0
    if progress:
        progress(0, len(to_embed))
    for start in range(0, len(to_embed), batch_size):
        batch = to_embed[start : start + batch_size]
        result = provider.embed([d.content for d in batch])
        tokens += result.tokens
        vectors.update(zip((d.chunk_key for d in batch), result.vectors, strict=True))
        if progress:
            progress(start + len(batch), len(to_embed))

    created = updated = unchanged = deleted = 0
    with uow:
        session = uow.session
        rows = {
            row.chunk_key: row
            for row in session.scalars(select(FaqChunk).where(FaqChunk.chunk_key.in_(keys)).with_for_update())
        }
        for draft in drafts:
            row = rows.get(draft.chunk_key)
            vector = vectors.get(draft.chunk_key)
            if row is None:
                if vector is None:  # appeared and changed since we read: embed it now (rare race)
                    vector = provider.embed([draft.content]).vectors[0]
                session.add(_new_row(draft, vector, provider))
                created += 1
                continue
            if vector is None and (row.content_hash, row.embedding_model, row.embedding_dim) != (
                draft.content_hash,
                *current,
            ):
                vector = provider.embed([draft.content]).vectors[0]
            changed = _apply(row, draft, vector, provider)
            if changed:
                updated += 1
            else:
                unchanged += 1
        if replace_source is not None:
            removed = session.execute(
                delete(FaqChunk).where(FaqChunk.source == replace_source, FaqChunk.chunk_key.not_in(keys))
            )
            deleted = int(getattr(removed, "rowcount", 0) or 0)
        audit(
            session, actor, action="rag.ingest", target_type="faq_chunks", target_id=replace_source,
            details={"created": created, "updated": updated, "unchanged": unchanged, "deleted": deleted},
        )  # fmt: skip
        uow.commit()
    return IngestReport(created, updated, unchanged, deleted, len(to_embed), tokens)


def _new_row(draft: ChunkDraft, vector: list[float], provider: EmbeddingProvider) -> FaqChunk:
    return FaqChunk(
        chunk_key=draft.chunk_key,
        kind=draft.kind,
        source=draft.source,
        category=draft.category,
        question=draft.question,
        answer=draft.answer,
        content=draft.content,
        answer_preview=preview(draft.answer),
        embedding=vector,
        embedding_model=provider.model_id,
        embedding_dim=provider.dimensions,
        content_hash=draft.content_hash,
        metadata_=draft.metadata,
        token_count=estimate_tokens(draft.content),
    )


def _apply(row: FaqChunk, draft: ChunkDraft, vector: list[float] | None, provider: EmbeddingProvider) -> bool:
    """Bring `row` to `draft`; True when anything changed."""
    changed = False
    if vector is not None:
        row.embedding = vector
        row.embedding_model = provider.model_id
        row.embedding_dim = provider.dimensions
        changed = True
    fields = {
        "kind": draft.kind,
        "source": draft.source,
        "category": draft.category,
        "question": draft.question,
        "answer": draft.answer,
        "content": draft.content,
        "answer_preview": preview(draft.answer),
        "content_hash": draft.content_hash,
        "metadata_": draft.metadata,
        "token_count": estimate_tokens(draft.content),
    }
    for name, value in fields.items():
        if getattr(row, name) != value:
            setattr(row, name, value)
            changed = True
    return changed


# --- re-embedding: move the whole knowledge base to the configured model -----------------------------------------
def reembed(
    uow: UnitOfWork,
    actor: Actor,
    provider: EmbeddingProvider,
    *,
    batch_size: int = 32,
    progress: Progress | None = None,
    force: bool = False,
) -> int:
    """Re-embed every chunk not yet embedded by `provider`'s model (every chunk with `force`), batch by batch,
    each batch committed on its own so an interrupted run resumes where it stopped. Returns chunks re-embedded.

    Until it finishes, searches see only the chunks already moved (vectors of two models are never compared).
    """
    require_role(actor, ADMIN, OPERATOR)
    query = select(FaqChunk.id).order_by(FaqChunk.id)
    if not force:
        query = query.where(
            (FaqChunk.embedding_model != provider.model_id) | (FaqChunk.embedding_dim != provider.dimensions)
        )
    with uow:
        ids = list(uow.session.scalars(query))
    total = len(ids)
    done = 0
    if progress:
        progress(0, total)
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start : start + batch_size]
        with uow:
            rows = list(uow.session.scalars(select(FaqChunk).where(FaqChunk.id.in_(batch_ids)).order_by(FaqChunk.id)))
            vectors = provider.embed([row.content for row in rows]).vectors
            for row, vector in zip(rows, vectors, strict=True):
                row.embedding = vector
                row.embedding_model = provider.model_id
                row.embedding_dim = provider.dimensions
            uow.commit()
        done += len(batch_ids)
        if progress:
            progress(done, total)
    return done


# --- admin listing and removal -----------------------------------------------------------------------------------
def list_chunks(
    uow: UnitOfWork,
    actor: Actor,
    *,
    limit: int,
    cursor: str | None = None,
    category: str | None = None,
    source: str | None = None,
) -> Page[ChunkView]:
    require_role(actor, ADMIN)
    query = select(FaqChunk)
    if category:
        query = query.where(FaqChunk.category == category)
    if source:
        query = query.where(FaqChunk.source == source)
    with uow:
        page = keyset_page(uow.session, query, FaqChunk.id, cursor=cursor, limit=limit)
        items = [row_view(ChunkView, c, metadata=plain_json(c.metadata_)) for c in page.items]
    return Page(items=items, next_cursor=page.next_cursor)


def delete_chunk(uow: UnitOfWork, actor: Actor, chunk_id: uuid.UUID) -> None:
    require_role(actor, ADMIN)
    with uow:
        result = uow.session.execute(delete(FaqChunk).where(FaqChunk.id == chunk_id))
        if not getattr(result, "rowcount", 0):
            raise ChunkNotFound("no such chunk", details={"chunk_id": str(chunk_id)})
        audit(uow.session, actor, action="rag.chunk.delete", target_type="faq_chunk", target_id=str(chunk_id))
        uow.commit()


def ingest_request(
    uow: UnitOfWork,
    actor: Actor,
    *,
    documents: Sequence[QaDocument] = (),
    markdown: str | None = None,
    category: str | None = None,
    source: str | None = None,
    metadata: dict[str, Any] | None = None,
    provider: EmbeddingProvider | None = None,
    progress: Progress | None = None,
) -> IngestReport:
    """`POST /admin/rag/documents`: a Q&A list, or one markdown document, with the configured embedding model."""
    require_role(actor, ADMIN, OPERATOR)  # before the provider loads: a refused caller costs nothing
    from tollgate.config import get_settings
    from tollgate.rag.embeddings import get_embedding_provider

    provider = provider or get_embedding_provider()
    batch_size = get_settings().embedding_batch_size
    if markdown is not None:
        drafts, filed_under = markdown_drafts(markdown, category or "general", source, metadata)
        return ingest(
            uow, actor, drafts, provider, replace_source=filed_under, batch_size=batch_size, progress=progress
        )
    return ingest(uow, actor, qa_drafts(documents, source), provider, batch_size=batch_size, progress=progress)
