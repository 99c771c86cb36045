"""Outbox benchmark (issue 17 "Measured"): prints its figures; not a test.

- the cost the outbox adds to a charge, in one run, interleaved: p50/p99 of a charge with balance events off,
  on (the one look-up every charge pays), and on with an event written (what a crossing charge pays);
- events/s relayed: N events fanned out and delivered by one relay to an in-process bus (the database work), and
  to a signed webhook on a local HTTP endpoint;
- the delay from commit to delivery (p50/p99) with a relay polling as in AWS (1 s apart) while a producer commits
  events at a steady rate, and with a 50 ms poll for comparison.

Runs on its own embedded PostgreSQL in a temporary folder. The machine is shared (2 cores): figures are noisy.

    .venv/bin/python bench/outbox.py [--charges 1500] [--events 2000] [--delay-seconds 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp: Path) -> Any:
    os.environ.setdefault("JWT_SIGNING_KEY", os.urandom(32).hex())
    os.environ["TOLLGATE_MAIL_DIR"] = str(tmp / "mail")
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_TRACE_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"
    from tollgate.config import Settings, get_settings
    from tollgate.db.engine import reset_engine
    from tollgate_local.database import start_embedded
    from tollgate_local.migrations import upgrade

    Settings.model_config["env_file"] = None
    server, url = start_embedded(tmp / "pgdata", "tollgate_bench")
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    reset_engine()
    upgrade()
    return server


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(values: Sequence[float]) -> str:
    return (
        f"p50 {statistics.median(values) * 1000:7.2f} ms   p99 {_percentile(values, 0.99) * 1000:7.2f} ms"
        f"   (n={len(values)})"
    )


class _Sink:
    def __init__(self) -> None:
        self.at: dict[Any, float] = {}
        self.lock = threading.Lock()

    def put(self, messages: Sequence[Any]) -> list[str | None]:
        now = time.perf_counter()
        with self.lock:
            for m in messages:
                self.at.setdefault(m.id, now)
        return [None] * len(messages)


def bench_charge(n: int) -> None:
    from decimal import Decimal

    from sqlalchemy import text

    from tollgate import ledger
    from tollgate.config import get_settings
    from tollgate.db import UnitOfWork
    from tollgate.models import User
    from tollgate.outbox import emit

    settings = get_settings()
    with UnitOfWork() as uow:
        uow.session.execute(text("INSERT INTO admin_settings (id) VALUES (1) ON CONFLICT DO NOTHING"))
        uow.session.execute(text("""UPDATE admin_settings SET feature_costs = '{"chat": "1"}' WHERE id = 1"""))
        user = User(email="bench-outbox@example.com")
        uow.session.add(user)
        uow.session.flush()
        ledger.grant(uow.session, user.id, kind="promo", amount=Decimal(10_000_000), source_key="promo:bench")
        uow.commit()
        user_id = user.id
    # A realistic week of recent usage for the look-up to sum (and far from "low": no event is written).
    for _ in range(300):
        with UnitOfWork() as uow:
            ledger.charge(uow.session, user_id, operation="chat")
            uow.commit()

    def charge(mode: str) -> float:
        settings.outbox_balance_events = mode != "off"
        started = time.perf_counter()
        with UnitOfWork() as uow:
            ledger.charge(uow.session, user_id, operation="chat")
            if mode == "event":
                emit(uow.session, "credits.low", user_id=user_id, data={"projected_hours_to_empty": "12.5"})
            uow.commit()
        return time.perf_counter() - started

    times: dict[str, list[float]] = {"off": [], "on": [], "event": []}
    for _ in range(n):
        for mode in times:
            times[mode].append(charge(mode))
    settings.outbox_balance_events = True
    print("charge (commit included), interleaved in one run:")
    print(f"  outbox balance events off        {_ms(times['off'])}")
    print(f"  on (the look-up every charge)    {_ms(times['on'])}")
    print(f"  on + one event written           {_ms(times['event'])}")
    base = statistics.median(times["off"])
    print(
        f"  added at p50: look-up {1000 * (statistics.median(times['on']) - base):+.2f} ms, "
        f"crossing charge {1000 * (statistics.median(times['event']) - base):+.2f} ms"
    )


def _clear() -> None:
    from sqlalchemy import text

    from tollgate.db import UnitOfWork

    with UnitOfWork() as uow:
        uow.session.execute(text("DELETE FROM outbox_deliveries"))
        uow.session.execute(text("DELETE FROM outbox_events"))
        uow.session.execute(text("DELETE FROM webhook_endpoints"))
        uow.commit()


def _emit(n: int) -> None:
    from tollgate.db import UnitOfWork
    from tollgate.outbox import OutboxItem, emit_many

    with UnitOfWork() as uow:
        emit_many(uow.session, [OutboxItem("credits.granted", None, {"i": i}) for i in range(n)])
        uow.commit()


def bench_throughput(n: int) -> None:
    from tollgate.config import get_settings
    from tollgate.jobs.outbox_relay import OutboxRelay

    settings = get_settings().model_copy(update={"outbox_delivery": "local", "outbox_batch_size": 200})
    _clear()
    _emit(n)
    sink = _Sink()
    started = time.perf_counter()
    OutboxRelay(settings, sink=sink).run(run_seconds=0)
    elapsed = time.perf_counter() - started
    assert len(sink.at) == n
    print(f"relay to the bus (in-process sink): {n} events in {elapsed:.2f} s = {n / elapsed:,.0f} events/s")

    # One signed webhook endpoint on this machine, beside the bus: every event goes to both.
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    from tollgate.db import UnitOfWork
    from tollgate.models.registry import load_all
    from tollgate.services import webhook_endpoints
    from tollgate.services.authz import Actor

    load_all()
    from tollgate.models import User

    with UnitOfWork() as uow:
        staff = User(email="bench-admin@example.com", role="ADMIN")
        uow.session.add(staff)
        uow.commit()
        actor = Actor.user(staff.id, "ADMIN")
    _clear()
    webhook_endpoints.create_endpoint(
        UnitOfWork(), actor, url=f"http://localhost:{server.server_address[1]}/h", events=["*"]
    )
    m = max(n // 4, 100)
    _emit(m)
    started = time.perf_counter()
    report = OutboxRelay(settings, sink=_Sink()).run(run_seconds=0)
    elapsed = time.perf_counter() - started
    server.shutdown()
    print(
        f"relay to the bus + a signed local webhook: {m} events ({report.delivered} deliveries) in {elapsed:.2f} s"
        f" = {m / elapsed:,.0f} events/s"
    )


def bench_delay(seconds: float, poll: float, rate: int) -> list[float]:
    from tollgate.config import get_settings
    from tollgate.db import UnitOfWork
    from tollgate.jobs.outbox_relay import OutboxRelay
    from tollgate.outbox import emit

    _clear()
    sink = _Sink()
    settings = get_settings().model_copy(update={"outbox_delivery": "local"})
    done = threading.Event()

    def run_relay() -> None:
        OutboxRelay(settings, sink=sink).run(run_seconds=seconds + 5, poll_seconds=poll, stop=done.is_set)

    relay = threading.Thread(target=run_relay)
    relay.start()
    committed: dict[Any, float] = {}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        with UnitOfWork() as uow:
            event_id = emit(uow.session, "credits.granted", user_id=None, data={})
            uow.commit()
        committed[event_id] = time.perf_counter()
        time.sleep(1 / rate)
    wait_until = time.perf_counter() + poll + 5
    while len(sink.at) < len(committed) and time.perf_counter() < wait_until:
        time.sleep(0.05)
    done.set()
    relay.join()
    return [sink.at[i] - t for i, t in committed.items() if i in sink.at]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--charges", type=int, default=1500)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--delay-seconds", type=float, default=8.0)
    parser.add_argument("--rate", type=int, default=50, help="events committed per second in the delay run")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT / "local")]

    with tempfile.TemporaryDirectory(prefix="tollgate-bench-outbox-") as folder:
        server = _setup(Path(folder))
        try:
            bench_charge(args.charges)
            bench_throughput(args.events)
            for poll in (1.0, 0.05):
                delays = bench_delay(args.delay_seconds, poll, args.rate)
                print(f"commit to delivery, relay polling every {poll * 1000:.0f} ms: {_ms(delays)}")
        finally:
            from tollgate.db.engine import reset_engine

            reset_engine()
            server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
