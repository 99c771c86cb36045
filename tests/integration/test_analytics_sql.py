"""The analytics metrics have one definition, `tollgate_analytics_day` (migrations/sql/analytics, loaded by
0024_analytics_sql): the database runs the file's text, the migration creates and drops it, the rollup calls it
once a day and restates none of its rules, and the reports only read what it wrote."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Connection, Engine, create_engine, text

from tests.conftest import REPO_ROOT
from tests.edge_support import recorded_statements
from tests.support import make_user
from tollgate.db import UnitOfWork
from tollgate.db.engine import pg8000_url
from tollgate.jobs.analytics import day_bounds, rollup_day
from tollgate.models.jobs import ANALYTICS_METRICS
from tollgate_local.migrations import downgrade, upgrade

SQL_DIR = REPO_ROOT / "migrations" / "sql" / "analytics"
SQL_FILE = SQL_DIR / "tollgate_analytics_day.v1.sql"
REVISION = REPO_ROOT / "migrations" / "versions" / "0024_analytics_sql.py"
SCRATCH_DB = "tollgate_analytics_sql_migration"
DAY = date(2026, 10, 14)
START, END = day_bounds(DAY)
D = Decimal

# A file a landed revision loads is history: a change of a metric is a new version file and a new revision.
FROZEN = {"tollgate_analytics_day.v1.sql": "39d042ad9f28a482e2ecfc7a60f0e63a9d71443bc94c7e08653e5ce51b44b73b"}

# Text that would restate a metric rule: table names the metrics read, statuses, and the columns they decide on.
RULE_MARKERS = (
    "subscriptions",
    "credit_transactions",
    "purchases",
    "past_due",
    "trialing",
    "on_trial",
    "unit_amount",
    "cancel_at_period_end",
    "trial_end",
    "refunded_amount",
    "monthly_allowance",
)


def _body(sql: str) -> str:
    """The function's body as written between its dollar quotes."""
    found = re.search(r"\bAS \$\$(.*)\$\$;\s*$", sql, re.DOTALL)
    assert found is not None
    return found.group(1)


def _code(sql: str) -> str:
    """The SQL without its `--` comments."""
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _figures(conn: Connection, start: datetime = START, end: datetime = END) -> dict[tuple[str, str], Decimal]:
    rows = conn.execute(
        text("SELECT metric, dimension, value FROM tollgate_analytics_day(:s, :e)"), {"s": start, "e": end}
    ).all()
    figures = {(r.metric, r.dimension): D(r.value) for r in rows}
    assert len(figures) == len(rows), "one row per (metric, dimension)"
    return figures


def _zero_day() -> dict[tuple[str, str], Decimal]:
    return {(metric, ""): D(0) for metric in ANALYTICS_METRICS}


# --- the file and the database agree -----------------------------------------------------------------------------
def test_the_database_runs_the_sql_files_text(db: Callable[[], UnitOfWork]) -> None:
    # Given the function as the migrated database has it
    with db() as uow:
        row = uow.session.execute(
            text(
                "SELECT p.prosrc, l.lanname, p.provolatile, p.oid::regprocedure::text AS signature, "
                "pg_get_function_result(p.oid) AS result FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                "WHERE p.proname = 'tollgate_analytics_day'"
            )
        ).one()
    # Then it is the file's body, byte for byte, a STABLE SQL function of the day's bounds
    assert row.prosrc == _body(SQL_FILE.read_text(encoding="utf-8"))
    assert (row.lanname, row.provolatile) == ("sql", "s")
    assert row.signature == "tollgate_analytics_day(timestamp with time zone,timestamp with time zone)"
    assert row.result == "TABLE(metric text, dimension text, value numeric)"


def test_frozen_sql_versions_are_unchanged_and_each_is_loaded() -> None:
    # Given the version files the revision loads
    named = set(re.findall(r'"(tollgate_[a-z_]+\.v[0-9]+)"', REVISION.read_text(encoding="utf-8")))
    # Then each exists and none is left that no revision loads, and each is byte for byte as it landed
    assert {f"{name}.sql" for name in named} == {p.name for p in SQL_DIR.glob("*.sql")} == set(FROZEN)
    for name, digest in FROZEN.items():
        assert hashlib.sha256((SQL_DIR / name).read_bytes()).hexdigest() == digest, name


