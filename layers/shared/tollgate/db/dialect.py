"""SQLAlchemy's pg8000 dialect with transaction control that costs one round trip and one Sync each.

pg8000 sends `COMMIT` as an extended-protocol statement (Parse, Sync; Describe, Sync; Bind, Execute, Sync:
three round trips), and SQLAlchemy's default pre-ping runs `SELECT 1` through a cursor, which first opens a
transaction (two round trips) that then stays open. Both are hooks SQLAlchemy gives a dialect (`do_commit`,
`do_ping`): here they send one simple-protocol query each. Nothing else changes: every call still passes
through SQLAlchemy's connection handling (its errors reach `handle_error`, a failed ping or commit discards the
connection), and a single simple query is one message, so a transaction-mode pooler never splits it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.pg8000 import PGDialect_pg8000

DRIVER_NAME = "postgresql+tollgate_pg8000"


class TollgatePg8000Dialect(PGDialect_pg8000):
    supports_statement_cache = True

    def do_commit(self, dbapi_connection: Any) -> None:
        dbapi_connection.execute_simple("COMMIT")

    def do_ping(self, dbapi_connection: Any) -> bool:
        # At checkout the connection is idle (the pool rolled it back on return): the ping is its own
        # transaction and leaves none open.
        dbapi_connection.execute_simple("SELECT 1")
        return True


registry.register("postgresql.tollgate_pg8000", __name__, "TollgatePg8000Dialect")
