"""`tollgate rag ingest PATH` and `tollgate rag reembed`, the knowledge-base file formats, and the seed loader of
the example knowledge base (`knowledge_base:` in seed.yaml).

Files:
- `*.yaml` / `*.yml`: a Q&A list, either `{category, entries: [{q, a, metadata?}]}` or a list of
  `{question, answer, category, metadata?}`;
- `*.md`: a markdown document, split on headings and paragraphs; its category is `--category` or the file's stem,
  its source the path relative to the folder ingested (a new version replaces the old chunks).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from tollgate.db import UnitOfWork
from tollgate.rag.text import ChunkDraft
from tollgate_local.seed import loader

KNOWLEDGE_DIR = Path(__file__).with_name("knowledge")
PARAPHRASES_FILE = KNOWLEDGE_DIR / "paraphrases.yaml"
KNOWLEDGE_SUFFIXES = {".yaml", ".yml", ".md"}


@dataclass
class KnowledgeFiles:
    qa: list[ChunkDraft] = field(default_factory=list)
    markdown: list[tuple[list[ChunkDraft], str]] = field(default_factory=list)  # (chunks, source)

    @property
    def chunk_count(self) -> int:
        return len(self.qa) + sum(len(chunks) for chunks, _ in self.markdown)


def _qa_entries(data: Any, path: Path) -> Iterator[tuple[str, str, str, dict[str, Any] | None]]:
    if isinstance(data, dict) and "entries" in data:
        category = str(data.get("category") or path.stem)
        for entry in data["entries"] or []:
            yield str(entry["q"]), str(entry["a"]), str(entry.get("category", category)), entry.get("metadata")
    elif isinstance(data, list):
        for entry in data:
            yield str(entry["question"]), str(entry["answer"]), str(entry["category"]), entry.get("metadata")
    else:
        raise ValueError(f"{path}: expected {{category, entries: [...]}} or a list of Q&A objects")


def read_knowledge(path: Path, category: str | None = None) -> KnowledgeFiles:
    """Every Q&A entry and markdown document under `path` (a file or a folder), as chunk drafts."""
    from tollgate.rag.text import qa_chunk
    from tollgate.services.rag_ingest import markdown_drafts

    root = path if path.is_dir() else path.parent
    files = sorted(p for p in path.rglob("*") if p.suffix in KNOWLEDGE_SUFFIXES) if path.is_dir() else [path]
    found = KnowledgeFiles()
    for file in files:
        if file == PARAPHRASES_FILE or file.name.startswith("paraphrases"):
            continue  # the labelled evaluation set is not knowledge
        relative = file.relative_to(root).as_posix()
        if file.suffix == ".md":
            drafts, source = markdown_drafts(
                file.read_text(encoding="utf-8"), category or file.stem, f"file:{relative}"
            )
            found.markdown.append((drafts, source))
            continue
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
        for question, answer, entry_category, metadata in _qa_entries(data, file):
            found.qa.append(qa_chunk(question, answer, category or entry_category, metadata, f"file:{relative}"))
    return found


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise)."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.started = time.monotonic()
        self._last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        fraction = 1.0 if total == 0 else done / total
        filled = int(self.width * fraction)
        rate = done / max(time.monotonic() - self.started, 1e-9)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} chunks ({rate:.0f}/s)"
        if self.stream.isatty():
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        elif int(fraction * 10) != self._last_decile:
            self._last_decile = int(fraction * 10)
            self.stream.write(line + "\n")
        self.stream.flush()


def ingest_path(path: Path, category: str | None = None, *, show_progress: bool = True) -> dict[str, int]:
    """Ingest every knowledge file under `path` with the configured embedding model. Returns the totals."""
    from tollgate.config import get_settings
    from tollgate.rag.embeddings import get_embedding_provider
    from tollgate.services.rag_ingest import ingest
    from tollgate_local.operator import operator_actor

    actor = operator_actor()
    knowledge = read_knowledge(path, category)
    provider = get_embedding_provider()
    batch = get_settings().embedding_batch_size
    totals = {"created": 0, "updated": 0, "unchanged": 0, "deleted": 0, "embedded": 0}
    batches: list[tuple[list[ChunkDraft], str | None, str]] = []
    if knowledge.qa:
        batches.append((knowledge.qa, None, "Q&A"))
    batches += [(drafts, source, source) for drafts, source in knowledge.markdown]
    for drafts, replace_source, label in batches:
        progress = ProgressBar(f"{label[:40]:40}") if show_progress else None
        report = ingest(
            UnitOfWork(), actor, drafts, provider, replace_source=replace_source, batch_size=batch, progress=progress
        )
        for name in totals:
            totals[name] += getattr(report, name)
    return totals


@loader("knowledge_base")
def _seed_knowledge_base(uow: UnitOfWork, content: Any) -> int:
    """The example knowledge base. Ingestion commits in its own units of work (embedding happens between two
    short transactions), so `uow` is not used; seeding twice embeds nothing the second time."""
    spec = content or {}
    folder = Path(spec.get("path", "knowledge"))
    if not folder.is_absolute():
        folder = Path(__file__).parent / folder
    # Embedding the example set takes seconds on first start: show it where someone watches.
    totals = ingest_path(folder, show_progress=sys.stderr.isatty())
    return totals["created"] + totals["updated"]


def cmd_ingest(args: argparse.Namespace) -> int:
    from tollgate_local.cli import _prepare_database

    path = Path(args.path)
    if not path.exists():
        print(f"no such file or folder: {path}", file=sys.stderr)
        return 2
    _prepare_database()
    started = time.monotonic()
    totals = ingest_path(path, args.category)
    seconds = time.monotonic() - started
    print(
        f"created {totals['created']}, updated {totals['updated']}, unchanged {totals['unchanged']}, "
        f"deleted {totals['deleted']}; embedded {totals['embedded']} chunks in {seconds:.1f}s"
    )
    return 0


def cmd_reembed(args: argparse.Namespace) -> int:
    from tollgate.config import get_settings
    from tollgate.rag.embeddings import get_embedding_provider
    from tollgate.services.rag_ingest import reembed
    from tollgate_local.cli import _prepare_database
    from tollgate_local.operator import operator_actor

    _prepare_database()
    provider = get_embedding_provider()
    done = reembed(
        UnitOfWork(),
        operator_actor(),
        provider,
        batch_size=get_settings().embedding_batch_size,
        progress=ProgressBar(f"re-embedding with {provider.model_id}"),
        force=args.force,
    )
    print(f"{done} chunks now embedded with {provider.model_id} ({provider.dimensions} dimensions)")
    return 0


def add_rag_commands(sub: Any) -> None:
    rag = sub.add_parser("rag", help="knowledge base: ingest files, re-embed with the configured model")
    rag_sub = rag.add_subparsers(dest="rag_command", required=True)
    ingest = rag_sub.add_parser("ingest", help="ingest Q&A YAML and markdown files (a file or a folder)")
    ingest.add_argument("path")
    ingest.add_argument("--category", help="category of every chunk (default: from the file)")
    ingest.set_defaults(func=cmd_ingest)
    reembed = rag_sub.add_parser("reembed", help="move every chunk to the configured embedding model")
    reembed.add_argument("--force", action="store_true", help="re-embed chunks already on that model too")
    reembed.set_defaults(func=cmd_reembed)
