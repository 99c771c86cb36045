"""Webhook benchmark (issue 5 "Measured"): prints its figures; not a test.

Signed Stripe `checkout.session.completed` events (pack purchases) through the real handler's Lambda invoke
path - the API Gateway v2 event the local gateway builds, `functions/webhooks/app.lambda_handler` with a Lambda
context: body guards, routing, Stripe signature verification (the `stripe` library), the event store, the
purchase, the ledger grant, the commit. One process, one event at a time, as one Lambda container serves them.

- new: each event a new purchase by a different user (the pack granted once);
- duplicate: the same deliveries again (answered from the event store, nothing changes);
- floor: one `INSERT ... ON CONFLICT DO NOTHING` + COMMIT through the same engine (the least a stored event costs).

Targets on this machine: p50 <= 10 ms for a new pack purchase, <= 3 ms for a duplicate. It runs on its own
embedded PostgreSQL in a temporary folder (migrated, seeded). The machine is shared (2 cores, other engineers
at work): figures are noisy; compare them within one run.

    .venv/bin/python bench/webhooks.py [--events 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_secret"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _report(name: str, latencies: list[float], wall: float) -> None:
    print(
        f"{name:10} n={len(latencies):5d}  {len(latencies) / wall:8.1f} events/s  "
        f"p50 {statistics.median(latencies) * 1000:6.2f} ms  p99 {_percentile(latencies, 0.99) * 1000:6.2f} ms  "
        f"mean {statistics.fmean(latencies) * 1000:6.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()

    os.environ.update(
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="WARNING",
        STRIPE_WEBHOOK_SECRET=SECRET,
        PAYMENTS_LIVE_MODE="false",
        DB_POOL_SIZE="1",
    )
    os.environ.pop("STRIPE_SECRET_KEY", None)  # no line-item look-up: this measures Tollgate, not Stripe's API
    sys.path[:0] = [str(ROOT / "layers" / "shared"), str(ROOT / "local")]
    from sqlalchemy import select, text

    from tollgate.config import Settings, get_settings
    from tollgate.db import UnitOfWork
    from tollgate.db.engine import get_engine, reset_engine
    from tollgate.models import User
    from tollgate.models.credits import CreditPack
    from tollgate.payments.money import to_minor
    from tollgate_local import TEMPLATE_PATH
    from tollgate_local.database import start_embedded
    from tollgate_local.events import HttpRequest, build_http_event, read_http_result
    from tollgate_local.gateway import Gateway
    from tollgate_local.migrations import upgrade
    from tollgate_local.seed import seed
    from tollgate_local.template import Template
    from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event, stripe_signature

    Settings.model_config["env_file"] = None
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-webhooks-") as tmp:
        server, url = start_embedded(Path(tmp) / "pgdata", "bench")
        os.environ["DATABASE_URL"] = url
        get_settings.cache_clear()
        reset_engine()
        upgrade()
        written = seed()
        total = args.events + args.warmup
        with UnitOfWork() as uow:
            pack = uow.session.execute(select(CreditPack).where(CreditPack.active).limit(1)).scalar_one_or_none()
            if pack is None:  # the catalogue seeder is not there yet: the pack the seed file describes
                pack = CreditPack(name="Starter pack", credits=Decimal("100"), price=Decimal("5.00"), currency="usd",
                                  expires_after_days=365, active=True)  # fmt: skip
                uow.session.add(pack)
            users = [User(email=f"bench-{i}@example.com") for i in range(total)]
            uow.session.add_all(users)
            uow.session.flush()
            pack_id, credits, minor, currency = (
                pack.id,
                pack.credits,
                to_minor(pack.price, pack.currency),
                pack.currency,
            )
            user_ids = [u.id for u in users]
            uow.commit()
        print(f"embedded PostgreSQL in {tmp}; seeded {written}; pack {credits} credits for {minor} {currency}")

        gateway = Gateway(Template(TEMPLATE_PATH))
        route, params, _ = gateway.match("POST", "/webhooks/stripe")
        assert route is not None

        def deliveries(n: int, offset: int) -> list[dict[str, Any]]:
            events = []
            for user_id in user_ids[offset : offset + n]:
                session = stripe_checkout_session(user_id=str(user_id), item_id=str(pack_id), amount_minor=minor,
                                                  currency=currency.lower())  # fmt: skip
                body = json.dumps(stripe_event("checkout.session.completed", session))
                headers = [("content-type", "application/json"), ("stripe-signature", stripe_signature(body, SECRET))]
                request = HttpRequest("POST", "/webhooks/stripe", "", headers, body.encode(), "198.51.100.7")
                events.append(build_http_event(request, route.route_key, params))
            return events

        def run(events: list[dict[str, Any]], expect_duplicate: bool) -> tuple[list[float], float]:
            latencies = []
            started = time.perf_counter()
            for event in events:
                t0 = time.perf_counter()
                result = read_http_result(gateway.runner.invoke(route.function_id, dict(event)))
                latencies.append(time.perf_counter() - t0)
                answer = json.loads(result.body)
                if result.status != 200 or answer["duplicate"] is not expect_duplicate:
                    raise SystemExit(f"unexpected answer {result.status}: {answer}")
            return latencies, time.perf_counter() - started

        run(deliveries(args.warmup, 0), expect_duplicate=False)  # imports, connection, caches
        measured = deliveries(args.events, args.warmup)
        new, new_wall = run(measured, expect_duplicate=False)
        dup, dup_wall = run(measured, expect_duplicate=True)

        floor: list[float] = []
        engine = get_engine()
        floor_started = time.perf_counter()
        for i in range(args.events):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO webhook_events (id, provider, event_id, type, status) "
                        "VALUES (:id, 'stripe', :e, 'bench.floor', 'processed') ON CONFLICT DO NOTHING"
                    ),
                    {"id": uuid.uuid4(), "e": f"floor_{i}"},
                )
            floor.append(time.perf_counter() - t0)
        floor_wall = time.perf_counter() - floor_started

        with UnitOfWork() as uow:
            granted = uow.session.execute(
                text("SELECT count(*), coalesce(sum(amount), 0) FROM credit_grants WHERE kind = 'purchase'")
            ).one()
        expected = total * credits
        print(f"purchase grants: {granted[0]} (expected {total}), credits {granted[1]} (expected {expected})")
        if granted[0] != total or Decimal(granted[1]) != expected:
            raise SystemExit("the benchmark's grants do not add up")
        load = os.getloadavg()
        print(f"machine: 2 shared cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} - figures are noisy")
        _report("new", new, new_wall)
        _report("duplicate", dup, dup_wall)
        _report("floor", floor, floor_wall)
        print(
            f"targets: new p50 {statistics.median(new) * 1000:.2f} ms (<= 10), "
            f"duplicate p50 {statistics.median(dup) * 1000:.2f} ms (<= 3)"
        )
        reset_engine()
        del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
