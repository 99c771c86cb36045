"""Migration 0007_ledger_rules: the ledger's data survives an upgrade and a downgrade, `is_pack` and `priority`
map onto each other, each revision runs its own version of the ledger's SQL files, and frozen versions stay
frozen."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from tests.conftest import REPO_ROOT
from tollgate.db.engine import pg8000_url
from tollgate_local.migrations import downgrade, upgrade

SCRATCH_DB = "tollgate_ledger_sql_migration"
SQL_DIR = REPO_ROOT / "migrations" / "sql" / "ledger"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
D = Decimal

# Versions that a landed revision loads are history: editing one would change what an old revision (or a
# downgrade to it) creates. A change to a function is a new version file and a new revision.
FROZEN = {
    "tollgate_allow_packs.v1.sql": "3fefe15e0df160c3065f332defdef392bdd796bf032df647440d94082c2982b9",
    "tollgate_allow_packs.v2.sql": "da18aa5d00cb9fe9573b347efc496f158ae647026c09a7f6634055fadf847c27",
    "tollgate_apply_draw.v1.sql": "b2e54e552f2e9ff5a9fa64e6b50bd50d8a2eca37bbd4e86b4a548046af185190",
    "tollgate_charge.v1.sql": "369f04eac7723af657e6bcc381194a83f8a190f23b563bf3d572289c07e70836",
    "tollgate_charge.v2.sql": "b7dc303e56b992052b73d45392fd96b9a2530a7c560bdfbf424099849bc62936",
    "tollgate_cost.v1.sql": "68347308cbef9333e02b5a493ddc5d75c1cc00ca15e6aadff7a0760ba4023e09",
    "tollgate_cost.v2.sql": "ac26ed4c5d2d123a0d717f42c0569650f8300d0cc0ae9ed7246278318f5c8a7c",
    "tollgate_draw_candidates.v1.sql": "60290d6f8d375d046d2106e0398094f6a3f321f29d6be73210a5bf6a4f2a062e",
    "tollgate_ledger_immutable.v1.sql": "6af18eba62363236b11b216590cc330b2d0ab1226e81f1a5a404a3ad2be55a62",
    "tollgate_lock_account.v1.sql": "06f73ec7dc7f950875a60c41792a3086d4cd6481721bc03cb6fc14b9914b0fc6",
    "tollgate_plan_draw.v1.sql": "3bc6720218a250fd03fd7276b726764d54ff4f514df1eeaff528e6116e9aff83",
    "tollgate_plan_draw.v2.sql": "57b55f0d15935aeae0913b9f189e3eb57781a0eefb04df370c079cb190fd3774",
    "tollgate_pricing.v1.sql": "0d7fdba573b1c7e0f6f7447d3d34a7a05d1ecfb49123907673217d35878f113d",
    "tollgate_pricing.v2.sql": "8cfddc6e3f0dc62c2c7d9a7242d922d63fc46e72a753faa0edc4f599d68dfca4",
    "tollgate_unit_cost.v1.sql": "369d1b61d82f2db2b7715b7e919629945d1b3b21ae5fcd0ca22f08cf1bc244a5",
}
LEDGER_FUNCTIONS = ("tollgate_charge", "tollgate_plan_draw", "tollgate_pricing")


@pytest.fixture
def scratch(pg_server: object, database_url: str) -> Iterator[Engine]:
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')  # type: ignore[attr-defined]
    pg_server.psql(f'CREATE DATABASE "{SCRATCH_DB}";')  # type: ignore[attr-defined]
    engine = create_engine(pg8000_url(pg_server.get_uri(SCRATCH_DB)))  # type: ignore[attr-defined]
    yield engine
    engine.dispose()
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')  # type: ignore[attr-defined]


def migrate(engine: Engine, direction: str, target: str) -> None:
    with engine.begin() as conn:
        (upgrade if direction == "up" else downgrade)(target, connection=conn)


def definitions(conn: Connection) -> dict[str, str]:
    rows = conn.execute(
        text(
            "SELECT p.oid::regprocedure::text AS signature, pg_get_functiondef(p.oid) AS body FROM pg_proc p "
            "WHERE p.proname = ANY(:names) ORDER BY 1"
        ),
        {"names": list(LEDGER_FUNCTIONS)},
    )
    return {r.signature: r.body for r in rows}


def data(conn: Connection) -> dict[str, list[Any]]:
    """The ledger's rows, every column but the one this revision changes."""
    grants = conn.execute(
        text(
            "SELECT id, user_id, kind, amount, remaining, status, source_key, expires_at, created_at "
            "FROM credit_grants ORDER BY id"
        )
    ).all()
    return {
        "grants": [tuple(r) for r in grants],
        "accounts": [tuple(r) for r in conn.execute(text("SELECT * FROM credit_accounts ORDER BY user_id"))],
        "ledger": [tuple(r) for r in conn.execute(text("SELECT * FROM credit_transactions ORDER BY id"))],
        "draws": [tuple(r) for r in conn.execute(text("SELECT * FROM credit_draws ORDER BY origin_id, seq"))],
    }


def columns(conn: Connection) -> set[str]:
    return set(
        conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = 'credit_grants'")
        ).scalars()
    )


