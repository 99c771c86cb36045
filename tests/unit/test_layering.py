"""The layer's import direction: handlers -> services -> ledger / payments adapters / models / db. A module of a
lower package never imports a higher one, so a provider adapter or the ledger can never start a business step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYER = Path(__file__).resolve().parents[2] / "layers" / "shared" / "tollgate"

# package -> packages it must never import (at module level or inside a function)
FORBIDDEN = {
    "payments": ("tollgate.services", "tollgate.jobs", "tollgate.http"),
    "ledger": ("tollgate.services", "tollgate.jobs", "tollgate.http", "tollgate.payments"),
    "db": ("tollgate.services", "tollgate.jobs", "tollgate.http", "tollgate.payments", "tollgate.ledger"),
    "models": ("tollgate.services", "tollgate.jobs", "tollgate.http", "tollgate.payments", "tollgate.ledger"),
    "mail": ("tollgate.services", "tollgate.jobs", "tollgate.http"),
    "services": ("tollgate.http", "tollgate.jobs"),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_never_import_higher_ones(package: str) -> None:
    # Given every module of the package
    modules = sorted((LAYER / package).rglob("*.py"))
    assert modules, f"no modules under {package}"
    # When their imports are read
    offending = [
        f"{path.relative_to(LAYER)} imports {name}"
        for path in modules
        for name in _imports(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package])
    ]
    # Then none reaches a higher layer
    assert offending == []
