"""Test tiers share one embedded PostgreSQL, started once per session and migrated to the newest schema.

Each test that touches the database asks for `db` and finds every table empty; what it committed is
truncated afterwards, so tests may commit (and concurrency tests must) without seeing one another.
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


def use_database(url: str) -> None:
    """Point settings and the engine at `url` (as a fresh Lambda container would see it)."""
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    reset_engine()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    from tollgate_local.database import start_embedded

    # Outside pytest's own temporary folders (which it prunes while other sessions may still run).
    folder = Path(tempfile.mkdtemp(prefix="tollgate-test-pg-"))
    server, _ = start_embedded(folder / "pgdata", TEST_DATABASE, throwaway=True)
    yield server
    reset_engine()  # close pooled connections before the server stops
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_server: object) -> str:
    from tollgate_local.migrations import upgrade

    url: str = pg_server.get_uri(TEST_DATABASE)  # type: ignore[attr-defined]
    use_database(url)
    upgrade()
    return url


def _truncate_all() -> None:
    with get_engine().begin() as conn:
        tables = (
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")
            )
            .scalars()
            .all()
        )
        if tables:
            # replica role: skip the triggers that guard the ledger against deletes, for cleanup only.
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            quoted = ", ".join(f'"{table}"' for table in tables)
            conn.execute(text(f"TRUNCATE {quoted} CASCADE"))


@pytest.fixture
def db(database_url: str) -> Iterator[Callable[[], UnitOfWork]]:
    """A factory of units of work on the (empty) test database."""
    if os.environ.get("DATABASE_URL") != database_url:  # a test before this one pointed elsewhere
        use_database(database_url)
    yield UnitOfWork
    _truncate_all()


@pytest.fixture
def provider_fixtures() -> Path:
    return PROVIDER_FIXTURES
