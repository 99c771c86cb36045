"""Is the backend able to serve: the database answers and its schema is at the revisions this code expects."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from tollgate.db import UnitOfWork
from tollgate.db.schema_heads import SCHEMA_HEADS, SCHEMA_REVISIONS
from tollgate.errors import DependencyUnavailable, SchemaOutdated


@dataclass(frozen=True, slots=True)
class HealthReport:
    database: str
    schema_version: str | None


def check_health(
    uow: UnitOfWork, expected: Collection[str] = SCHEMA_HEADS, known: Collection[str] = SCHEMA_REVISIONS
) -> HealthReport:
    """Raises DependencyUnavailable when the database does not answer, SchemaOutdated (503) while the schema is
    behind `expected` (empty, half-migrated, a failed deploy). A revision outside `known` is a schema newer than
    this code (a deploy in progress migrated first): that still serves."""
    try:
        with uow:
            uow.session.execute(text("SELECT 1"))
            try:
                # Several heads may be applied at once (independent branches); report them all.
                found = list(
                    uow.session.execute(text("SELECT version_num FROM alembic_version ORDER BY version_num")).scalars()
                )
            except ProgrammingError:  # no alembic_version: never migrated
                uow.rollback()
                found = []
    except DBAPIError as exc:
        raise DependencyUnavailable("the database is unreachable", details={"database": "down"}) from exc
    newer = any(version not in known for version in found)
    if set(found) != set(expected) and not newer:
        raise SchemaOutdated(
            "the database schema is not at the expected revisions",
            details={"expected": sorted(expected), "found": found},
        )
    return HealthReport(database="ok", schema_version=",".join(found))
