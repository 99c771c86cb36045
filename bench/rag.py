"""Knowledge-base benchmark (issue 7): 10,000 chunks in pgvector, searched through the HNSW index.

Prints:
- ingestion throughput (chunks/s) of the real ingestion path (hash check, batched local embedding, insert with
  the HNSW index maintained);
- in-database search latency p50/p95 (the service's SQL, timed around its round trip) for several ef_search
  values, with recall@10 of HNSW against exact search (a sequential scan of the same rows) - and the exact
  search's own latency, the floor an index has to beat;
- end-to-end latency p50/p95: embedding the query with the local model + the search, in a fresh transaction;
- quality on the real example knowledge base: hit@1 / hit@3 / MRR of the labelled paraphrase set, vector vs hybrid.

It starts its own embedded PostgreSQL in a temp folder and migrates it. Synthetic chunks are distinct sentences
built from vocabularies (fine for latency and recall; quality is measured on the real knowledge base only).
Run: `.venv/bin/python bench/rag.py [--chunks 10000] [--queries 200]`. The machine has 2 shared cores: figures
move by 10-30% between runs.
"""

from __future__ import annotations

import argparse
import atexit
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT / "local")]
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

VERBS = [
    "configure",
    "rotate",
    "export",
    "import",
    "reset",
    "archive",
    "audit",
    "migrate",
    "renew",
    "cancel",
    "upgrade",
    "restore",
    "schedule",
    "validate",
    "refund",
    "invite",
    "revoke",
    "merge",
    "tag",
    "monitor",
]
ADJECTIVES = [
    "shared",
    "primary",
    "billing",
    "regional",
    "encrypted",
    "temporary",
    "legacy",
    "default",
    "annual",
    "team",
    "personal",
    "sandbox",
    "production",
    "weekly",
    "archived",
    "pending",
    "external",
    "internal",
    "custom",
    "trial",
]
NOUNS = [
    "workspace",
    "invoice",
    "webhook",
    "api key",
    "subscription",
    "report",
    "database",
    "storage bucket",
    "mailbox",
    "dashboard",
    "credit pack",
    "project",
    "user group",
    "calendar",
    "pipeline",
    "certificate",
    "domain",
    "payment method",
    "notification",
    "backup",
]
CONTEXTS = [
    "on mobile",
    "for a new hire",
    "before the month ends",
    "after a failed payment",
    "in the EU region",
    "from the command line",
    "without admin rights",
    "during a migration",
    "for an enterprise customer",
    "when the trial expires",
    "with two-factor enabled",
    "across time zones",
    "in bulk",
    "via the API",
    "for a suspended account",
    "after a refund",
    "in read-only mode",
    "on a shared device",
    "when offline",
    "for compliance",
]
STEPS = [
    "open the settings page",
    "select the item",
    "confirm with your password",
    "wait for the email",
    "check the audit log",
    "press save",
    "download the file",
    "ask an administrator",
    "run the CLI command",
    "refresh the page",
]


def synthetic_chunks(n: int, seed: int = 7) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    seen: set[tuple[int, int, int, int]] = set()
    rows: list[tuple[str, str, str]] = []
    while len(rows) < n:
        pick = (rng.randrange(20), rng.randrange(20), rng.randrange(20), rng.randrange(20))
        if pick in seen:
            continue
        seen.add(pick)
        v, a, noun, c = VERBS[pick[0]], ADJECTIVES[pick[1]], NOUNS[pick[2]], CONTEXTS[pick[3]]
        s1, s2 = rng.sample(STEPS, 2)
        rows.append(
            (
                f"How do I {v} the {a} {noun} {c}?",
                f"To {v} the {a} {noun} {c}, {s1}, then {s2}. Reference {len(rows)}.",
                NOUNS[pick[2]].replace(" ", "-"),
            )
        )
    return rows


