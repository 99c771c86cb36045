"""Migrations: upgrade from empty, match the models, downgrade to nothing, upgrade again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text

from tollgate.db.base import Base
from tollgate.db.engine import pg8000_url
from tollgate.models.registry import load_all
from tollgate_local.migrations import downgrade, upgrade

SCRATCH_DB = "tollgate_migrations"
load_all()


@pytest.fixture
def scratch_engine(pg_server: object, database_url: str) -> Iterator[Engine]:
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')  # type: ignore[attr-defined]
    pg_server.psql(f'CREATE DATABASE "{SCRATCH_DB}";')  # type: ignore[attr-defined]
    engine = create_engine(pg8000_url(pg_server.get_uri(SCRATCH_DB)))  # type: ignore[attr-defined]
    yield engine
    engine.dispose()
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')  # type: ignore[attr-defined]


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def test_upgrade_downgrade_upgrade(scratch_engine: Engine) -> None:
    # Given an empty database
    assert tables(scratch_engine) == set()
    # When it is upgraded to every head
    with scratch_engine.begin() as conn:
        upgrade("heads", connection=conn)
    # Then every table of the models exists
    assert set(Base.metadata.tables) <= tables(scratch_engine)
    with scratch_engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'vector'")) == 1
    # When it is downgraded to base
    with scratch_engine.begin() as conn:
        downgrade("base", connection=conn)
    # Then nothing is left
    assert tables(scratch_engine) == set()
    # And it upgrades again cleanly
    with scratch_engine.begin() as conn:
        upgrade("heads", connection=conn)
    assert set(Base.metadata.tables) <= tables(scratch_engine)


# Reflection does not know pgvector's type (the model declares its own); the column is still compared by name.
@pytest.mark.filterwarnings("ignore:Did not recognize type 'vector'")
def test_the_migrated_schema_matches_the_models(scratch_engine: Engine) -> None:
    with scratch_engine.begin() as conn:
        upgrade("heads", connection=conn)
    with scratch_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