def test_each_status_is_classed_once_and_every_metric_is_named_once() -> None:
    # Given the function's SQL without its comments
    code = _code(_body(SQL_FILE.read_text(encoding="utf-8")))
    # Then each subscription status of the paying and live lists is written once (the `statuses` list)
    for status in ("active", "past_due", "trialing", "on_trial"):
        assert code.count(f"'{status}'") == 1, status
    # And each metric the reports accept has exactly one query
    for metric in ANALYTICS_METRICS:
        assert code.count(f"'{metric}'") == 1, metric


def test_no_metric_rule_is_restated_in_python() -> None:
    # Given the rollup job, and the report that serves its figures (reports.analytics)
    tollgate = REPO_ROOT / "layers" / "shared" / "tollgate"
    job = (tollgate / "jobs" / "analytics.py").read_text(encoding="utf-8")
    reports = (tollgate / "services" / "reports.py").read_text(encoding="utf-8")
    report = reports[reports.index("def analytics(") : reports.index("# --- lists")]
    # Then neither names what a metric counts or how: the job calls the function, the report reads its rows
    for name, source in (("jobs/analytics.py", job), ("reports.analytics", report)):
        for marker in RULE_MARKERS:
            assert marker not in source.lower(), (name, marker)
    assert "tollgate_analytics_day" in job and "text(" not in report
    assert "AnalyticsMetric" in report and "Subscription" not in report.replace("AnalyticsMetric", "")


# --- what the function answers -----------------------------------------------------------------------------------
def test_an_empty_day_says_zero_for_every_metric(db: Callable[[], UnitOfWork]) -> None:
    # Given a database with nothing in it, When the function answers a day
    with db() as uow:
        figures = _figures(uow.session.connection())
    # Then every metric the reports accept has its one row, 0 with no dimension
    assert figures == _zero_day()


def test_the_day_is_half_open_and_reversed_bounds_count_nothing(db: Callable[[], UnitOfWork]) -> None:
    # Given users created exactly at the day's start, just before its end, and exactly at its end
    with db() as uow:
        for at in (START, END - timedelta(microseconds=1), END):
            make_user(uow.session, created_at=at)
        uow.commit()
    with db() as uow:
        conn = uow.session.connection()
        # Then the day counts the first two (start included, end excluded)
        assert _figures(conn)[("new_users", "")] == 2
        # And bounds given the wrong way round count nothing rather than failing or counting backwards
        assert _figures(conn, END, START) == _zero_day()


def test_the_rollup_writes_exactly_what_the_function_answers_in_two_statements(db: Callable[[], UnitOfWork]) -> None:
    # Given a day with a paying subscription in each of two currencies and a purchase
    with db() as uow:
        s = uow.session
        for ref, currency, amount in (("sub_usd", "usd", "19.00"), ("sub_brl", "brl", "49.90")):
            s.execute(
                text(
                    "INSERT INTO subscriptions (id, provider, provider_subscription_id, user_id, status, unit_amount, "
                    "currency, interval, quantity, created_at) VALUES (:id, 'stripe', :ref, :u, 'active', :amount, "
                    ":currency, 'month', 1, :created)"
                ),
                {"id": uuid.uuid4(), "ref": ref, "u": make_user(s).id, "amount": D(amount), "currency": currency,
                 "created": START - timedelta(days=3)},
            )  # fmt: skip
        uow.commit()
    with db() as uow:
        expected = _figures(uow.session.connection())
    # When the rollup writes the day, with every statement it sends recorded
    with db() as uow, recorded_statements() as sent:
        written = rollup_day(uow.session, DAY, END + timedelta(minutes=20))
        uow.commit()
    # Then it read the figures in one statement and wrote them with the one upsert
    assert len(sent) == 2, sent
    assert "tollgate_analytics_day" in sent[0] and sent[1].startswith("INSERT INTO analytics")
    # And the rows are the function's, one per metric and currency
    with db() as uow:
        stored = {
            (r.metric, r.dimension): D(r.value)
            for r in uow.session.execute(
                text("SELECT metric, dimension, value FROM analytics WHERE day = :d"), {"d": DAY}
            )
        }
    assert stored == expected and written == len(expected)
    assert stored[("mrr", "usd")] == D("19") and stored[("mrr", "brl")] == D("49.9")
    assert ("mrr", "") not in stored  # the zero row is only for a day with no currency at all


