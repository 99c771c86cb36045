"""Fault-injection run (issue 10 "Measured"): prints its counts; not a test (tests/integration/test_fault_injection.py
is the short version that runs in `make test`).

`tollgate serve` runs as a child process on its own embedded PostgreSQL (a temporary folder). Signed Stripe
`checkout.session.completed` deliveries (a 100-credit pack each) and `POST /credits/usage` charges with an
`Idempotency-Key` flow from several clients, each request retried until it gets a definitive answer (2xx or a
final 4xx; a cut connection, a 5xx or a 429 is retried), while the server is killed with SIGKILL at random
moments and started again. Then, optionally, the database itself is stopped and started under steady traffic.

Afterwards every balance is compared with the acknowledged effects (each event granted once, each key charged
once, nothing unacknowledged in the ledger) and the ledger is reconciled. The last line is the count of final
mismatches, which must be 0 (the exit status is 1 otherwise).

    .venv/bin/python bench/faults.py [--users 20] [--events 15] [--charges 15] [--kills 25] [--db-restarts 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--events", type=int, default=15, help="pack purchases per user and round")
    parser.add_argument("--charges", type=int, default=15, help="keyed charges per user and round")
    parser.add_argument("--workers", type=int, default=8, help="client threads")
    parser.add_argument("--kills", type=int, default=25, help="SIGKILLs at least (more rounds run until reached)")
    parser.add_argument("--up", default="0.5,2.0", help="seconds the server lives after each start: min,max")
    parser.add_argument("--db-restarts", type=int, default=2, help="database stops of 2 s under traffic afterwards")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    up_min, up_max = (float(v) for v in args.up.split(","))
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)

    os.environ.update(
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="WARNING",
        MAIL_MIN_INTERVAL_SECONDS="0",
    )
    os.environ.setdefault("JWT_SIGNING_KEY", os.urandom(32).hex())
    sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "shared"), str(ROOT / "local")]
    from tests.fault_harness import (
        EmbeddedDatabase,
        Killer,
        Outcome,
        ServeProcess,
        Tally,
        mismatches,
        probe_round,
        run_traffic,
        seed_world,
        serve_environment,
        steady_traffic,
    )
    from tollgate.config import Settings, get_settings
    from tollgate.db.engine import reset_engine

    Settings.model_config["env_file"] = None

    def use(url: str) -> None:
        os.environ["DATABASE_URL"] = url
        get_settings.cache_clear()
        reset_engine()

    with tempfile.TemporaryDirectory(prefix="tollgate-bench-faults-") as tmp:
        folder = Path(tmp)
        os.environ["TOLLGATE_MAIL_DIR"] = str(folder / "mail")  # the server's mail too: out of the working tree
        os.chmod(folder, 0o777)  # pgserver runs postgres as its own user when started by root
        database = EmbeddedDatabase(folder, "tollgate_faults")
        serve = ServeProcess(serve_environment(database.url), folder, migrate=True)
        try:
            first = serve.start()
            serve.migrate = False
            use(database.url)
            with contextlib.redirect_stdout(io.StringIO()):  # the local mail backend echoes each API-key notice
                world = seed_world(args.users)
            reset_engine()  # close this process's connections now: the database restarts below would break them
            print(f"seed {seed}; server ready in {first:.1f}s (migrated); {args.users} users, {args.workers} clients")

            # 1. SIGKILLs of the serving process under traffic.
            tally, outcome = Tally(), Outcome(phase="sigkill")
            started = time.monotonic()
            rounds = 0
            with Killer(serve, tally, random.Random(seed), up=(up_min, up_max)) as killer:
                while tally.kills < args.kills or rounds == 0:
                    run_traffic(serve.address, world, tally, outcome, events_per_user=args.events,
                                charges_per_user=args.charges, workers=args.workers,
                                rng=random.Random(seed + rounds + 1))  # fmt: skip
                    rounds += 1
                    if killer.error is not None:
                        break
            wall = time.monotonic() - started
            if killer.error is not None:
                print(f"the server could not be restarted: {killer.error}\n{serve.log_tail()}")
                return 1
            restarts = killer.restart_seconds or [0.0]
            print(f"\nSIGKILL run: {rounds} round(s) in {wall:.0f}s")
            t = tally
            print(f"  requests {t.requests}, attempts {t.attempts}, retries {t.retries}, kills {t.kills}")
            print(f"  restart to ready: median {statistics.median(restarts):.1f}s, max {max(restarts):.1f}s")
            print(f"  acknowledged: {len(outcome.events)} pack purchases, {len(outcome.charges)} keyed charges")
            print(f"  attempt outcomes: {dict(sorted(tally.statuses.items()))}")
            found = list(outcome.problems)

            # 2. The database stopped and started under steady traffic.
            outage = Counter[str]()
            recoveries: list[float] = []
            outcome.phase = "database restart"
            for _ in range(args.db_restarts):
                stop = threading.Event()
                workers = steady_traffic(serve.address, world, tally, outcome, stop, workers=max(2, args.workers // 2))
                time.sleep(1.0)
                database.stop()
                down_until = time.monotonic() + 2.0
                customers = iter(world.customers * 1000)
                while time.monotonic() < down_until:
                    for p in probe_round(serve.address, world, next(customers), outcome):
                        outage[f"{p.status} {p.code}"] += 1
                database.start()
                up = time.monotonic()
                while time.monotonic() - up < 30:
                    probes = probe_round(serve.address, world, next(customers), outcome)
                    if all(p.status is not None and 200 <= p.status < 300 for p in probes):
                        recoveries.append(time.monotonic() - up)
                        break
                stop.set()
                for worker in workers:
                    worker.join(120)
            if args.db_restarts:
                print(f"\ndatabase restarts: {args.db_restarts} x 2 s down under traffic")
                print(f"  answers while down: {dict(outage)}")
                print(f"  back to all-2xx after: {', '.join(f'{r:.2f}s' for r in recoveries) or 'never'}")
                if len(recoveries) < args.db_restarts:
                    found.append("the server did not recover from a database restart within 30 s")
                found.extend(f"{n} answer(s) '{k}' while the database was down" for k, n in outage.items()
                             if k != "503 dependency_unavailable")  # fmt: skip
        finally:
            serve.stop()

        use(database.url)
        found.extend(mismatches(world, outcome))
        reset_engine()
        database.cleanup()
    print(f"\nrequests {tally.requests}, kills {tally.kills}, retries {tally.retries}, final mismatches: {len(found)}")
    for line in found[:20]:
        print(f"  {line}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
