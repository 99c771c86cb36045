"""Commerce benchmark (issue 13 "Measured"): prints its figures; not a test.

- race: 8 workers race cart checkouts (`services.orders.checkout`: the reserving transaction, the Stripe call to
  the local Stripe stand-in, the recording transaction) for the last 10 units of a product's stock, then for the
  last 10 uses of a discount; checkouts/s, and oversells / overshoots (both must be 0);
- webhooks: signed `checkout.session.completed` events through the real webhooks Lambda handler, one at a time:
  completing a cart order (amount checks, discount use counted, items fulfilled) beside a credit-pack purchase
  (its order, the ledger grant), p50/p99.

Runs on its own embedded PostgreSQL in a temporary folder. The machine is shared (2 cores): figures are noisy;
compare them within one run.

    .venv/bin/python bench/commerce.py [--buyers 40] [--events 150]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_bench_commerce"
WORKERS = 8
URLS = {"success_url": "https://shop.example.com/ok", "cancel_url": "https://shop.example.com/cart"}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _ms(values: list[float]) -> str:
    p50, p99 = statistics.median(values) * 1000, _percentile(values, 0.99) * 1000
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buyers", type=int, default=40, help="checkouts racing in each round")
    parser.add_argument("--events", type=int, default=150, help="webhook deliveries of each kind")
    args = parser.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "shared"), str(ROOT / "local")]
    os.environ.update(
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_TRACE_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="WARNING",
        STRIPE_WEBHOOK_SECRET=SECRET,
        PAYMENTS_LIVE_MODE="false",
        DB_POOL_SIZE=str(WORKERS + 2),
    )

    from sqlalchemy import text

    import tests.commerce_orders_standin  # noqa: F401 - the stand-in's order sessions
    from tests.provider_standins import StripeStandIn
    from tollgate.config import Settings, get_settings
    from tollgate.db import UnitOfWork
    from tollgate.db.engine import reset_engine
    from tollgate.errors import TollgateError
    from tollgate.models import User
    from tollgate.models.commerce import Discount, Order
    from tollgate.models.credits import CreditPack
    from tollgate.models.payments import Price, Product
    from tollgate.services import orders
    from tollgate_local import TEMPLATE_PATH
    from tollgate_local.database import start_embedded
    from tollgate_local.events import HttpRequest, build_http_event, read_http_result
    from tollgate_local.gateway import Gateway
    from tollgate_local.migrations import upgrade
    from tollgate_local.template import Template
    from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event, stripe_signature

    stripe = StripeStandIn().start()
    os.environ.update(STRIPE_SECRET_KEY=stripe.api_key, STRIPE_API_BASE=stripe.base_url)
    Settings.model_config["env_file"] = None
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-commerce-") as tmp:
        server, url = start_embedded(Path(tmp) / "pgdata", "bench")
        os.environ["DATABASE_URL"] = url
        get_settings.cache_clear()
        reset_engine()
        upgrade()
        n_users = 2 * args.buyers + 2 * args.events
        with UnitOfWork() as uow:
            s = uow.session

            def item(name: str, stock: int | None) -> uuid.UUID:
                product = Product(name=name, slug=name.lower(), status="PUBLISHED", type="ONE_TIME",
                                  base_price=Decimal("10.00"), currency="usd", tax_rate=Decimal("0.0825"),
                                  track_inventory=stock is not None, stock_quantity=stock or 0)  # fmt: skip
                s.add(product)
                s.flush()
                price = Price(product_id=product.id, unit_amount=Decimal("10.00"), currency="usd", type="one_time")
                s.add(price)
                s.flush()
                return price.id

            scarce, plenty = item("Scarce", 10), item("Plenty", None)
            code = Discount(code="LAST10", name="Last ten", type="PERCENTAGE", value=Decimal(10), max_uses=10)
            pack = CreditPack(name="Starter pack", credits=Decimal("100"), price=Decimal("5.00"), currency="usd",
                              expires_after_days=365, active=True)  # fmt: skip
            users = [User(email=f"bench-{i}@example.com") for i in range(n_users)]
            s.add_all([code, pack, *users])
            s.flush()
            user_ids, pack_id = [u.id for u in users], pack.id
            uow.commit()

        def race(buyers: list[uuid.UUID], price_id: uuid.UUID, discount: str | None) -> tuple[int, int, float]:
            queue, lock, results = list(buyers), threading.Lock(), {"ok": 0, "refused": 0}
            start = threading.Barrier(WORKERS)

            def worker() -> None:
                start.wait()
                while True:
                    with lock:
                        if not queue:
                            return
                        buyer = queue.pop()
                    try:
                        orders.checkout(UnitOfWork(), buyer, items=[(price_id, 1)], discount_code=discount, **URLS)
                        outcome = "ok"
                    except TollgateError:
                        outcome = "refused"
                    with lock:
                        results[outcome] += 1

            threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return results["ok"], results["refused"], time.perf_counter() - started

        orders.checkout(UnitOfWork(), user_ids[-1], items=[(plenty, 1)], discount_code=None, **URLS)  # warm-up
        stock_ok, stock_refused, stock_wall = race(user_ids[: args.buyers], scarce, None)
        use_ok, use_refused, use_wall = race(user_ids[args.buyers : 2 * args.buyers], plenty, "LAST10")
        with UnitOfWork() as uow:
            left = uow.session.execute(text("SELECT stock_quantity FROM products WHERE slug = 'scarce'")).scalar_one()
            held = uow.session.execute(
                text("SELECT coalesce(sum(stock_reserved), 0) FROM order_items i JOIN prices p ON p.id = i.price_id "
                     "JOIN products r ON r.id = p.product_id WHERE r.slug = 'scarce'")
            ).scalar_one()  # fmt: skip
            taken = uow.session.execute(text("SELECT current_uses + reserved_uses FROM discounts")).scalar_one()
        oversells = max(0, int(held) - 10) + (1 if left < 0 else 0)
        overshoots = max(0, int(taken) - 10)

        # Webhooks: cart orders to complete (sequential checkouts first), and pack purchases.
        gateway = Gateway(Template(TEMPLATE_PATH))
        route, params, _ = gateway.match("POST", "/webhooks/stripe")
        assert route is not None
        base = 2 * args.buyers
        order_ids = [
            orders.checkout(UnitOfWork(), user_ids[base + i], items=[(plenty, 2)], discount_code=None, **URLS).order_id
            for i in range(args.events)
        ]
        with UnitOfWork() as uow:
            rows = {o.id: o for o in uow.session.query(Order).filter(Order.id.in_(order_ids))}
            sessions = {i: rows[i].provider_checkout_id for i in order_ids}

        def signed(obj: dict[str, Any]) -> dict[str, Any]:
            body = json.dumps(stripe_event("checkout.session.completed", obj))
            headers = [("content-type", "application/json"), ("stripe-signature", stripe_signature(body, SECRET))]
            request = HttpRequest("POST", "/webhooks/stripe", "", headers, body.encode(), "198.51.100.7")
            return build_http_event(request, route.route_key, params)

        def order_event(order_id: uuid.UUID) -> dict[str, Any]:
            obj = dict(stripe.sessions[str(sessions[order_id])])
            obj.update(status="complete", payment_status="paid", payment_intent=f"pi_{uuid.uuid4().hex[:24]}",
                       customer=f"cus_{uuid.uuid4().hex[:14]}")  # fmt: skip
            return signed(obj)

        def pack_event(user_id: uuid.UUID) -> dict[str, Any]:
            return signed(stripe_checkout_session(user_id=str(user_id), item_id=str(pack_id), amount_minor=500,
                                                  currency="usd"))  # fmt: skip

        def run(events: list[dict[str, Any]]) -> list[float]:
            latencies = []
            for event in events:
                t0 = time.perf_counter()
                result = read_http_result(gateway.runner.invoke(route.function_id, event))
                latencies.append(time.perf_counter() - t0)
                answer = json.loads(result.body)
                if result.status != 200 or answer.get("status") != "processed":
                    raise SystemExit(f"unexpected answer {result.status}: {answer}")
            return latencies

        order_events = [order_event(i) for i in order_ids]
        pack_events = [pack_event(u) for u in user_ids[base + args.events : base + 2 * args.events]]
        run(pack_events[:10])  # imports, connection
        order_lat = run(order_events)
        pack_lat = run(pack_events[10:])
        with UnitOfWork() as uow:
            completed = uow.session.execute(text("SELECT count(*) FROM orders WHERE status = 'COMPLETED'")).scalar_one()
        expected = args.events + len(pack_events)
        load = os.getloadavg()
        print(f"machine: 2 shared cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} - figures are noisy")
        print(
            f"stock race:    {WORKERS} workers, {args.buyers} checkouts for the last 10 units: {stock_ok} ok, "
            f"{stock_refused} out_of_stock, {args.buyers / stock_wall:6.1f} checkouts/s, stock left {left}, "
            f"oversells {oversells}"
        )
        print(
            f"discount race: {WORKERS} workers, {args.buyers} checkouts for the last 10 uses:  {use_ok} ok, "
            f"{use_refused} refused, {args.buyers / use_wall:6.1f} checkouts/s, uses taken {taken}, "
            f"overshoots {overshoots}"
        )
        print(f"order-completion webhook  {_ms(order_lat)}")
        print(f"pack webhook              {_ms(pack_lat)}")
        print(f"completed orders: {completed} (expected {expected})")
        stripe.stop()
        reset_engine()
        del server
        if oversells or overshoots or stock_ok != 10 or use_ok != 10 or completed != expected:
            raise SystemExit("the race or the completions do not add up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
