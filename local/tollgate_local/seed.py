"""`tollgate seed`: load example data from a YAML file (default: the catalogue shipped with the project).

Each top-level section of the file is loaded by the loader registered for it; loaders are idempotent, so
seeding twice changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tollgate.db import UnitOfWork

log = logging.getLogger("tollgate_local.seed")
DEFAULT_SEED_FILE = Path(__file__).with_name("seed.yaml")

SectionLoader = Callable[[UnitOfWork, Any], int]
LOADERS: dict[str, SectionLoader] = {}


def loader(section: str) -> Callable[[SectionLoader], SectionLoader]:
    def register(fn: SectionLoader) -> SectionLoader:
        LOADERS[section] = fn
        return fn

    return register


def seed(path: Path = DEFAULT_SEED_FILE) -> dict[str, int]:
    """Load every section that has a loader, in one transaction. Returns rows written per section."""
    # Loaders live beside their area's code and register themselves when imported.
    from tollgate_local import rag_cli, seed_catalogue  # noqa: F401  (knowledge_base; plans, packs, costs)

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the seed file must be a mapping of sections")
    written: dict[str, int] = {}
    with UnitOfWork() as uow:
        for section, content in data.items():
            load = LOADERS.get(section)
            if load is None:
                log.warning("seed: no loader for section %r yet; skipped", section)
                continue
            written[section] = load(uow, content)
        uow.commit()
    return written