def synthetic_queries(n: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    forms = ["what are the steps to {v} my {a} {noun} {c}", "{v} {a} {noun} {c}", "can I {v} a {a} {noun} {c}?"]
    return [
        rng.choice(forms).format(
            v=rng.choice(VERBS), a=rng.choice(ADJECTIVES), noun=rng.choice(NOUNS), c=rng.choice(CONTEXTS)
        )
        for _ in range(n)
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1000:6.2f} ms   p95 {pct(values, 0.95) * 1000:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="20,40,64,100", help="ef_search values to measure")
    args = parser.parse_args()

    from tollgate_local.database import start_embedded

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-rag-"))
    server, url = start_embedded(workdir / "pgdata", "bench_rag", throwaway=True)  # deleted at exit
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    os.environ["DATABASE_URL"] = url
    from tollgate.config import get_settings

    get_settings.cache_clear()
    from tollgate.db.engine import reset_engine

    reset_engine()
    from tollgate_local.migrations import upgrade

    upgrade("0004_rag")  # the knowledge base's branch is all this benchmark needs

    from sqlalchemy import text

    from tollgate.db import UnitOfWork
    from tollgate.models.rag import vector_literal
    from tollgate.rag.embeddings import LocalMiniLM
    from tollgate.services.authz import Actor
    from tollgate.services.rag_ingest import QaDocument, ingest, qa_drafts
    from tollgate.services.rag_search import retrieve
    from tollgate_local.rag_cli import KNOWLEDGE_DIR, PARAPHRASES_FILE, ingest_path

    t0 = time.perf_counter()
    model = LocalMiniLM()
    print(f"local model loaded in {(time.perf_counter() - t0) * 1000:.0f} ms (all-MiniLM-L6-v2 int8, onnxruntime)")

    # --- ingestion --------------------------------------------------------------------------------------------
    rows = synthetic_chunks(args.chunks)
    drafts = qa_drafts([QaDocument(q, a, c) for q, a, c in rows], source="bench")
    t0 = time.perf_counter()
    report = ingest(UnitOfWork(), Actor.operator("bench"), drafts, model, batch_size=64)
    seconds = time.perf_counter() - t0
    print(f"\ningestion: {report.created} chunks in {seconds:.1f} s = {report.created / seconds:.0f} chunks/s "
          f"(embedding in batches of 64 + insert with the HNSW index maintained)")  # fmt: skip
    t0 = time.perf_counter()
    again = ingest(UnitOfWork(), Actor.operator("bench"), drafts, model, batch_size=64)
    print(f"re-ingesting the same {again.unchanged} chunks: {time.perf_counter() - t0:.2f} s, "
          f"{again.embedded} embedded (dedupe by content hash)")  # fmt: skip
    with UnitOfWork() as uow:
        uow.session.execute(text("ANALYZE faq_chunks"))
        uow.commit()

    # --- search latency and recall ------------------------------------------------------------------------------
    queries = synthetic_queries(args.queries)
    vectors = model.embed(queries).vectors

    def exact_top10(vector: list[float]) -> tuple[list[Any], float]:
        with UnitOfWork() as uow:
            t = time.perf_counter()
            ids = (
                uow.session.execute(
                    text(
                        "SELECT id FROM faq_chunks WHERE embedding_model = :m AND embedding_dim = 384 "
                        "ORDER BY (embedding::vector(384) <=> CAST(:v AS vector(384))) + 0 LIMIT 10"
                    ),
                    {"m": model.model_id, "v": vector_literal(vector)},
                )
                .scalars()
                .all()
            )
            return list(ids), time.perf_counter() - t

    truth: list[list[Any]] = []
    exact_times: list[float] = []
    for vector in vectors:
        ids, took = exact_top10(vector)
        truth.append(ids)
        exact_times.append(took)
    print(f"\nexact search (sequential scan, the floor an index must beat): {ms(exact_times)}")

    with UnitOfWork() as uow:
        plan = (
            uow.session.execute(
                text(
                    "EXPLAIN SELECT id FROM faq_chunks WHERE embedding_model = :m AND embedding_dim = 384 "
                    "ORDER BY embedding::vector(384) <=> CAST(:v AS vector(384)) LIMIT 10"
                ),
                {"m": model.model_id, "v": vector_literal(vectors[0])},
            )
            .scalars()
            .all()
        )
    index_used = any("ix_faq_chunks_hnsw_384" in line for line in plan)
    print(f"plan uses ix_faq_chunks_hnsw_384: {index_used}")

    print("\nHNSW (m=16, ef_construction=100), in-database (the service's SQL round trip):")
    for ef in (int(x) for x in args.ef.split(",")):
        times: list[float] = []
        recalls: list[float] = []
        for vector, expected in zip(vectors, truth, strict=True):
            with UnitOfWork() as uow:
                t = time.perf_counter()
                hits = retrieve(uow.session, model, vector, "", limit=10, threshold=None, ef_search=ef)
                times.append(time.perf_counter() - t)
            recalls.append(len({h.id for h in hits} & set(expected)) / 10)
        print(f"  ef_search {ef:4d}: {ms(times)}   recall@10 {statistics.mean(recalls):.4f}")

    ef_default = get_settings().rag_hnsw_ef_search
    e2e: list[float] = []
    embed_only: list[float] = []
    for query in queries:
        t = time.perf_counter()
        vector = model.embed([query]).vectors[0]
        embed_only.append(time.perf_counter() - t)
        with UnitOfWork() as uow:
            retrieve(uow.session, model, vector, query, limit=5, threshold=None, ef_search=ef_default)
        e2e.append(time.perf_counter() - t)
    print(f"\nend to end (embed the query locally + search, ef_search {ef_default}): {ms(e2e)}")
    print(f"  of which embedding the query: {ms(embed_only)}")

    # --- quality on the real knowledge base ---------------------------------------------------------------------
    with UnitOfWork() as uow:
        # TRUNCATE, not DELETE: 10,000 dead tuples left in the HNSW graph until VACUUM would starve its scans.
        uow.session.execute(text("TRUNCATE faq_chunks"))
        uow.commit()
    totals = ingest_path(KNOWLEDGE_DIR, show_progress=False)
    labelled = yaml.safe_load(PARAPHRASES_FILE.read_text(encoding="utf-8"))
    threshold = get_settings().rag_search_threshold
    print(f"\nquality: {totals['created']} chunks of the example knowledge base, {len(labelled)} labelled "
          f"paraphrases, threshold {threshold}")  # fmt: skip
    qvectors = model.embed([item["question"] for item in labelled]).vectors
    for mode in ("vector", "hybrid"):
        hit1 = hit3 = 0
        rr = 0.0
        for item, vector in zip(labelled, qvectors, strict=True):
            with UnitOfWork() as uow:
                found = [h.question for h in retrieve(
                    uow.session, model, vector, item["question"], limit=10, threshold=threshold, mode=mode
                )]  # fmt: skip
            if item["expected"] in found:
                rank = found.index(item["expected"]) + 1
                rr += 1 / rank
                hit1 += rank == 1
                hit3 += rank <= 3
        n = len(labelled)
        print(f"  {mode:6}: hit@1 {hit1 / n:.3f}   hit@3 {hit3 / n:.3f}   MRR@10 {rr / n:.3f}")
    print(f"\ndefault mode (RAG_SEARCH_MODE): {get_settings().rag_search_mode}")
    print(f"total bench time {time.monotonic() - started:.0f} s")
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
