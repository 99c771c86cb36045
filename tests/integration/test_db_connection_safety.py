"""The connection path is correct (issue 10): every answer matches what the database kept, a connection that saw
a failure it cannot vouch for is never reused, a database that cannot serve answers 503 with Retry-After, and
the statement timeout holds without startup parameters or session state (what a transaction-mode pooler needs).

Every test runs on the real embedded PostgreSQL, with the pool settings it names (pool of 1 or 10, pre-ping on
or off), and passes as well in the configuration the template gives the functions.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pg8000.core
import pytest
from sqlalchemy import NullPool, create_engine, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import use_database
from tests.credits_support import assert_consistent, balance, funded_user, ledger_rows
from tests.payments_support import STRIPE_SECRET
from tests.support import ApiResponse, api_call
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.engine import apply_statement_timeout, is_unavailable, pg8000_url, reset_engine
from tollgate.services import credits
from tollgate_local.webhooks_cli import stripe_event, stripe_signature

D = Decimal
COSTS = {"chat": "1", "image_gen": "5"}
POOLS = [(1, True), (1, False), (10, True), (10, False)]
POOL_IDS = [f"pool{size}-preping{'on' if ping else 'off'}" for size, ping in POOLS]
# What PgBouncer accepts in a startup packet (anything else: `08P01 unsupported startup parameter`).
POOLER_STARTUP_PARAMETERS = frozenset(
    {"user", "database", "application_name", "client_encoding", "datestyle", "timezone",
     "standard_conforming_strings", "intervalstyle", "replication"}
)  # fmt: skip
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))  # past year 9999 in UTC


# --- configuration ------------------------------------------------------------------------------------------------
@pytest.fixture
def configure(database_url: str) -> Iterator[Callable[..., None]]:
    """Set database settings as a fresh container would see them; the previous values come back afterwards."""
    saved: dict[str, str | None] = {}

    def apply(**values: Any) -> None:
        for name, value in values.items():
            saved.setdefault(name, os.environ.get(name))
            os.environ[name] = str(value).lower() if isinstance(value, bool) else str(value)
        get_settings.cache_clear()
        reset_engine()

    yield apply
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    use_database(database_url)


def backend_pid(uow_factory: Callable[[], UnitOfWork] = UnitOfWork) -> int:
    with uow_factory() as uow:
        return int(uow.session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def client_connection() -> tuple[uuid.UUID, int]:
    """The application's own database connection (a mark it carries for its life) and the server session behind it.

    Behind a pooler the server session says nothing about the client's connection: a new client connection may
    be given the very server connection the discarded one used. So the mark decides, and the server session only
    where there is no pooler (TOLLGATE_TEST_TIER=default)."""
    with UnitOfWork() as uow:
        connection = uow.session.connection().connection
        mark = connection.info.setdefault("test_connection_mark", uuid.uuid4())
        pid = int(uow.session.execute(text("SELECT pg_backend_pid()")).scalar_one())
    return mark, pid


def assert_new_connection(before: tuple[uuid.UUID, int]) -> None:
    from tests import tiers

    mark, pid = client_connection()
    assert mark != before[0], "the failed connection was used again"
    if tiers.ACTIVE is None:
        assert pid != before[1], "a new connection on the same server session"


def direct_engine(database_url: str) -> Any:
    """A connection beside the application's pool (no pool of its own), for the database's side of a test."""
    return create_engine(pg8000_url(database_url), poolclass=NullPool)


def assert_unavailable(response: ApiResponse, route: str) -> None:
    assert (response.status, response.error_code) == (503, "dependency_unavailable"), (route, response.json)
    retry_after = {k.lower(): v for k, v in response.headers.items()}.get("retry-after")
    assert retry_after is not None and int(retry_after) >= 1, (route, response.headers)


# --- 1. a charge is answered exactly when it is committed -----------------------------------------------------------
@pytest.mark.parametrize(("pool_size", "pre_ping"), POOLS, ids=POOL_IDS)
def test_db_every_answered_charge_is_committed_and_nothing_else(
    db: Callable[[], UnitOfWork], configure: Callable[..., None], pool_size: int, pre_ping: bool
) -> None:
    """Given a user with 20 credits and a warm container (its pooled connection already used)
    When ten keyed charges, a replay of one of them and a refused charge arrive at POST /credits/usage
    Then each 201 has its own ledger row, the balance moved by exactly the answered charges, and the refusal
    and the replay wrote nothing."""
    configure(DB_POOL_SIZE=pool_size, DB_POOL_PRE_PING=pre_ping)
    user_id = funded_user(db, "20", costs=COSTS)
    answered: list[str] = []
    for n in range(10):
        response = api_call(
            "POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id, headers={"Idempotency-Key": f"k{n}"}
        )
        assert response.status == 201, response.json
        answered.append(response.json["transaction_id"])
    replay = api_call(
        "POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id, headers={"Idempotency-Key": "k3"}
    )
    refused = api_call("POST", "/credits/usage", body={"operation": "image_gen", "quantity": 3}, as_user=user_id)
    assert replay.status == 201 and replay.json["transaction_id"] == answered[3]
    assert (refused.status, refused.error_code) == (402, "insufficient_credits")
    assert balance(db, user_id) == D(10)
    usage = [str(r["id"]) for r in ledger_rows(db, user_id) if r["type"] == "usage"]
    assert sorted(usage) == sorted(answered)
    assert_consistent(db, user_id)


# --- 2. a connection that failed mid-statement is discarded ---------------------------------------------------------
@dataclass
class FlakyReader:
    """pg8000's reader, made to fail once right after a statement's first messages went out (replies unread)."""

    armed: bool = False
    fired: int = 0
    original: Callable[..., Any] = field(default=pg8000.core.CoreConnection.handle_messages)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def handle_messages(conn: Any, context: Any) -> Any:
            if self.armed:
                self.armed = False
                self.fired += 1
                raise RuntimeError("the reader failed before reading the replies")
            return self.original(conn, context)

        monkeypatch.setattr(pg8000.core.CoreConnection, "handle_messages", handle_messages)


@pytest.mark.parametrize("pre_ping", [True, False], ids=["preping-on", "preping-off"])
def test_db_a_driver_failure_mid_statement_discards_the_connection(
    db: Callable[[], UnitOfWork], configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch, pre_ping: bool
) -> None:
    """Given a pool of one connection whose driver fails after sending a statement, before reading its replies
    When the next units of work run on that same engine
    Then they get their own answers, on a new connection (the failed one was never reused)."""
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=pre_ping)
    reader = FlakyReader()
    reader.install(monkeypatch)
    first = client_connection()
    with pytest.raises(RuntimeError), UnitOfWork() as uow:
        uow.session.execute(text("SELECT 1"))
        reader.armed = True
        uow.session.execute(text("SELECT CAST(:v AS integer)"), {"v": 7})
    assert reader.fired == 1
    for value in (8, 9, 10):
        with UnitOfWork() as uow:
            assert uow.session.execute(text("SELECT CAST(:v AS integer)"), {"v": value}).scalar_one() == value
    assert_new_connection(first)


@pytest.mark.parametrize("pre_ping", [True, False], ids=["preping-on", "preping-off"])
def test_db_a_failure_while_committing_discards_the_connection(
    db: Callable[[], UnitOfWork], configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch, pre_ping: bool
) -> None:
    """Given a pool of one connection whose driver fails while a commit's reply is on its way
    When the next units of work run
    Then they read their own answers on a new connection."""
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=pre_ping)
    reader = FlakyReader()
    reader.install(monkeypatch)
    first = client_connection()
    with pytest.raises(RuntimeError), UnitOfWork() as uow:
        uow.session.execute(text("SELECT 1"))
        reader.armed = True
        uow.commit()
    for value in (11, 12):
        with UnitOfWork() as uow:
            assert uow.session.execute(text("SELECT CAST(:v AS integer)"), {"v": value}).scalar_one() == value
    assert_new_connection(first)


@pytest.mark.parametrize("pre_ping", [True, False], ids=["preping-on", "preping-off"])
def test_db_an_unencodable_timestamp_does_not_poison_the_pool(
    db: Callable[[], UnitOfWork], configure: Callable[..., None], pre_ping: bool
) -> None:
    """Given a pool of one connection, and a list filter pg8000 cannot encode (9999-12-31T23:59:59-14:00 is past
    year 9999 in UTC: OverflowError after Parse/Describe/Sync went out)
    When the list is asked with it, and then charges and lists follow on the same engine
    Then the bad request fails alone; every later charge and list reads its own rows."""
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=pre_ping)
    user_id = funded_user(db, "10", costs=COSTS)
    with pytest.raises(OverflowError):
        credits.list_transactions(UnitOfWork(), user_id, since=FAR_FUTURE)
    with pytest.raises(OverflowError):
        credits.list_transactions(UnitOfWork(), user_id, until=FAR_FUTURE)
    charged = [credits.record_usage(UnitOfWork(), user_id, operation="chat", idempotency_key=f"c{n}") for n in range(3)]
    assert [c.balance for c in charged] == [D(9), D(8), D(7)]
    page = credits.list_transactions(UnitOfWork(), user_id, type_="usage")
    assert sorted(t.id for t in page.items) == sorted(c.transaction_id for c in charged)
    assert balance(db, user_id) == D(7)
    assert_consistent(db, user_id)


# --- 3. a database that cannot serve is 503 with Retry-After ---------------------------------------------------------
def _stripe_delivery() -> tuple[bytes, dict[str, str]]:
    body = stripe_event("customer.created", {"id": "cus_unavailable", "object": "customer"})
    raw = json.dumps(body)
    return raw.encode(), {"stripe-signature": stripe_signature(raw, STRIPE_SECRET, None)}


def _every_kind_of_route(user_id: uuid.UUID) -> dict[str, ApiResponse]:
    raw, signed = _stripe_delivery()
    return {
        "balance": api_call("GET", "/credits/balance", as_user=user_id),
        "usage": api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id),
        "transactions": api_call("GET", "/credits/transactions", as_user=user_id),
        "login": api_call("POST", "/auth/login", body={"email": "ada@example.com", "password": "long enough pw"}),
        "stripe webhook": api_call("POST", "/webhooks/stripe", raw_body=raw, headers=signed),
    }


@pytest.fixture
def stripe_secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("PAYMENTS_LIVE_MODE", "false")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(("pool_size", "pre_ping"), [(1, True), (5, False)], ids=["pool1-preping", "pool5"])
def test_db_a_stopped_database_answers_503_on_every_route(
    database_url: str, configure: Callable[..., None], stripe_secret: None, pool_size: int, pre_ping: bool
) -> None:
    """Given a database that refuses connections (nothing listens on the port)
    When the credits, auth and webhook routes are called
    Then each answers 503 dependency_unavailable with Retry-After (a webhook too: still a 5xx, so it is retried)."""
    configure(DB_POOL_SIZE=pool_size, DB_POOL_PRE_PING=pre_ping)
    use_database("postgresql://tollgate:x@127.0.0.1:1/tollgate")
    for route, response in _every_kind_of_route(uuid.uuid4()).items():
        assert_unavailable(response, route)


def test_db_a_stopped_database_answers_503_through_the_real_authorizer(
    database_url: str, configure: Callable[..., None]
) -> None:
    """Given a validly signed access token, and a database that refuses connections
    When a protected route is called through the real authorizer (which needs the database to decide)
    Then it answers 503 dependency_unavailable with Retry-After, not API Gateway's 500 for a failed authorizer;
    and once the database is back the same token is decided afresh (the unavailable answer was not cached)."""
    from tollgate.auth.access_tokens import issue_access_token

    token, _ = issue_access_token(uuid.uuid4(), uuid.uuid4(), "USER", datetime.now(UTC))
    headers = {"authorization": f"Bearer {token}"}
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=True)
    use_database("postgresql://tollgate:x@127.0.0.1:1/tollgate")
    for method, path in (("GET", "/credits/balance"), ("POST", "/credits/usage")):
        response = api_call(method, path, body={"operation": "chat"}, headers=headers, through_authorizer=True)
        assert_unavailable(response, path)
    use_database(database_url)
    # no such user or session: refused by the authorizer now that it can look
    assert api_call("GET", "/credits/balance", headers=headers, through_authorizer=True).status == 403


@pytest.mark.direct_database(reason="a Unix socket path: in the pooler tier the database is found by host")
def test_db_a_missing_socket_answers_503(
    database_url: str, configure: Callable[..., None], stripe_secret: None, tmp_path: Any
) -> None:
    """Given a database URL naming a socket folder where no server runs (pg8000: `communication error`)
    When the routes are called
    Then each answers 503 with Retry-After."""
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=True)
    use_database(f"postgresql://tollgate@/tollgate?host={tmp_path}")
    for route, response in _every_kind_of_route(uuid.uuid4()).items():
        assert_unavailable(response, route)


class RefusingServer:
    """A stand-in that speaks PostgreSQL's wire protocol just far enough to refuse a connection as a server
    starting up (57P03) or a pooler whose logins fail (PgBouncer's 08P01) does, recording each startup packet."""

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message
        self.startups: list[dict[str, str]] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RefusingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _read(self, conn: socket.socket) -> bytes:
        length = struct.unpack("!i", conn.recv(4, socket.MSG_WAITALL))[0]
        return conn.recv(length - 4, socket.MSG_WAITALL)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                packet = self._read(conn)
                if struct.unpack("!i", packet[:4])[0] == 80877103:  # SSLRequest: no TLS here
                    conn.sendall(b"N")
                    packet = self._read(conn)
                parts = packet[4:].split(b"\x00")
                self.startups.append(
                    {k.decode(): v.decode() for k, v in zip(parts[::2], parts[1::2], strict=False) if k}
                )
                fields = b"".join(
                    tag + value.encode() + b"\x00"
                    for tag, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", self.code), (b"M", self.message))
                )
                payload = fields + b"\x00"
                conn.sendall(b"E" + struct.pack("!i", len(payload) + 4) + payload)


REFUSALS = {
    "starting up": ("57P03", "the database system is starting up"),
    "shutting down": ("57P03", "the database system is shutting down"),
    "pooler login retry": ("08P01", "server login has been failing, try again later (server_login_retry)"),
    "too many connections": ("53300", "sorry, too many clients already"),
}


@pytest.mark.direct_database(reason="a stand-in server on its own port replaces the database")
@pytest.mark.parametrize("refusal", list(REFUSALS), ids=list(REFUSALS))
def test_db_a_server_refusing_connections_answers_503(
    database_url: str, configure: Callable[..., None], stripe_secret: None, refusal: str
) -> None:
    """Given a server that refuses connections with one of the SQLSTATEs of "cannot serve now"
    When the routes are called
    Then each answers 503 with Retry-After, and the engine's startup packets carry only what a pooler accepts."""
    code, message = REFUSALS[refusal]
    with RefusingServer(code, message) as server:
        configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=True)
        use_database(f"postgresql://tollgate:x@127.0.0.1:{server.port}/tollgate")
        for route, response in _every_kind_of_route(uuid.uuid4()).items():
            assert_unavailable(response, route)
    assert server.startups
    for startup in server.startups:
        assert set(startup) <= POOLER_STARTUP_PARAMETERS, startup


