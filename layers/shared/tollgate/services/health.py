"""Is the backend able to serve: the database answers and its schema version is known."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from tollgate.db import UnitOfWork
from tollgate.errors import DependencyUnavailable


@dataclass(frozen=True, slots=True)
class HealthReport:
    database: str
    schema_version: str | None


def check_health(uow: UnitOfWork) -> HealthReport:
    try:
        with uow:
            uow.session.execute(text("SELECT 1"))
            try:
                # Several heads may be applied at once (independent branches); report them all.
                versions = uow.session.execute(
                    text("SELECT version_num FROM alembic_version ORDER BY version_num")
                ).scalars()
                schema_version = ",".join(versions) or None
            except ProgrammingError:
                uow.rollback()
                schema_version = None
    except DBAPIError as exc:
        raise DependencyUnavailable("the database is unreachable", details={"database": "down"}) from exc
    return HealthReport(database="ok", schema_version=schema_version)
