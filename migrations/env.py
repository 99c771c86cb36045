"""Alembic environment: the URL comes from Tollgate's own settings (or the caller's config), never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import tollgate.models  # noqa: F401  (registers every table on Base.metadata)
from tollgate.db.base import Base
from tollgate.db.engine import get_engine

config = context.config
target_metadata = Base.metadata


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