@pytest.mark.direct_database(reason="it kills the backend of a pooled client connection; a pooler hides that")
@pytest.mark.parametrize("pool_size", [1, 10], ids=["pool1", "pool10"])
def test_db_after_a_restart_with_pre_ping_off_one_503_then_service(
    db: Callable[[], UnitOfWork], database_url: str, configure: Callable[..., None], pool_size: int
) -> None:
    """Given a warm container with pre-ping off whose pooled connection's server went away while idle (the
    server sent 57P01 `terminating connection due to administrator command`, as on a restart)
    When requests arrive
    Then the first one answers 503 (not 500) and the next one succeeds on a new connection."""
    configure(DB_POOL_SIZE=pool_size, DB_POOL_PRE_PING=False)
    user_id = funded_user(db, "5", costs=COSTS)
    assert api_call("GET", "/credits/balance", as_user=user_id).status == 200
    _terminate(database_url, backend_pid())
    first = api_call("GET", "/credits/balance", as_user=user_id)
    second = api_call("GET", "/credits/balance", as_user=user_id)
    assert_unavailable(first, "balance after restart")
    assert second.status == 200 and second.json["balance"] == "5.0000"


@pytest.mark.direct_database(reason="it kills the backend of a pooled client connection; a pooler hides that")
def test_db_after_a_restart_with_pre_ping_on_the_first_request_succeeds(
    db: Callable[[], UnitOfWork], database_url: str, configure: Callable[..., None]
) -> None:
    """Given a warm container with pre-ping on whose pooled connection's server went away while idle
    When a charge arrives
    Then the ping finds the dead connection, a new one serves it, and the charge is kept."""
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=True)
    user_id = funded_user(db, "5", costs=COSTS)
    assert api_call("GET", "/credits/balance", as_user=user_id).status == 200
    _terminate(database_url, backend_pid())
    charged = api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id)
    assert charged.status == 201, charged.json
    assert balance(db, user_id) == D(4)


