"""Alembic, driven from Python: `tollgate migrate` and the local start both come here."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection

from tollgate_local import PROJECT_ROOT

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config; with `connection`, migrations run on it instead of the configured database."""
    config = Config(str(PROJECT_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade(target: str = "heads", connection: Connection | None = None) -> None:
    command.upgrade(alembic_config(connection), target)
    if connection is None:
        _reconnect()


def _reconnect() -> None:
    # Pooled connections opened before the migration lack the role defaults it sets (the statement timeout).
    from tollgate.db.engine import get_engine

    get_engine().dispose()


def downgrade(target: str, connection: Connection | None = None) -> None:
    command.downgrade(alembic_config(connection), target)


def current_heads() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config()).get_heads())
