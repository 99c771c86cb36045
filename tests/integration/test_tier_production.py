"""The production tier is what it claims: the template's settings, through PgBouncer, over TLS, with IAM tokens.

These tests run only with TOLLGATE_TEST_TIER=production (`make unit-production`); elsewhere they skip.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import NullPool, create_engine, event, text
from sqlalchemy.pool import QueuePool

from tests import tiers
from tests.conftest import use_database
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork, get_engine
from tollgate.db.engine import apply_statement_timeout, pg8000_url, sqlstate
from tollgate_local import TEMPLATE_PATH
from tollgate_local.template import Template


def template_value(name: str) -> str | None:
    """What the template itself says, read again here (not what the tier applied)."""
    return tiers.template_environment(Template(TEMPLATE_PATH), fills=dict.fromkeys(tiers.LOCAL_FILLS_REASONS)).get(name)


def admin_console(tier: tiers.ProductionTier, command: str) -> list[dict[str, str]]:
    """Rows of a PgBouncer admin command (its console speaks only the simple query protocol: psql does)."""
    from pgserver._commands import POSTGRES_BIN_PATH

    out = subprocess.run(
        [str(POSTGRES_BIN_PATH / "psql"), "-X", "-A", "-F", "\t", "-P", "footer=off", "-c", command,
         f"host={tier.bouncer.host} port={tier.bouncer.port} dbname=pgbouncer user=pgbouncer sslmode=disable"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    header, *rows = out.stdout.splitlines()
    names = header.split("\t")
    return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]


def test_every_function_shares_the_database_settings_the_tier_takes() -> None:
    # Given the template's functions
    settings = tiers.database_settings(Template(TEMPLATE_PATH))
    # Then all carry the same DB_* variables as the tier's function, so one process stands for every handler
    expected = settings[tiers.TIER_FUNCTION]
    assert expected["DB_POOL_SIZE"] == "1" and expected["DB_POOL_PRE_PING"] == "true"
    assert {name: value for name, value in settings.items() if value != expected} == {}


def test_the_engine_has_the_template_pool_and_auth_settings(
    production_tier: tiers.ProductionTier, db: Callable[[], UnitOfWork]
) -> None:
    # Given the settings this process runs with
    settings = get_settings()
    # Then they are the template's: a pool of one with pre-ping, IAM auth over TLS to DB_HOST:DB_PORT
    assert settings.db_pool_size == int(template_value("DB_POOL_SIZE") or 0) == 1
    assert settings.db_pool_pre_ping is (template_value("DB_POOL_PRE_PING") == "true") is True
    assert settings.db_auth_mode == template_value("DB_AUTH_MODE") == "iam"
    assert settings.db_ssl is ((template_value("DB_SSL") or "true") == "true") is True
    assert settings.db_name == template_value("DB_NAME") and settings.db_user == template_value("DB_USER")
    assert (settings.db_host, settings.db_port) == (production_tier.bouncer.host, production_tier.bouncer.port)
    # And the engine built from them pools exactly that
    pool = get_engine().pool
    assert isinstance(pool, QueuePool)
    assert pool.size() == 1 and pool._max_overflow == 0  # the pool has no public reader for these two
    assert pool._pre_ping is True


def test_new_connections_present_a_fresh_iam_token(
    production_tier: tiers.ProductionTier, db: Callable[[], UnitOfWork]
) -> None:
    # Given an engine whose pooled connection is dropped, and a listener after the engine's own credentials hook
    engine = get_engine()
    engine.dispose()
    passwords: list[str] = []

    def seen(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        passwords.append(str(cparams.get("password")))

    event.listen(engine, "do_connect", seen)
    try:
        # When two units of work run, with the connection dropped between them
        for _ in range(2):
            with db() as uow:
                assert uow.session.execute(text("SELECT 1")).scalar() == 1
            engine.dispose()
    finally:
        event.remove(engine, "do_connect", seen)
    # Then each new connection carried a token signed for it (within one second two tokens are byte-equal)
    assert len(passwords) == 2
    for token in passwords:
        assert token.startswith(f"{production_tier.bouncer.host}:{production_tier.bouncer.port}/?Action=connect")
        assert f"DBUser={template_value('DB_USER')}" in token and "X-Amz-Signature=" in token


def test_traffic_goes_through_pgbouncer_in_transaction_mode_over_tls(
    production_tier: tiers.ProductionTier, db: Callable[[], UnitOfWork]
) -> None:
    # When a unit of work asks the server who it is talking to
    with db() as uow:
        application_name = uow.session.execute(text("SELECT current_setting('application_name')")).scalar_one()
    # Then the server saw the connection through PgBouncer (it appends the client's address to the name)
    assert application_name.startswith("tollgate - 127.0.0.1:"), application_name
    # And PgBouncer pools per transaction, with no prepared statements kept for clients
    config = {row["key"]: row["value"] for row in admin_console(production_tier, "SHOW CONFIG")}
    assert config["pool_mode"] == "transaction"
    assert config.get("max_prepared_statements", "0") == "0"
    # And the application's connection to it is TLS (the client verified the pooler's certificate to get there)
    clients = [
        row for row in admin_console(production_tier, "SHOW CLIENTS") if row["database"] == production_tier.database
    ]
    assert clients, "no client of the application database is connected"
    assert all(row["tls"].startswith("TLSv1.") for row in clients), clients
    # And what the client verified against is the pooler's own certificate, through SSL_CERT_FILE
    trusted = ssl.create_default_context().get_ca_certs()
    assert [cert["subject"] for cert in trusted] == [((("commonName", "127.0.0.1"),),)]


def test_the_statement_timeout_holds_behind_the_pooler(
    production_tier: tiers.ProductionTier, db: Callable[[], UnitOfWork]
) -> None:
    # Given the template's statement timeout (the settings' default where the template sets none)
    configured = template_value("DB_STATEMENT_TIMEOUT_MS")
    expected = int(configured) if configured is not None else Settings.model_fields["db_statement_timeout_ms"].default
    assert get_settings().db_statement_timeout_ms == expected
    # When a unit of work reads it on whichever backend PgBouncer gave it
    with db() as uow:
        current = uow.session.execute(
            text("SELECT setting FROM pg_settings WHERE name = 'statement_timeout'")
        ).scalar_one()
    # Then it is in force there
    assert int(current) == expected


@pytest.fixture
def short_timeout(production_tier: tiers.ProductionTier, pg_server: Any, database_url: str) -> Iterator[int]:
    """A 200 ms statement timeout, applied as the migration step applies it (a default of the role the pooler's
    backends log in as); the pooler then opens new backends, which carry it."""
    from tests.conftest import TEST_DATABASE

    direct = create_engine(pg8000_url(pg_server.get_uri(TEST_DATABASE)), poolclass=NullPool)

    def apply(milliseconds: int) -> None:
        with direct.begin() as conn:
            apply_statement_timeout(conn, milliseconds)
        admin_console(production_tier, "RECONNECT")
        use_database(database_url)

    apply(200)
    yield 200
    apply(get_settings().db_statement_timeout_ms)
    direct.dispose()


def test_a_statement_past_the_timeout_is_cancelled_behind_the_pooler(
    short_timeout: int, db: Callable[[], UnitOfWork]
) -> None:
    # Given a 200 ms statement timeout
    # When a unit of work runs a statement that takes 2 s
    with pytest.raises(Exception) as raised, db() as uow:
        uow.session.execute(text("SELECT pg_sleep(2)"))
    # Then the server cancels it (57014), and the next unit of work on the same pool is served normally
    causes = [raised.value, raised.value.__cause__, raised.value.__context__]
    assert "57014" in {sqlstate(cause) for cause in causes if cause is not None}, repr(raised.value)
    with db() as uow:
        assert uow.session.execute(text("SELECT 1")).scalar() == 1