def charge(conn: Connection, user_id: uuid.UUID, amount: str) -> list[str]:
    """Charge `amount` with the installed tollgate_charge; answers the source keys it drew from, in order."""
    tx = uuid.uuid4()
    row = conn.execute(
        text("SELECT * FROM tollgate_charge(:u, :tx, 'chat', 1, :amount, NULL, NULL, CAST('{}' AS jsonb), :now)"),
        {"u": user_id, "tx": tx, "amount": D(amount), "now": NOW},
    ).one()
    assert row.status == "ok"
    return list(
        conn.execute(
            text(
                "SELECT g.source_key FROM credit_draws d JOIN credit_grants g ON g.id = d.grant_id "
                "WHERE d.origin_id = :tx ORDER BY d.seq"
            ),
            {"tx": tx},
        ).scalars()
    )


def seed(conn: Connection) -> uuid.UUID:
    """A user with a free grant, an allowance that expires soon and a purchased pack, as revision 0005 stores
    them (`priority`: 0 free, 1 pack)."""
    user_id = uuid.uuid4()
    conn.execute(text("INSERT INTO users (id, email) VALUES (:u, :e)"), {"u": user_id, "e": f"{user_id}@example.com"})
    conn.execute(
        text("INSERT INTO credit_accounts (user_id, balance) VALUES (:u, 18)"),
        {"u": user_id},
    )
    for kind, priority, amount, expires in (
        ("promo", 0, "10", None),
        ("allowance", 0, "3", NOW + timedelta(days=3)),
        ("purchase", 1, "5", NOW + timedelta(days=1)),
    ):
        conn.execute(
            text(
                "INSERT INTO credit_grants (id, user_id, kind, priority, amount, remaining, source_key, expires_at, "
                "created_at) VALUES (:id, :u, :kind, :priority, :amount, :amount, :kind, :expires, :created)"
            ),
            {
                "id": uuid.uuid4(),
                "u": user_id,
                "kind": kind,
                "priority": priority,
                "amount": D(amount),
                "expires": expires,
                "created": NOW - timedelta(days=1),
            },
        )
        conn.execute(
            text(
                "INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, created_at) "
                "VALUES (:id, :u, 'promo', :amount, 0, :now)"
            ),
            {"id": uuid.uuid4(), "u": user_id, "amount": D(amount), "now": NOW},
        )
    return user_id


def test_upgrade_and_downgrade_keep_the_ledger_and_swap_priority_for_is_pack(scratch: Engine) -> None:
    # Given the ledger at revision 0005 with grants of both classes and a charge drawn by the version-1 SQL
    migrate(scratch, "up", "0005_payments")
    with scratch.begin() as conn:
        user_id = seed(conn)
        # the allowance (free, soonest expiry) first, then the promotion; the pack waits for auto-use
        assert charge(conn, user_id, "4") == ["allowance", "promo"]
    with scratch.connect() as conn:
        v1 = definitions(conn)
        before = data(conn)
        assert "priority" in columns(conn)

    # When it is upgraded to 0007
    migrate(scratch, "up", "0007_ledger_rules")

    # Then every ledger row is as it was, packs are marked from their priority, and priority is gone
    with scratch.connect() as conn:
        assert data(conn) == before
        assert dict(conn.execute(text("SELECT kind, is_pack FROM credit_grants")).all()) == {
            "promo": False,
            "allowance": False,
            "purchase": True,
        }
        assert "priority" not in columns(conn)
        v2 = definitions(conn)
    assert v2 != v1
    assert "tollgate_pricing(p_user uuid, p_operation text, p_quantity numeric, OUT amount numeric" in "".join(
        v2.values()
    )
    # And the version-2 functions draw in the same order from the migrated rows
    with scratch.begin() as conn:
        assert charge(conn, user_id, "2") == ["promo"]
    with scratch.connect() as conn:
        after_upgrade = data(conn)

    # When it is downgraded again
    migrate(scratch, "down", "0005_payments")

    # Then the rows are kept, priority is back (1 for packs), and the version-1 functions are restored exactly
    with scratch.connect() as conn:
        assert data(conn) == after_upgrade
        assert dict(conn.execute(text("SELECT kind, priority FROM credit_grants")).all()) == {
            "promo": 0,
            "allowance": 0,
            "purchase": 1,
        }
        assert "is_pack" not in columns(conn)
        assert definitions(conn) == v1
        assert conn.scalar(text("SELECT count(*) FROM pg_proc WHERE proname = 'tollgate_draw_candidates'")) == 0
    with scratch.begin() as conn:
        assert charge(conn, user_id, "1") == ["promo"]

    # And it upgrades once more, cleanly
    migrate(scratch, "up", "0007_ledger_rules")
    with scratch.connect() as conn:
        assert definitions(conn) == v2


def test_frozen_sql_versions_are_unchanged() -> None:
    # Given the version files that landed revisions load
    for name, digest in FROZEN.items():
        # Then each is still there, byte for byte as those revisions were written against
        assert hashlib.sha256((SQL_DIR / name).read_bytes()).hexdigest() == digest, name


def test_every_revision_loads_only_version_files_that_exist() -> None:
    # Given the ledger's revisions and the version files they name
    named = set()
    for revision in ("0002_ledger.py", "0007_ledger_rules.py", "0009_ledger_defaults.py"):
        source = (REPO_ROOT / "migrations" / "versions" / revision).read_text()
        named |= set(re.findall(r'"(tollgate_[a-z_]+\.v[0-9]+)"', source))
    # Then each exists, and no version file is left that no revision loads
    assert {f"{name}.sql" for name in named} == {p.name for p in SQL_DIR.glob("*.sql")}
