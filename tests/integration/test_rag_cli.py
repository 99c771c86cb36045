"""`tollgate rag ingest PATH`, `tollgate rag reembed` and the knowledge_base seed section."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tollgate.db import UnitOfWork
from tollgate.models.rag import FaqChunk
from tollgate_local.cli import main
from tollgate_local.seed import seed

QA_YAML = """
category: demo
entries:
  - q: "What colour is the sky?"
    a: "Blue on a clear day."
  - q: "How many legs does a spider have?"
    a: "Eight."
"""
GUIDE_MD = "# Demo guide\n\n## Part one\n\nSome words.\n\n## Part two\n\nMore words.\n"


def _count(db: Callable[[], UnitOfWork]) -> int:
    with db() as uow:
        return int(uow.session.scalar(select(func.count()).select_from(FaqChunk)) or 0)


def test_rag_ingest_reads_yaml_and_markdown_with_a_progress_bar(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given a folder with a Q&A file and a markdown guide (and a paraphrase file, which is not knowledge)
    (tmp_path / "faq.yaml").write_text(QA_YAML)
    (tmp_path / "guide.md").write_text(GUIDE_MD)
    (tmp_path / "paraphrases.yaml").write_text("- question: x\n  expected: y\n")
    # When it is ingested from the CLI
    assert main(["rag", "ingest", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    # Then 4 chunks are created, a progress bar per document went to stderr and the totals to stdout
    assert "created 4, updated 0, unchanged 0, deleted 0; embedded 4 chunks" in out
    bars = [line for line in err.splitlines() if "2/2 chunks" in line]
    assert len(bars) == 2 and bars[0].startswith("Q&A") and "file:guide.md" in bars[1]
    assert _count(db) == 4
    with db() as uow:
        guide = uow.session.scalars(select(FaqChunk.category).where(FaqChunk.kind == "markdown")).all()
    assert guide == ["guide", "guide"]  # a markdown file's category is its stem
    # When it is ingested again, nothing is embedded
    assert main(["rag", "ingest", str(tmp_path)]) == 0
    assert "created 0, updated 0, unchanged 4, deleted 0; embedded 0 chunks" in capsys.readouterr().out


def test_rag_ingest_of_a_missing_path_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rag", "ingest", "/no/such/folder"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_rag_reembed_reports_what_it_moved(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "faq.yaml").write_text(QA_YAML)
    main(["rag", "ingest", str(tmp_path)])
    capsys.readouterr()
    # Already on the configured model: nothing to do, unless forced
    assert main(["rag", "reembed"]) == 0
    assert "0 chunks now embedded with all-MiniLM-L6-v2-int8 (384 dimensions)" in capsys.readouterr().out
    assert main(["rag", "reembed", "--force"]) == 0
    assert "2 chunks now embedded" in capsys.readouterr().out


def test_the_knowledge_base_seed_section_is_idempotent(db: Callable[[], UnitOfWork], tmp_path: Path) -> None:
    # Given a seed file with only the knowledge_base section, pointing at a folder
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "faq.yaml").write_text(QA_YAML)
    seed_file = tmp_path / "seed.yaml"
    seed_file.write_text(f"knowledge_base:\n  path: {tmp_path / 'kb'}\n")
    # When it is seeded twice
    first = seed(seed_file)
    second = seed(seed_file)
    # Then the chunks are written once
    assert first == {"knowledge_base": 2} and second == {"knowledge_base": 0}
    assert _count(db) == 2