def _terminate(database_url: str, pid: int) -> None:
    engine = direct_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
            for _ in range(100):  # until the backend is gone
                gone = conn.execute(
                    text("SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid)"), {"pid": pid}
                ).scalar_one()
                conn.rollback()
                if gone:
                    return
                time.sleep(0.02)
    finally:
        engine.dispose()
    raise AssertionError(f"backend {pid} did not stop")


# --- 4. the statement timeout, without startup parameters or session state -----------------------------------------
@pytest.fixture
def role_timeout(database_url: str) -> Iterator[Callable[[int], None]]:
    """Apply a statement timeout as the migration step does (a default of the role in this database); the
    configured one comes back afterwards."""
    engine = direct_engine(database_url)

    def apply(milliseconds: int) -> None:
        with engine.begin() as conn:
            apply_statement_timeout(conn, milliseconds)
        reset_engine()  # a fresh container: its connections start after the migration

    yield apply
    apply(get_settings().db_statement_timeout_ms)
    engine.dispose()


@pytest.mark.direct_database(
    reason="changes the role default on the database itself; behind the pooler test_tier_production applies it and "
    "recycles the pooler's backends"
)
@pytest.mark.parametrize(("pool_size", "pre_ping"), [(1, True), (1, False)], ids=["preping-on", "preping-off"])
def test_db_every_unit_of_work_runs_under_the_statement_timeout(
    db: Callable[[], UnitOfWork],
    configure: Callable[..., None],
    role_timeout: Callable[[int], None],
    pool_size: int,
    pre_ping: bool,
) -> None:
    """Given the migration step applied a statement timeout of 1234 ms
    When units of work run (one after another on the same pooled connection)
    Then each sees statement_timeout = 1234ms as the role's default ("database user"), not as a setting the
    application made: nothing a pooler would refuse at startup, lose between transactions or pin on."""
    configure(DB_POOL_SIZE=pool_size, DB_POOL_PRE_PING=pre_ping)
    role_timeout(1234)
    for _ in range(3):
        with UnitOfWork() as uow:
            setting, source = uow.session.execute(
                text("SELECT setting, source FROM pg_settings WHERE name = 'statement_timeout'")
            ).one()
            assert (setting, source) == ("1234", "database user")
            uow.commit()


