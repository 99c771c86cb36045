"""Alembic environment: the URL comes from Tollgate's own settings (or the caller's config), never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tollgate.db.engine import get_engine
from tollgate.models.registry import load_all

config = context.config
target_metadata = load_all()


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


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
