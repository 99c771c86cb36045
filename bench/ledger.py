"""Ledger benchmark (issue 3 "Measured"): prints its figures; not a test.

Charges per second and p50/p99 latency with 1, 4 and 8 worker processes, spread over 1,000 users and all on
one (hot) user, three ways, in the same run:
- service: `tollgate.services.credits.record_usage` (what POST /credits/usage runs: a UnitOfWork, SQLAlchemy
  session, pg8000, the ledger's charge as one statement between BEGIN and COMMIT), one process per worker as
  Lambdas are, with the connection settings template.yaml gives CreditsFunction (pool of 1, pre-ping on);
- floor (pg8000): the same work as ONE raw SQL statement per charge - a conditional UPDATE of the account's
  balance and the ledger INSERT in one CTE - sent with pg8000 (autocommit) from as many Python processes;
- tx floor (pg8000): that statement between BEGIN and COMMIT (one simple query each), as every statement must
  run behind a transaction-mode pooler (RDS Proxy, PgBouncer): the peer of the service's own transaction;
- floor (pgbench): that same statement driven by `pgbench` (shipped with the embedded PostgreSQL).
Then service/floor ratios, and a user with 50 live grants against a user with one.

Runs on its own embedded PostgreSQL in a temporary folder (synchronous_commit on, as in production). The
machine is shared (2 cores, other engineers at work): figures are noisy; compare ratios within one run.

    .venv/bin/python bench/ledger.py [--seconds 4] [--workers 1,4,8]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPREAD_USERS = 1000
GRANT = "1000000000"
FLOOR_SQL = (
    "WITH acc AS (UPDATE credit_accounts SET balance = balance - 1, updated_at = now() "
    "WHERE user_id = {uid} AND balance - held - 1 >= floor RETURNING user_id, balance) "
    "INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, operation, created_at) "
    "SELECT {tx}, user_id, 'usage', -1, balance, 'chat', now() FROM acc"
)


def _uid(group: int, n: int) -> uuid.UUID:
    """Deterministic user ids, so pgbench can name them from an integer: group 1 service, 2 floor."""
    return uuid.UUID(f"00000000-0000-0000-{group:04d}-{n:012d}")


# The connection settings the template deploys for POST /credits/usage (pool size, pre-ping, timeout), read from
# template.yaml, never restated here; only the database's address is local.
TEMPLATE_DB_SETTINGS = ("DB_POOL_SIZE", "DB_POOL_PRE_PING", "DB_STATEMENT_TIMEOUT_MS")


def template_db_environment() -> dict[str, str]:
    from tollgate_local import TEMPLATE_PATH
    from tollgate_local.template import Template

    environment = Template(TEMPLATE_PATH).functions["CreditsFunction"].environment
    return {name: str(environment[name]).lower() for name in TEMPLATE_DB_SETTINGS if name in environment}


def _env() -> None:
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"
    os.environ.update(template_db_environment())


# --- workers (separate processes) -------------------------------------------------------------------------------
def _service_worker(url: str, users: list[uuid.UUID], seconds: float, start: Any, out: Any) -> None:
    _env()
    os.environ["DATABASE_URL"] = url
    import random

    from tollgate.config import Settings
    from tollgate.db import UnitOfWork
    from tollgate.services.credits import record_usage

    Settings.model_config["env_file"] = None
    with UnitOfWork() as uow:  # connect before the clock starts
        uow.session.execute(__import__("sqlalchemy").text("SELECT 1"))
    rng = random.Random()
    latencies: list[float] = []
    start.wait()
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        record_usage(UnitOfWork(), rng.choice(users), operation="chat")  # what POST /credits/usage runs
        latencies.append(time.perf_counter() - t0)
    out.put(latencies)


def _floor_worker(url: str, users: list[uuid.UUID], seconds: float, start: Any, out: Any) -> None:
    _floor_loop(url, users, seconds, start, out, in_transaction=False)


def _tx_floor_worker(url: str, users: list[uuid.UUID], seconds: float, start: Any, out: Any) -> None:
    _floor_loop(url, users, seconds, start, out, in_transaction=True)


def _floor_loop(
    url: str, users: list[uuid.UUID], seconds: float, start: Any, out: Any, *, in_transaction: bool
) -> None:
    """The floor statement per charge; `in_transaction`: between BEGIN and COMMIT (simple queries, one round
    trip each), the shape every statement must have behind a transaction-mode pooler."""
    import random

    import pg8000.native

    from tollgate.db.base import new_id
    from tollgate.db.engine import pg8000_url

    u = pg8000_url(url)
    conn = pg8000.native.Connection(
        user=u.username or "postgres", database=u.database, unix_sock=u.query.get("unix_sock")
    )
    sql = FLOOR_SQL.format(uid=":uid", tx=":tx")
    rng = random.Random()
    latencies: list[float] = []
    start.wait()
    deadline = time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        if t0 >= deadline:
            break
        if in_transaction:
            conn.run("BEGIN")
        conn.run(sql, uid=rng.choice(users), tx=new_id())
        if in_transaction:
            conn.run("COMMIT")
        latencies.append(time.perf_counter() - t0)
    conn.close()
    out.put(latencies)


def _run_processes(target: Any, url: str, users: list[uuid.UUID], workers: int, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(url, users, seconds, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    began = time.perf_counter()
    latencies: list[float] = []
    for _ in procs:
        latencies.extend(out.get(timeout=seconds + 120))
    elapsed = max(time.perf_counter() - began, seconds)
    for p in procs:
        p.join()
    return _figures(latencies, elapsed)


def _figures(latencies: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * (len(ordered) - 1)))] if ordered else float("nan")
    return {
        "tps": len(latencies) / elapsed,
        "p50": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99": p99 * 1000,
        "n": len(latencies),
    }


# --- pgbench ------------------------------------------------------------------------------------------------------
def _pgbench(
    server: Any, database: str, tmp: Path, group: int, hot: bool, workers: int, seconds: float, attempt: int = 0
) -> dict[str, float]:
    import pgserver

    info = server.get_postmaster_info()
    binary = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pgbench"
    uid = (
        f"'{_uid(group, 0)}'::uuid" if hot else f"('00000000-0000-0000-{group:04d}-' || lpad(:n::text, 12, '0'))::uuid"
    )
    script = tmp / f"floor-{group}-{hot}-{workers}-{attempt}.sql"
    lines = [] if hot else [f"\\set n random(1, {SPREAD_USERS})"]
    lines.append(FLOOR_SQL.format(uid=uid, tx="gen_random_uuid()") + ";")
    script.write_text("\n".join(lines) + "\n")
    logdir = tmp / f"pgbench-{group}-{hot}-{workers}-{attempt}"
    logdir.mkdir()
    cmd = [
        str(binary), "-n", "-c", str(workers), "-j", str(workers), "-T", str(int(seconds)), "-f", str(script),
        "-h", str(info.socket_dir), "-p", str(info.port), "-U", "postgres", "-l", "--log-prefix",
        str(logdir / "log"), database,
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp)
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    latencies: list[float] = []
    for log in logdir.glob("log*"):
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3:
                latencies.append(int(parts[2]) / 1_000_000)
    figures = _figures(latencies, seconds)
    if match:
        figures["tps"] = float(match.group(1))
    return figures


# --- set-up -------------------------------------------------------------------------------------------------------
def _setup(tmp: Path) -> tuple[Any, str]:
    _env()
    from tollgate.config import Settings, get_settings
    from tollgate.db.engine import reset_engine
    from tollgate_local.database import start_embedded
    from tollgate_local.migrations import upgrade

    Settings.model_config["env_file"] = None
    server, url = start_embedded(tmp / "pgdata", "tollgate_bench")
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    reset_engine()
    upgrade("0009_ledger_defaults")  # the ledger's own schema (independent of other areas' branches)
    return server, url


def _seed() -> None:
    from datetime import timedelta
    from decimal import Decimal

    from sqlalchemy import text

    from tollgate import ledger
    from tollgate.db import UnitOfWork
    from tollgate.db.base import utcnow

    with UnitOfWork() as uow:
        s = uow.session
        s.execute(text("""UPDATE admin_settings SET feature_costs = '{"chat": "1"}'"""))
        # Raw inserts: only the columns of 0001_users (the bench migrates the ledger's branch alone).
        ids = [_uid(group, n) for group in (1, 2) for n in range(SPREAD_USERS + 1)]  # n = 0: the hot user
        ids += [_uid(3, 1), _uid(3, 2)]  # the 50-grant user and its one-grant twin
        s.execute(
            text("INSERT INTO users (id, email) VALUES (:id, :email)"),
            [{"id": i, "email": f"bench-{i}@example.com"} for i in ids],
        )
        for group in (1, 2):
            for n in range(SPREAD_USERS + 1):
                ledger.grant(s, _uid(group, n), kind="promo", amount=Decimal(GRANT), source_key="bench")
        now = utcnow()
        for i in range(50):
            ledger.grant(
                s, _uid(3, 1), kind="promo", amount=Decimal(GRANT), source_key=f"g{i}",
                expires_at=now + timedelta(days=30 + i),
            )  # fmt: skip
        ledger.grant(s, _uid(3, 2), kind="promo", amount=Decimal(GRANT), source_key="g0")
        uow.commit()
    from tollgate.db.engine import reset_engine

    reset_engine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=2, help="alternating runs per figure; the best is shown")
    parser.add_argument("--workers", default="1,4,8")
    args = parser.parse_args()
    workers_list = [int(w) for w in args.workers.split(",")]
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-ledger-") as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o777)  # pgserver runs postgres as its own user when started by root
        server, url = _setup(tmp)
        t0 = time.perf_counter()
        _seed()
        print(f"seeded {2 * (SPREAD_USERS + 1) + 2} users in {time.perf_counter() - t0:.1f}s")
        print("service connection settings (template.yaml, CreditsFunction):", template_db_environment())
        database = "tollgate_bench"
        spread = {
            1: [_uid(1, n) for n in range(1, SPREAD_USERS + 1)],
            2: [_uid(2, n) for n in range(1, SPREAD_USERS + 1)],
        }
        hot = {1: [_uid(1, 0)], 2: [_uid(2, 0)]}
        print(
            f"\n{args.seconds:.0f}s per run, best of {args.repeat} alternating runs; tps = charges/s; "
            "latency in ms per charge (commit included)"
        )
        header = f"{'load':<7}{'workers':>8}  {'service tps':>12}{'p50':>7}{'p99':>7}  {'pg8000 floor':>13}{'p50':>7}{'p99':>7}  {'tx floor':>9}{'p50':>7}{'p99':>7}  {'pgbench':>9}{'p50':>7}{'p99':>7}  {'svc/pg8000':>10}{'svc/tx':>7}{'svc/pgbench':>12}"  # noqa: E501
        print(header)
        print("-" * len(header))
        for load, users in (("spread", spread), ("hot", hot)):
            for workers in workers_list:
                runs: dict[str, list[dict[str, float]]] = {"svc": [], "flo": [], "txf": [], "pgb": []}
                for attempt in range(args.repeat):  # alternating, so a burst of load elsewhere hits all of them
                    runs["svc"].append(_run_processes(_service_worker, url, users[1], workers, args.seconds))
                    runs["flo"].append(_run_processes(_floor_worker, url, users[2], workers, args.seconds))
                    runs["txf"].append(_run_processes(_tx_floor_worker, url, users[2], workers, args.seconds))
                    runs["pgb"].append(
                        _pgbench(server, database, tmp, 2, load == "hot", workers, args.seconds, attempt)
                    )
                svc, flo, txf, pgb = (max(runs[k], key=lambda f: f["tps"]) for k in ("svc", "flo", "txf", "pgb"))
                print(
                    f"{load:<7}{workers:>8}  {svc['tps']:>12.0f}{svc['p50']:>7.2f}{svc['p99']:>7.2f}  "
                    f"{flo['tps']:>13.0f}{flo['p50']:>7.2f}{flo['p99']:>7.2f}  "
                    f"{txf['tps']:>9.0f}{txf['p50']:>7.2f}{txf['p99']:>7.2f}  "
                    f"{pgb['tps']:>9.0f}{pgb['p50']:>7.2f}{pgb['p99']:>7.2f}  "
                    f"{svc['tps'] / flo['tps']:>10.2f}{svc['tps'] / txf['tps']:>7.2f}{svc['tps'] / pgb['tps']:>12.2f}"
                )
        print("\nmany grants (service, hot user): one grant vs 50 live grants")
        for workers in (1, 8):
            ones, fifties = [], []
            for _ in range(args.repeat):
                ones.append(_run_processes(_service_worker, url, [_uid(3, 2)], workers, args.seconds))
                fifties.append(_run_processes(_service_worker, url, [_uid(3, 1)], workers, args.seconds))
            one, fifty = (max(r, key=lambda f: f["tps"]) for r in (ones, fifties))
            print(
                f"  {workers} worker(s): 1 grant {one['tps']:.0f}/s (p99 {one['p99']:.2f} ms), "
                f"50 grants {fifty['tps']:.0f}/s (p99 {fifty['p99']:.2f} ms): ratio {fifty['tps'] / one['tps']:.2f}"
            )
        from tollgate import ledger
        from tollgate.db import UnitOfWork

        with UnitOfWork() as uow:
            report = ledger.reconcile(uow.session)
        service_users = [m for m in report.mismatches if str(m.user_id).startswith("00000000-0000-0000-0001")]
        print(f"\nreconcile after the run: {report.users_checked} accounts, {len(service_users)} service mismatches")
        print("(floor runs bypass the grants on purpose, so their accounts are not expected to reconcile)")
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