def test_db_the_migration_step_sets_the_configured_statement_timeout(db: Callable[[], UnitOfWork]) -> None:
    """Given the test database was migrated with the default settings
    When a unit of work asks for its statement timeout
    Then it is DB_STATEMENT_TIMEOUT_MS, from the role's default."""
    with UnitOfWork() as uow:
        setting, source = uow.session.execute(
            text("SELECT setting, source FROM pg_settings WHERE name = 'statement_timeout'")
        ).one()
    assert (int(setting), source) == (get_settings().db_statement_timeout_ms, "database user")


@pytest.mark.direct_database(
    reason="changes the role default on the database itself; behind the pooler test_tier_production applies it and "
    "recycles the pooler's backends"
)
@pytest.mark.parametrize("pre_ping", [True, False], ids=["preping-on", "preping-off"])
def test_db_a_statement_past_the_timeout_is_cancelled_and_the_pool_stays_sound(
    db: Callable[[], UnitOfWork],
    configure: Callable[..., None],
    role_timeout: Callable[[int], None],
    pre_ping: bool,
) -> None:
    """Given a statement timeout of 200 ms and a pool of one connection
    When a statement sleeps for 2 s
    Then it is cancelled within the bound (57014, which the edge answers 503 retry-later), and the same pooled
    connection serves the next units of work correctly."""
    configure(DB_POOL_SIZE=1, DB_POOL_PRE_PING=pre_ping)
    role_timeout(200)
    pid = backend_pid()
    started = time.monotonic()
    with pytest.raises(DBAPIError) as raised, UnitOfWork() as uow:
        uow.session.execute(text("SELECT pg_sleep(2)"))
    assert time.monotonic() - started < 1.5
    assert "57014" in str(raised.value.orig) and is_unavailable(raised.value)
    for value in (1, 2):
        with UnitOfWork() as uow:
            assert uow.session.execute(text("SELECT CAST(:v AS integer)"), {"v": value}).scalar_one() == value
    assert backend_pid() == pid  # a server-side cancel leaves the protocol in sync: the connection is kept


