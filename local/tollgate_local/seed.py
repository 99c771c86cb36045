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
    """Load every section that has a loader, each in its own transaction (a loader such as the knowledge base
    runs short transactions of its own, which must not wait for a connection the seed holds: the functions'
    pool has one). Seeding is idempotent, so a section that fails can be loaded again. Returns rows written per
    section."""
    # Loaders live beside their area's code and register themselves when imported.
    from tollgate_local import rag_cli, seed_catalogue  # noqa: F401  (knowledge_base; plans, packs, costs)

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the seed file must be a mapping of sections")
    written: dict[str, int] = {}
    for section, content in data.items():
        load = LOADERS.get(section)
        if load is None:
            log.warning("seed: no loader for section %r yet; skipped", section)
            continue
        with UnitOfWork() as uow:
            written[section] = load(uow, content)
            uow.commit()
    return written