# --- the migration -----------------------------------------------------------------------------------------------
@pytest.fixture
def scratch(pg_server: object, database_url: str) -> Iterator[Engine]:
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')  # type: ignore[attr-defined]
    pg_server.psql(f'CREATE DATABASE "{SCRATCH_DB}";')  # type: ignore[attr-defined]
    engine = create_engine(pg8000_url(pg_server.get_uri(SCRATCH_DB)))  # type: ignore[attr-defined]
    yield engine
    engine.dispose()
    pg_server.psql(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}";')  # type: ignore[attr-defined]


def _migrate(engine: Engine, direction: str, target: str) -> None:
    with engine.begin() as conn:
        (upgrade if direction == "up" else downgrade)(target, connection=conn)


def _installed(conn: Connection) -> int:
    return int(conn.scalar(text("SELECT count(*) FROM pg_proc WHERE proname = 'tollgate_analytics_day'")) or 0)


def test_the_migration_creates_the_function_on_its_own_and_drops_it_again(scratch: Engine) -> None:
    # Given an empty database upgraded to 0024 alone (its branch and the payments it depends on, nothing else)
    _migrate(scratch, "up", "0024_analytics_sql")
    with scratch.begin() as conn:
        assert set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == {"0024_analytics_sql"}
        # (the payments it depends on came first; no merge: later branches, e.g. commerce, are not pulled in)
        tables = conn.execute(text("SELECT to_regclass('subscriptions') IS NULL, to_regclass('orders') IS NULL")).one()
        assert tuple(tables) == (False, True)
        user_id = uuid.uuid4()
        conn.execute(
            text("INSERT INTO users (id, email, created_at) VALUES (:u, :e, :at)"),
            {"u": user_id, "e": f"{user_id}@example.com", "at": START + timedelta(hours=1)},
        )
        # Then the function answers the day from the tables it reads
        assert _installed(conn) == 1
        figures = _figures(conn)
    assert figures == {**_zero_day(), ("new_users", ""): D(1)}

    # When it is downgraded to the revision before
    _migrate(scratch, "down", "0006_jobs")
    # Then the function is gone, the analytics table and the rows it reads are kept
    with scratch.connect() as conn:
        assert _installed(conn) == 0
        assert conn.scalar(text("SELECT to_regclass('analytics') IS NOT NULL")) is True
        assert conn.scalar(text("SELECT count(*) FROM users")) == 1
        # (only this revision went: the payments it depends on stay)
        assert set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == {
            "0005_payments",
            "0006_jobs",
        }

    # And it upgrades once more to the same figures
    _migrate(scratch, "up", "0024_analytics_sql")
    with scratch.connect() as conn:
        assert _figures(conn) == figures


def test_the_rollup_rerun_for_a_day_keeps_one_row_per_metric_and_takes_the_new_figures(
    db: Callable[[], UnitOfWork],
) -> None:
    # Given a day rolled up once
    run = datetime(2026, 10, 15, 0, 20, tzinfo=UTC)
    with db() as uow:
        rollup_day(uow.session, DAY, run)
        uow.commit()
    # When a user turns out to have signed up that day and the day is rolled up again
    with db() as uow:
        make_user(uow.session, created_at=START + timedelta(hours=2))
        rollup_day(uow.session, DAY, run + timedelta(hours=1))
        uow.commit()
    # Then each metric still has one row, and the rerun's figures replaced the first
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT metric, dimension, value, computed_at FROM analytics WHERE day = :d"), {"d": DAY}
        ).all()
    assert sorted(r.metric for r in rows) == sorted(ANALYTICS_METRICS)
    assert {r.metric: D(r.value) for r in rows}["new_users"] == 1
    assert {r.computed_at for r in rows} == {run + timedelta(hours=1)}
