"""Alembic environment: the URL comes from Tollgate's own settings (or the caller's config), never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tollgate.config import get_settings
from tollgate.db.engine import apply_statement_timeout, get_engine
from tollgate.models.registry import load_all

config = context.config
target_metadata = load_all()


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
        # Part of every deploy's migration step: the role's statement bound follows DB_STATEMENT_TIMEOUT_MS.
        apply_statement_timeout(connection, get_settings().db_statement_timeout_ms)


if context.is_offline_mode():
    context.configure(url=str(get_engine().url), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
    else:
        with get_engine().connect() as connection:
            run_migrations(connection)
