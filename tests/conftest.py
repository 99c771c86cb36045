"""Test tiers share one embedded PostgreSQL, started once per session and migrated to the newest schema.

Each test that touches the database asks for `db` and finds every table empty; what it committed is
truncated afterwards, so tests may commit (and concurrency tests must) without seeing one another.
`TOLLGATE_TEST_TIER=production` runs those tests in the deployed configuration instead (see tests/tiers.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

# Tests never read a developer's .env, and never publish metrics.
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
# Mail that tests send lands in a throwaway folder, never in the working tree's .tollgate/.
if "TOLLGATE_MAIL_DIR" not in os.environ:
    os.environ["TOLLGATE_MAIL_DIR"] = tempfile.mkdtemp(prefix="tollgate-test-mail-")
    atexit.register(shutil.rmtree, os.environ["TOLLGATE_MAIL_DIR"], ignore_errors=True)
# A random access-token signing key per test run (never a fixed string; see tollgate.auth.access_tokens).
os.environ.setdefault("JWT_SIGNING_KEY", os.urandom(32).hex())

from tests import tiers
from tollgate import system_config
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork, get_engine
from tollgate.db.engine import reset_engine
from tollgate.models.registry import load_all

Settings.model_config["env_file"] = None
load_all()  # the whole schema, whatever a test module happens to import

REPO_ROOT = Path(__file__).resolve().parents[1]
# Copies of ../shared/fixtures (real provider payloads; see their SOURCES.md), so the repo tests on its own.
PROVIDER_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "providers"
TEST_DATABASE = "tollgate_test"
TIER = tiers.selected_tier()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "direct_database(reason): cannot run through a pooler; skipped in the production tier"
    )


def pytest_report_header(config: pytest.Config) -> str:
    return f"tollgate test tier: {TIER}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if TIER != tiers.PRODUCTION_TIER:
        return
    # The production tier is about the database path: tests that never reach the database ran in the default tier.
    kept = [item for item in items if "database_url" in getattr(item, "fixturenames", ())]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    for item in items:
        if (reason := tiers.direct_database_reason(item)) is not None:
            item.add_marker(pytest.mark.skip(reason=f"not behind a pooler: {reason}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if tiers.POOLER_PROBLEMS:
        terminalreporter.section(f"PgBouncer logged {len(tiers.POOLER_PROBLEMS)} errors/warnings (last 20)")
        for line in tiers.POOLER_PROBLEMS[-20:]:
            terminalreporter.line(line)


def use_database(url: str) -> None:
    """Point settings and the engine at `url` (as a fresh Lambda container would see it)."""
    os.environ["DATABASE_URL"] = url
    if TIER == tiers.PRODUCTION_TIER:
        tiers.point_at(url)
    get_settings.cache_clear()
    reset_engine()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    from tollgate_local.database import start_embedded

    # Outside pytest's own temporary folders (which it prunes while other sessions may still run).
    folder = Path(tempfile.mkdtemp(prefix="tollgate-test-pg-"))
    server, _ = start_embedded(folder / "pgdata", TEST_DATABASE, throwaway=True)
    # A throwaway server need not survive a power cut: no waits for the disk at commit. Transactions, locks and
    # isolation are what tests check, and none of them change (the restart tests run servers of their own).
    server.psql(
        "ALTER SYSTEM SET fsync = off;\nALTER SYSTEM SET synchronous_commit = off;\n"
        "ALTER SYSTEM SET full_page_writes = off;\nSELECT pg_reload_conf();\n"
    )
    yield server
    reset_engine()  # close pooled connections before the server stops
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_server: object) -> Iterator[str]:
    from tollgate_local.migrations import upgrade

    url: str = pg_server.get_uri(TEST_DATABASE)  # type: ignore[attr-defined]
    if TIER != tiers.PRODUCTION_TIER:
        use_database(url)
        upgrade()
        yield url
        return
    # Migrations straight to PostgreSQL (the deploy-time migration function does), the tests through the pooler.
    from sqlalchemy import create_engine

    from tollgate.db.engine import pg8000_url

    direct = create_engine(pg8000_url(url))
    with direct.begin() as conn:
        upgrade(connection=conn)
    direct.dispose()
    tier = tiers.start_production_tier(pg_server, TEST_DATABASE)
    use_database(tier.url)
    yield tier.url
    reset_engine()
    tiers.stop_production_tier(tier)
    shutil.rmtree(tier.bouncer.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def production_tier(database_url: str) -> tiers.ProductionTier:
    """The running production tier (tests about the tier itself skip outside it)."""
    if tiers.ACTIVE is None:
        pytest.skip(f"runs in the production tier only ({tiers.TIER_VARIABLE}={tiers.PRODUCTION_TIER})")
    return tiers.ACTIVE


def _truncate_all() -> None:
    with get_engine().begin() as conn:
        tables = (
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
            )
            .scalars()
            .all()
        )
        # Only the tables a test wrote, one probe per table finding the few with rows. They are emptied with
        # DELETE, not TRUNCATE: TRUNCATE ... CASCADE reaches every table holding a key to `users` (nearly the whole
        # schema) and makes new files for each table and index, which cost far more than the test itself.
        if tables:
            probe = " UNION ALL ".join(f"SELECT '{table}' WHERE EXISTS (SELECT 1 FROM \"{table}\")" for table in tables)
            tables = conn.execute(text(probe)).scalars().all()
        if tables:
            # replica role: no foreign-key checks (so the order does not matter) and none of the triggers that
            # guard the ledger and the audit trail against deletes, for cleanup only; and no statement timeout a
            # test may have given the role.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("SET LOCAL statement_timeout = 0"))
            deletes = ", ".join(f'd{n} AS (DELETE FROM "{table}")' for n, table in enumerate(tables))
            conn.execute(text(f"WITH {deletes} SELECT 1"))


@pytest.fixture
def db(database_url: str) -> Iterator[Callable[[], UnitOfWork]]:
    """A factory of units of work on the (empty) test database."""
    if os.environ.get("DATABASE_URL") != database_url:  # a test before this one pointed elsewhere
        use_database(database_url)
    yield UnitOfWork
    _truncate_all()
    system_config.forget()  # the emptied database's settings are not the ones this process cached


@pytest.fixture
def provider_fixtures() -> Path:
    return PROVIDER_FIXTURES
