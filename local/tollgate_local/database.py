"""The local database: the embedded PostgreSQL 16 + pgvector from `pgserver`, unless DATABASE_URL names one."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from tollgate.config import Settings

log = logging.getLogger("tollgate_local.database")
DATABASE_NAME = "tollgate"


def start_embedded(pgdata: Path, database: str = DATABASE_NAME, *, throwaway: bool = False) -> tuple[Any, str]:
    """Start (or reuse) the embedded server in `pgdata` and make sure `database` exists.

    The server stops cleanly when this process exits (the next start reuses the data folder); a `throwaway`
    one (tests, benchmarks) is deleted with its folder instead, at exit or on `server.cleanup()`.
    """
    import pgserver

    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata.resolve(), cleanup_mode="delete" if throwaway else "stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return server, server.get_uri(database)


def ensure_database(settings: Settings) -> tuple[Any, str]:
    """The URL to use, starting the embedded server when none is configured.

    Sets DATABASE_URL for this process so every part of it (handlers included) reaches the same database.
    """
    if settings.database_url:
        return None, settings.database_url
    server, url = start_embedded(settings.data_dir / "pgdata")
    os.environ["DATABASE_URL"] = url
    log.info("embedded PostgreSQL running in %s", settings.data_dir / "pgdata")
    return server, url