# --- the classification itself, on the driver's own exception objects ---------------------------------------------
def _server_error(code: str, message: str) -> Exception:
    return pg8000.dbapi.DatabaseError({"S": "FATAL", "C": code, "M": message})


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (pg8000.dbapi.InterfaceError("Can't create a connection to host 127.0.0.1 and port 1"), True),
        (pg8000.dbapi.InterfaceError("communication error"), True),
        (pg8000.dbapi.InterfaceError("network error"), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (_server_error("57P01", "terminating connection due to administrator command"), True),
        (_server_error("57P02", "terminating connection because of crash of another server process"), True),
        (_server_error("57P03", "the database system is starting up"), True),
        (_server_error("08006", "connection failure"), True),
        (_server_error("08P01", "server login has been failing, try again later (server_login_retry)"), True),
        (_server_error("57014", "canceling statement due to statement timeout"), True),
        (_server_error("23505", "duplicate key value violates unique constraint (network error@x)"), False),
        (_server_error("42P01", 'relation "nope" does not exist'), False),
        (OverflowError("date value out of range"), False),
        (ValueError("bad"), False),
    ],
)
def test_db_unavailability_is_classified_in_one_place(error: Exception, unavailable: bool) -> None:
    """Given an error as the driver raises it, bare or wrapped by SQLAlchemy
    Then is_unavailable tells a database that cannot serve now from a bug, either way."""
    assert is_unavailable(error) is unavailable
    if isinstance(error, pg8000.dbapi.Error):
        wrapped = DBAPIError.instance("SELECT 1", None, error, pg8000.dbapi.Error)
        assert is_unavailable(wrapped) is unavailable
