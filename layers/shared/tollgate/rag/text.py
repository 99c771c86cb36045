"""Text handling for the knowledge base: chunking Q&A lists and markdown, chunk keys, hashes, token estimates."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_CHUNK_CHARS = 1000  # ~220 tokens: under MiniLM's 256-token window, so nothing of a chunk is truncated away
MIN_CHUNK_CHARS = 200  # a short trailing paragraph joins its neighbour instead of standing alone
PREVIEW_CHARS = 280
KEY_CHARS = 500

_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")


def estimate_tokens(text: str) -> int:
    """Provider-independent token estimate (~4 characters a token for English), never 0 for non-empty text."""
    return math.ceil(len(text) / 4) if text else 0


def normalise_space(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    flat = normalise_space(text)
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1].rsplit(" ", 1)[0]
    return cut + "…"


def _bounded_key(prefix: str, text: str) -> str:
    key = f"{prefix}{text}"
    if len(key) <= KEY_CHARS:
        return key
    return key[: KEY_CHARS - 17] + ":" + content_hash(key)[:16]


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A chunk before it is stored: what identifies it, what is embedded, what is shown."""

    chunk_key: str
    kind: str  # qa | markdown
    category: str
    question: str | None
    answer: str
    content: str  # the embedded text
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return content_hash(self.content)


def qa_chunk(
    question: str, answer: str, category: str, metadata: dict[str, Any] | None = None, source: str | None = None
) -> ChunkDraft:
    q = normalise_space(question)
    a = answer.strip()
    key_text = q.lower().rstrip("?!. ")
    return ChunkDraft(
        chunk_key=_bounded_key("qa:", key_text),
        kind="qa",
        category=category,
        question=q,
        answer=a,
        content=f"{q}\n{a}",
        source=source,
        metadata=dict(metadata or {}),
    )


def _split_long(paragraph: str, limit: int) -> list[str]:
    """A paragraph longer than `limit`: cut at sentence ends, and inside a very long sentence at spaces."""
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(paragraph):
        while len(sentence) > limit:
            cut = sentence[:limit].rsplit(" ", 1)[0] or sentence[:limit]
            if current:
                pieces.append(current)
                current = ""
            pieces.append(cut)
            sentence = sentence[len(cut) :].lstrip()
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return pieces


def _pack(paragraphs: list[str], limit: int) -> list[str]:
    """Paragraphs packed into chunks of at most `limit` characters, in order, never splitting a paragraph that
    fits; a small remainder is merged into the previous chunk when that stays within the limit."""
    chunks: list[str] = []
    current = ""
    for paragraph in paragraphs:
        for piece in _split_long(paragraph, limit) if len(paragraph) > limit else [paragraph]:
            if current and len(current) + 2 + len(piece) > limit:
                chunks.append(current)
                current = piece
            else:
                current = f"{current}\n\n{piece}" if current else piece
    if current:
        if chunks and len(current) < MIN_CHUNK_CHARS and len(chunks[-1]) + 2 + len(current) <= limit:
            chunks[-1] = f"{chunks[-1]}\n\n{current}"
        else:
            chunks.append(current)
    return chunks


def markdown_chunks(
    markdown: str, category: str, source: str, metadata: dict[str, Any] | None = None, limit: int = MAX_CHUNK_CHARS
) -> list[ChunkDraft]:
    """Split markdown on headings, then on paragraphs, into chunks of at most `limit` characters of body.

    Each chunk carries its heading path ("Guide > Install > Linux") as its question-like title and as the first
    line of what is embedded, so a chunk says what it is about even when its section is long.
    """
    sections: list[tuple[list[str], list[str]]] = []
    path: list[tuple[int, str]] = []
    paragraphs: list[str] = []
    lines: list[str] = []
    in_fence = False

    def flush_paragraph() -> None:
        if lines:
            text = "\n".join(lines).strip()
            if text:
                paragraphs.append(text)
            lines.clear()

    def flush_section() -> None:
        flush_paragraph()
        if paragraphs:
            sections.append(([title for _, title in path], list(paragraphs)))
            paragraphs.clear()

    for raw in markdown.splitlines():
        if raw.strip().startswith("```"):
            in_fence = not in_fence
            lines.append(raw)
            continue
        heading = None if in_fence else _HEADING.match(raw)
        if heading:
            flush_section()
            level, title = len(heading.group(1)), heading.group(2).strip()
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
        elif not raw.strip() and not in_fence:
            flush_paragraph()
        else:
            lines.append(raw.rstrip())
    flush_section()

    drafts: list[ChunkDraft] = []
    seen: dict[str, int] = {}
    for titles, section_paragraphs in sections:
        heading_path = " > ".join(titles)
        section_key = slug(heading_path) or "intro"
        for body in _pack(section_paragraphs, limit):
            n = seen.get(section_key, 0)
            seen[section_key] = n + 1
            drafts.append(
                ChunkDraft(
                    chunk_key=_bounded_key(f"md:{source}:", f"{section_key}:{n}"),
                    kind="markdown",
                    category=category,
                    question=heading_path or None,
                    answer=body,
                    content=f"{heading_path}\n{body}" if heading_path else body,
                    source=source,
                    metadata={**(metadata or {}), "section": heading_path, "part": n},
                )
            )
    return drafts
