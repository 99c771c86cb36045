"""Alembic environment: the URL comes from Tollgate's own settings (or the caller's config), never from a file.

A caller may hand over its own connection (`config.attributes["connection"]`) and settings
(`config.attributes["settings"]`: the migration function passes the schema owner's and the application role's).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from tollgate.config import Settings, get_settings
from tollgate.db.engine import apply_statement_timeout, build_engine, get_engine
from tollgate.db.roles import app_role_password, ensure_app_role
from tollgate.models.registry import load_all

config = context.config
target_metadata = load_all()
given_settings = config.attributes.get("settings")
settings: Settings = given_settings if isinstance(given_settings, Settings) else get_settings()


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
        # Part of every deploy's migration step, in the same transaction: the application role's privileges
        # follow the schema just migrated, and its statement bound follows DB_STATEMENT_TIMEOUT_MS.
        if settings.db_app_user:
            ensure_app_role(connection, settings.db_app_user, password=app_role_password(settings))
        apply_statement_timeout(connection, settings.db_statement_timeout_ms, role=settings.db_app_user)


if context.is_offline_mode():
    context.configure(url=str(get_engine().url), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
    elif given_settings is not None:
        engine = build_engine(settings)
        try:
            with engine.connect() as connection:
                run_migrations(connection)
        finally:
            engine.dispose()
    else:
        with get_engine().connect() as connection:
            run_migrations(connection)
