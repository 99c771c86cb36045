"""Faults on the production path: the serving process killed at random, the database stopped under traffic.

Both run `tollgate serve` as a child process and drive it over HTTP, retrying as providers and clients do (see
tests/fault_harness.py); bench/faults.py runs the same with more traffic and prints its counts.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import use_database
from tests.fault_harness import (
    EmbeddedDatabase,
    Killer,
    Outcome,
    Probe,
    ServeProcess,
    Tally,
    World,
    mismatches,
    probe_round,
    run_traffic,
    seed_world,
    serve_environment,
    steady_traffic,
)
from tollgate.db import UnitOfWork
from tollgate.db.engine import reset_engine


@pytest.fixture
def workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tollgate-faults-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_sigkills_of_the_server_neither_lose_nor_repeat_an_effect(
    db: Callable[[], UnitOfWork], database_url: str, workdir: Path
) -> None:
    # Given 6 users with credits and API keys, a credit pack, and `tollgate serve` on the test database
    world = seed_world(6)
    serve = ServeProcess(serve_environment(database_url), workdir)
    serve.start()
    seed = random.randrange(1 << 32)
    tally, outcome = Tally(), Outcome()
    # When pack purchases (signed Stripe deliveries) and keyed charges flow from 6 clients, each retried until a
    # definitive answer, while the server is killed with SIGKILL 0.8-2 s after each start and started again
    try:
        with Killer(serve, tally, random.Random(seed), up=(0.8, 2.0)) as killer:
            rounds = 0
            while tally.kills < 5 and rounds < 8:
                run_traffic(serve.address, world, tally, outcome, events_per_user=3, charges_per_user=6,
                            workers=6, rng=random.Random(seed + rounds))  # fmt: skip
                rounds += 1
    finally:
        serve.stop()
    summary = (f"seed {seed}: {tally.requests} requests, {tally.attempts} attempts, {tally.retries} retries, "
               f"{tally.kills} kills, answers {dict(tally.statuses)}")  # fmt: skip
    print(summary, f"restarts took {killer.restart_seconds}")
    # Then the server really was killed mid-traffic, and requests really were retried
    assert killer.error is None, f"{killer.error}\n{serve.log_tail()}"
    assert tally.kills >= 5, summary
    assert tally.retries > 0, summary
    # And every request got a definitive answer that kept the contract
    assert outcome.problems == [], summary
    assert len(outcome.events) == 6 * 3 * rounds and len(outcome.charges) == 6 * 6 * rounds
    # And every balance is exactly what the acknowledged answers promise, and reconcile is clean
    assert mismatches(world, outcome) == [], summary


def _probing(
    address: tuple[str, int], world: World, outcome: Outcome, stop: threading.Event, probes: list[Probe]
) -> threading.Thread:
    def run() -> None:
        n = 0
        while not stop.is_set():
            probes.extend(probe_round(address, world, world.customers[n % len(world.customers)], outcome))
            n += 1
            time.sleep(0.05)

    thread = threading.Thread(target=run, name="probe", daemon=True)
    thread.start()
    return thread


def test_a_database_restart_under_traffic_is_503_then_recovers_within_seconds(database_url: str, workdir: Path) -> None:
    # Given `tollgate serve` on an embedded PostgreSQL of its own (the shared test server is never stopped)
    database = EmbeddedDatabase(workdir, "tollgate_outage")
    # One instance per function: the authorizer's cached verdicts cover every key seen before the outage (a
    # cold authorizer with no database fails, which API Gateway answers 500 whatever the function would say).
    serve = ServeProcess(serve_environment(database.url), workdir, migrate=True, extra_args=["--max-instances", "1"])
    stop_traffic, stop_probes = threading.Event(), threading.Event()
    tally, outcome, probes = Tally(), Outcome(), list[Probe]()
    try:
        serve.start()
        use_database(database.url)
        world = seed_world(3)
        reset_engine()  # this process's connections are closed before the database stops under them
        # (each customer's key seen once by the authorizer: its verdict is what a warm container holds)
        for customer in world.customers:
            warm = probe_round(serve.address, world, customer, outcome)
            assert [p.status for p in warm] in ([200, 201, 200], [200, 200, 200]), warm
        # When charges and pack purchases flow (retried until definitive) and every route is probed throughout
        workers = steady_traffic(serve.address, world, tally, outcome, stop_traffic, workers=2)
        prober = _probing(serve.address, world, outcome, stop_probes, probes)
        time.sleep(1.0)
        # and the database is stopped for 3 seconds, then started again
        down_from = time.monotonic()
        database.stop()
        down = time.monotonic()
        time.sleep(3)
        up_from = time.monotonic()
        database.start()
        up = time.monotonic()
        time.sleep(5)
        stop_probes.set()
        prober.join(15)
        stop_traffic.set()
        for worker in workers:
            worker.join(60)
    finally:
        stop_probes.set()
        stop_traffic.set()
        serve.stop()
    try:
        # Then while it was down every route answered 503 dependency_unavailable with Retry-After
        while_down = [p for p in probes if p.started >= down and p.ended <= up_from]
        assert while_down, "no request was answered while the database was down"
        wrong = [p for p in while_down if (p.status, p.code) != (503, "dependency_unavailable") or not p.retry_after]
        assert wrong == [], f"{len(wrong)}/{len(while_down)}: {Counter((p.route, p.status, p.detail) for p in wrong)}"
        # And nothing, at any moment, answered a 500 or no HTTP answer at all
        broken = [p for p in probes if p.status is None or p.status == 500]
        assert broken == [], f"{Counter((p.route, p.status, p.detail) for p in broken)}\n{serve.log_errors()}"
        assert tally.statuses["500"] == 0, f"{dict(tally.failures)}\n{serve.log_errors()}"
        # And within 5 seconds of the database being back, every route answered 2xx and went on doing so
        after = sorted((p for p in probes if p.started >= up), key=lambda p: p.started)
        failing = [p for p in after if not (p.status and 200 <= p.status < 300)]
        recovered_at = max((p.ended for p in failing), default=up) - up
        print(f"down {up_from - down_from:.1f}s; recovered {recovered_at:.2f}s after the database was up; "
              f"{len(probes)} probes; traffic {tally.requests} requests, {tally.retries} retries, "
              f"answers {dict(tally.statuses)}")  # fmt: skip
        assert recovered_at <= 5.0, Counter((p.route, p.status, p.code) for p in failing)
        assert sum(1 for p in after if p.started >= up + recovered_at) >= 6  # and it held for the rest of the run
        # And every acknowledged effect is in the database exactly once, nothing unacknowledged is, reconcile clean
        assert outcome.problems == []
        use_database(database.url)
        assert mismatches(world, outcome) == []
    finally:
        use_database(database_url)
        database.cleanup()
