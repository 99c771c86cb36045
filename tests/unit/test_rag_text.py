"""Chunking of Q&A entries and markdown: keys, hashes, bounded sizes, heading paths."""

from __future__ import annotations

from tollgate.rag.text import MAX_CHUNK_CHARS, estimate_tokens, markdown_chunks, preview, qa_chunk

GUIDE = """# Guide

Tollgate is a backend.

## Install

Run make run.

Then open the docs.

## Deploy
### AWS

Use sam deploy.

```
# not a heading inside a code fence
sam build
```
"""


def test_qa_chunk_key_ignores_case_spacing_and_trailing_punctuation() -> None:
    # Given the same question written twice with different case, spacing and punctuation
    first = qa_chunk("How do I reset my password?", "Use the link.", "accounts")
    second = qa_chunk("  how do I   reset my password ", "Use the link.", "accounts")
    # Then they are the same chunk (a new spelling updates it), and the embedded text is question then answer
    assert first.chunk_key == second.chunk_key == "qa:how do i reset my password"
    assert first.content == "How do I reset my password?\nUse the link."


def test_qa_chunk_hash_changes_with_the_answer() -> None:
    # Given one question with two different answers
    old = qa_chunk("What is Tollgate?", "A backend.", "general")
    new = qa_chunk("What is Tollgate?", "A serverless backend.", "general")
    # Then the key stays and the hash moves (so the chunk is updated and re-embedded)
    assert old.chunk_key == new.chunk_key
    assert old.content_hash != new.content_hash


def test_markdown_is_split_on_headings_with_their_paths() -> None:
    # When a guide with nested headings is chunked
    chunks = markdown_chunks(GUIDE, "guide", "file:guide.md")
    # Then each section is a chunk titled by its heading path, in document order
    assert [c.question for c in chunks] == ["Guide", "Guide > Install", "Guide > Deploy > AWS"]
    assert chunks[1].answer == "Run make run.\n\nThen open the docs."
    assert chunks[1].content.startswith("Guide > Install\n")
    # And a `#` inside a code fence is text, not a heading
    assert "# not a heading inside a code fence" in chunks[2].answer
    assert all(c.kind == "markdown" and c.source == "file:guide.md" for c in chunks)
    assert len({c.chunk_key for c in chunks}) == 3


def test_long_sections_are_split_into_bounded_chunks_at_paragraphs_and_sentences() -> None:
    # Given a section of many paragraphs and one enormous paragraph of sentences
    paragraphs = [f"Paragraph {i} " + "word " * 60 for i in range(12)]
    giant = " ".join(f"Sentence number {i} says something long enough to matter." for i in range(80))
    markdown = "# Big\n\n" + "\n\n".join(paragraphs) + "\n\n" + giant
    # When it is chunked
    chunks = markdown_chunks(markdown, "guide", "file:big.md")
    # Then no chunk body exceeds the bound, nothing is lost, and parts are numbered within the section
    assert len(chunks) > 3
    assert all(len(c.answer) <= MAX_CHUNK_CHARS for c in chunks)
    joined = " ".join(c.answer for c in chunks)
    assert all(f"Paragraph {i} " in joined for i in range(12))
    assert "Sentence number 79" in joined
    assert [c.metadata["part"] for c in chunks] == list(range(len(chunks)))


def test_blank_markdown_has_no_chunks() -> None:
    assert markdown_chunks("# Only a title\n\n## And another\n", "guide", "x") == []


def test_preview_and_token_estimate() -> None:
    # A long answer previews cut at a word, with an ellipsis
    text = "alpha beta " * 100
    short = preview(text, 30)
    assert len(short) <= 30 and short.endswith("…")
    assert preview("short answer") == "short answer"
    # Tokens are estimated at ~4 characters each, never 0 for text
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("a" * 4000) == 1000
