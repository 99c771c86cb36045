"""Retrieval quality on the shipped knowledge base: the labelled paraphrase set (questions worded differently from
the stored ones) finds its entry in the top 3 at least 90% of the time with the default search."""

from __future__ import annotations

from collections.abc import Callable

import yaml

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.rag.embeddings import get_embedding_provider
from tollgate.services.rag_search import retrieve
from tollgate_local.rag_cli import KNOWLEDGE_DIR, PARAPHRASES_FILE, ingest_path, read_knowledge


def test_paraphrase_labels_name_stored_questions() -> None:
    stored = {draft.question for draft in read_knowledge(KNOWLEDGE_DIR).qa}
    labelled = yaml.safe_load(PARAPHRASES_FILE.read_text(encoding="utf-8"))
    assert len(labelled) >= 50
    assert [item["expected"] for item in labelled if item["expected"] not in stored] == []
    assert all(item["question"].lower() != item["expected"].lower() for item in labelled)


def test_hit_at_3_on_the_paraphrase_set_is_at_least_0_9(db: Callable[[], UnitOfWork]) -> None:
    # Given the example knowledge base ingested
    ingest_path(KNOWLEDGE_DIR, show_progress=False)
    provider = get_embedding_provider()
    labelled = yaml.safe_load(PARAPHRASES_FILE.read_text(encoding="utf-8"))
    settings = get_settings()
    # When every paraphrase is searched with the default mode and threshold
    hits = 0
    for item in labelled:
        vector = provider.embed([item["question"]]).vectors[0]
        with db() as uow:
            found = retrieve(
                uow.session, provider, vector, item["question"], limit=3,
                threshold=settings.rag_search_threshold, mode=settings.rag_search_mode,
            )  # fmt: skip
        hits += item["expected"] in [hit.question for hit in found]
    # Then at least 90% find their entry in the top 3
    assert hits / len(labelled) >= 0.9, f"hit@3 = {hits}/{len(labelled)}"
