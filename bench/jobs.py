"""MonthlyAllowance over many users: users per second and peak memory, at several sizes to show memory stays
flat in the number of users (it works in fixed-size batches).

    python bench/jobs.py [--users 100000] [--batch 1000]

Starts its own embedded PostgreSQL in a temporary folder, migrates it, seeds a FREE plan and the users, then
runs the job the way the Lambda does (batches, one transaction each, cursor saved) until every user has their
allowance. Target: >= 2,000 users/s.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT / "local")]
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

TARGET_USERS_PER_SECOND = 2000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    from sqlalchemy import text

    from tollgate.config import get_settings
    from tollgate.db import UnitOfWork
    from tollgate.db.engine import reset_engine
    from tollgate.jobs import run_job
    from tollgate.jobs.allowance import MonthlyAllowance
    from tollgate_local.database import start_embedded
    from tollgate_local.migrations import upgrade

    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as tmp:
        server, url = start_embedded(Path(tmp) / "pgdata", "bench", throwaway=True)
        os.environ["DATABASE_URL"] = url
        get_settings.cache_clear()
        reset_engine()
        upgrade()

        sizes = sorted({max(1, args.users // 10), args.users // 2, args.users})
        results = []
        # One month per size: every user so far is due again (anchors are days 1-28; new users are enrolled
        # by the trigger on `users`, due at once).
        clocks = [datetime(2026, 12, 28, 12, tzinfo=UTC), datetime(2027, 1, 28, 12, tzinfo=UTC),
                  datetime(2027, 2, 28, 12, tzinfo=UTC)]  # fmt: skip
        seeded = 0
        for size, period_now in zip(sizes, clocks, strict=False):
            with UnitOfWork() as uow:
                uow.session.execute(
                    text(
                        "INSERT INTO plans (id, tier, name, monthly_credits, rollover) "
                        "VALUES (gen_random_uuid(), 'FREE', 'Free', 50, 'none') ON CONFLICT DO NOTHING"
                    )
                )
                # created across the month, in a handful of time zones, so anchors and zones vary
                uow.session.execute(
                    text(
                        "INSERT INTO users (id, email, created_at, updated_at, timezone) "
                        "SELECT gen_random_uuid(), 'bench' || g || '@example.com', "
                        "       timestamptz '2026-11-01' + mod(g, 28) * interval '1 day', now(), "
                        "       (ARRAY['UTC','Europe/Berlin','America/New_York','Asia/Tokyo'])[1 + mod(g, 4)] "
                        "FROM generate_series(CAST(:start AS int), CAST(:stop AS int)) g"
                    ),
                    {"start": seeded + 1, "stop": size},
                )
                uow.commit()
            with UnitOfWork() as uow:
                # What autovacuum does to a live table: the planner needs to know the users are there.
                uow.session.execute(text("ANALYZE"))
            seeded = size
            job = MonthlyAllowance(batch_size=args.batch)
            started = time.perf_counter()
            report = run_job(job, now=period_now, remaining_ms=lambda: 10**9, safety_ms=0)
            elapsed = time.perf_counter() - started
            # ru_maxrss is the process's peak so far: if memory grew with the users, it would climb here.
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            issued = report.stats.get("allowances_issued", 0)
            results.append((size, issued, elapsed, peak_rss))
            print(
                f"users={size:>7}  allowances issued={issued:>7}  {elapsed:7.2f} s  "
                f"{size / elapsed:8.0f} users/s  peak RSS so far {peak_rss:6.1f} MiB",
                flush=True,
            )
        del server
    size, _, elapsed, _ = results[-1]
    rate = size / elapsed
    peaks = [peak for *_, peak in results]
    print(
        f"MonthlyAllowance: {rate:.0f} users/s at {size} users (target >= {TARGET_USERS_PER_SECOND}); "
        f"peak RSS {peaks[0]:.1f} MiB after {results[0][0]} users, {peaks[-1]:.1f} MiB after {size}"
    )
    return 0 if rate >= TARGET_USERS_PER_SECOND else 1


if __name__ == "__main__":
    sys.exit(main())
