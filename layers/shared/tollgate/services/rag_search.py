"""Semantic search over the knowledge base, and the charged `POST /rag/search` use case.

Two retrieval modes:
- `vector`: cosine similarity through the HNSW index of the model's dimension (ef_search set per transaction);
- `hybrid`: the vector candidates and the full-text candidates (`tsv @@` an OR of the query's lexemes, ranked by
  `ts_rank_cd`) fused by reciprocal rank fusion, score = sum over lists of 1 / (60 + rank).
Either way `similarity` is the cosine similarity of the query and the chunk, and the threshold applies to it.
With a category filter the search is exact within the category (an HNSW scan filtered afterwards could return
fewer than `limit` rows when the category is small).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import IdempotencyConflict
from tollgate.models.rag import AiUsage, vector_literal
from tollgate.rag.embeddings import EmbeddingProvider, get_embedding_provider

SearchMode = Literal["vector", "hybrid"]
SEARCH_OPERATION = "faq_search"
RRF_K = 60
CANDIDATES_MIN = 20  # each list of a hybrid search brings at least this many candidates


@dataclass(frozen=True, slots=True)
class Hit:
    id: uuid.UUID
    question: str | None
    answer: str
    category: str
    similarity: float
    source: str | None = None
    score: float | None = None  # the fused RRF score (hybrid)


def _filters(category: str | None) -> str:
    return "embedding_model = :model AND embedding_dim = :dim" + (" AND category = :category" if category else "")


def retrieve(
    session: Session,
    provider: EmbeddingProvider,
    query_vector: Sequence[float],
    query_text: str,
    *,
    limit: int,
    threshold: float | None,
    category: str | None = None,
    mode: SearchMode = "vector",
    ef_search: int | None = None,
) -> list[Hit]:
    """The best chunks for a query, best first, at most `limit`, none below `threshold` similarity."""
    dim = int(provider.dimensions)
    vec = f"CAST(:vec AS vector({dim}))"
    col = f"embedding::vector({dim})"
    # With a category the order expression differs from the index's (`+ 0`): an exact scan of the category.
    order = f"({col} <=> {vec}) + 0" if category else f"{col} <=> {vec}"
    ef = ef_search or get_settings().rag_hnsw_ef_search
    session.execute(text("SELECT set_config('hnsw.ef_search', :ef, true)"), {"ef": str(max(ef, limit))})
    params: dict[str, Any] = {
        "vec": vector_literal(query_vector),
        "model": provider.model_id,
        "dim": dim,
        "category": category,
        "limit": limit,
    }
    if mode == "vector":
        sql = f"""
            SELECT id, question, answer, category, source, 1 - ({col} <=> {vec}) AS similarity, NULL AS score
            FROM faq_chunks WHERE {_filters(category)}
            ORDER BY {order} LIMIT :limit"""
    else:
        params["text"] = query_text
        params["candidates"] = max(limit * 4, CANDIDATES_MIN)
        params["rrf_k"] = RRF_K
        sql = f"""
            WITH vec AS (
                SELECT id, row_number() OVER (ORDER BY d) AS r FROM (
                    SELECT id, {col} <=> {vec} AS d FROM faq_chunks WHERE {_filters(category)}
                    ORDER BY {order} LIMIT :candidates) v
            ), tq AS (
                SELECT CAST(replace(CAST(plainto_tsquery('english', :text) AS text), ' & ', ' | ') AS tsquery) AS q
            ), kw AS (
                SELECT id, row_number() OVER (ORDER BY rank DESC, id) AS r FROM (
                    SELECT c.id, ts_rank_cd(c.tsv, tq.q) AS rank FROM faq_chunks c, tq
                    WHERE c.tsv @@ tq.q AND {_filters(category)}
                    ORDER BY rank DESC LIMIT :candidates) k
            ), fused AS (
                SELECT id, sum(1.0 / (:rrf_k + r)) AS score
                FROM (SELECT id, r FROM vec UNION ALL SELECT id, r FROM kw) u GROUP BY id
            )
            SELECT c.id, c.question, c.answer, c.category, c.source,
                   1 - (c.embedding::vector({dim}) <=> {vec}) AS similarity, f.score
            FROM fused f JOIN faq_chunks c ON c.id = f.id
            ORDER BY f.score DESC, similarity DESC LIMIT :limit"""
    rows = session.execute(text(sql), params).all()
    if mode == "vector" and not category and len(rows) < limit:
        # An HNSW scan hands back at most ef_search candidates before the model filter and row visibility are
        # applied (pgvector 0.6), so many rows of another model or many dead tuples can leave it short. Then
        # the exact scan answers: it is what the index approximates.
        rows = session.execute(text(sql.replace(f"ORDER BY {order}", f"ORDER BY ({col} <=> {vec}) + 0")), params).all()
    hits = [
        Hit(
            id=row.id,
            question=row.question,
            answer=row.answer,
            category=row.category,
            source=row.source,
            similarity=round(float(row.similarity), 6),
            score=None if row.score is None else float(row.score),
        )
        for row in rows
    ]
    if threshold is not None:
        hits = [hit for hit in hits if hit.similarity >= threshold]
    return hits


def request_fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def replay(session: Session, user_id: uuid.UUID, operation: str, key: str, fingerprint: str) -> dict[str, Any] | None:
    """The stored answer of an earlier request with this idempotency key, if any (409 if its body differed)."""
    row = session.scalar(
        select(AiUsage).where(
            AiUsage.user_id == user_id, AiUsage.operation == operation, AiUsage.idempotency_key == key
        )
    )
    if row is None:
        return None
    if row.request_hash != fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request", details={"idempotency_key": key}
        )
    return row.response


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    results: list[dict[str, Any]]
    mode: str
    charged: str
    balance: str | None
    transaction_id: str | None


def search(
    uow: UnitOfWork,
    user_id: uuid.UUID,
    query: str,
    *,
    limit: int = 5,
    threshold: float | None = None,
    category: str | None = None,
    mode: SearchMode | None = None,
    idempotency_key: str | None = None,
) -> SearchOutcome:
    """Search and charge `faq_search` in one transaction with its `ai_usage` row; a failed search charges nothing.

    A repeat with the same Idempotency-Key and body answers the first result again and charges nothing more.
    """
    from tollgate import ledger

    settings = get_settings()
    mode = mode or settings.rag_search_mode
    threshold = settings.rag_search_threshold if threshold is None else threshold
    provider = get_embedding_provider()
    fingerprint = request_fingerprint(
        {"query": query, "limit": limit, "threshold": threshold, "category": category, "mode": mode}
    )
    if idempotency_key:
        with uow:
            stored = replay(uow.session, user_id, SEARCH_OPERATION, idempotency_key, fingerprint)
        if stored is not None:
            return SearchOutcome(**stored)

    started = time.perf_counter()
    embedded = provider.embed([query])  # outside any transaction: it may call a remote provider
    with uow:
        session = uow.session
        hits = retrieve(
            session,
            provider,
            embedded.vectors[0],
            query,
            limit=limit,
            threshold=threshold,
            category=category,
            mode=mode,
        )
        charge = ledger.charge(
            session,
            user_id,
            operation=SEARCH_OPERATION,
            idempotency_key=f"rag-search:{idempotency_key}" if idempotency_key else None,
            # Only what the request says (the ledger fingerprints it): a replay must match it exactly.
            metadata={"mode": mode, "category": category},
        )
        outcome = SearchOutcome(
            results=[{k: v for k, v in asdict(hit).items() if k != "score"} | {"id": str(hit.id)} for hit in hits],
            mode=mode,
            charged=str(charge.charged),
            balance=None if charge.balance is None else str(charge.balance),
            transaction_id=str(charge.transaction_id) if charge.transaction_id else None,
        )
        session.add(
            AiUsage(
                user_id=user_id,
                operation=SEARCH_OPERATION,
                provider=provider.provider,
                model=provider.model_id,
                embedding_model=provider.model_id,
                input_tokens=embedded.tokens,
                output_tokens=0,
                credits_charged=Decimal(str(charge.charged)),
                credit_transaction_id=charge.transaction_id,
                latency_ms=int((time.perf_counter() - started) * 1000),
                status="success",
                idempotency_key=idempotency_key,
                request_hash=fingerprint,
                response=asdict(outcome) if idempotency_key else None,
                metadata_={"results": len(hits), "mode": mode, "category": category, "threshold": threshold},
            )
        )
        try:
            session.flush()
        except IntegrityError:
            # The same key raced in from a concurrent request: answer what that one stored.
            uow.rollback()
            stored = replay(session, user_id, SEARCH_OPERATION, idempotency_key or "", fingerprint)
            if stored is None:
                raise
            return SearchOutcome(**stored)
        uow.commit()
    return outcome
