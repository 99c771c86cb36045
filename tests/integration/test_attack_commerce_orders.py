"""Attacks on the money path of cart orders: crafted carts, foreign and replayed Checkout events, reordered
events, delayed payments, the reservation sweep racing a completion, first-order and per-customer discounts
raced, Idempotency-Keys raced and shared, and pack orders delivered twice at once."""

# ruff: noqa: F403, F405
from __future__ import annotations

import json
import threading
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.commerce_orders_support import *
from tests.payments_support import *
from tests.provider_standins import Recorded, StripeStandIn
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import TollgateError
from tollgate.models.payments import Price
from tollgate.services import orders


def _race(n: int, fn: Any) -> list[object]:
    results: list[object] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(i)
        except TollgateError as exc:
            results[i] = exc.code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def _raw_checkout(buyer_id: uuid.UUID, items: Any) -> ApiResponse:
    return api_call("POST", "/orders/checkout", body={"items": items, **URLS}, as_user=buyer_id)


# --- crafted carts -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("quantity", [0, -1, 1_000_000_000, "2", 2.5, 2.0, None, True])
def test_a_quantity_that_is_not_a_whole_number_in_bounds_is_a_422_and_nothing_is_written(db, stripe_api, quantity):
    # Given a product in stock
    item = product(db, stock=5)
    # When a cart names it with a crafted quantity
    answer = _raw_checkout(user(db), [{"price_id": str(item.price_id), "quantity": quantity}])
    # Then 422, no order, no stock taken, Stripe never asked
    assert answer.status == 422, answer.json
    assert count(db, "orders") == 0 and stock(db, item) == 5 and not stripe_api.sessions


def test_a_thousand_lines_or_one_price_twice_is_refused(db, stripe_api):
    item = product(db, stock=5)
    buyer_id = user(db)
    # A thousand lines is past the edge's bound
    many = _raw_checkout(buyer_id, [{"price_id": str(item.price_id), "quantity": 1}] * 1000)
    assert many.status == 422
    # The same price twice (to dodge the quantity bound or reserve stock twice) is invalid_cart
    twice = _raw_checkout(buyer_id, [{"price_id": str(item.price_id), "quantity": 60}] * 2)
    assert twice.status == 422 and twice.json["error"]["details"]["reason"] == "duplicate"
    assert count(db, "orders") == 0 and stock(db, item) == 5


def test_two_prices_of_one_tracked_product_draw_on_the_same_stock(db, stripe_api):
    # Given a product with 3 units and a second price of it
    item = product(db, name="Lamp", stock=3)
    with db() as uow:
        second = Price(product_id=item.product_id, unit_amount=Decimal("12.00"), currency="usd", active=True)
        uow.session.add(second)
        uow.session.flush()
        second_id = second.id
        uow.commit()
    buyer_id = user(db)
    lines = [{"price_id": str(item.price_id), "quantity": 2}, {"price_id": str(second_id), "quantity": 2}]
    # When 2 + 2 are asked for: 409, the 3 units stay
    short = _raw_checkout(buyer_id, lines)
    assert short.status == 409 and short.error_code == "out_of_stock"
    assert short.json["error"]["details"]["requested"] == 4 and stock(db, item) == 3
    # And 2 + 1 takes exactly 3, each item reserving its own share
    lines[1]["quantity"] = 1
    ok = _raw_checkout(buyer_id, lines)
    assert ok.status == 201, ok.json
    assert stock(db, item) == 0
    assert sorted(r["stock_reserved"] for r in items_of(db, ok.json["order_id"])) == [1, 2]
    # And its expiry gives back exactly 3
    deliver(session_event(stripe_api, db, ok.json["order_id"], "checkout.session.expired", paid=False))
    assert stock(db, item) == 3


@pytest.mark.parametrize("state", ["inactive_price", "deleted_price", "archived", "deleted_product", "mirror"])
def test_a_price_not_for_sale_is_refused(db, stripe_api, state):
    item = product(db, stock=2)
    sql = {
        "inactive_price": "UPDATE prices SET active = false WHERE id = :price",
        "deleted_price": "UPDATE prices SET deleted = true WHERE id = :price",
        "archived": "UPDATE products SET status = 'ARCHIVED' WHERE id = :product",
        "deleted_product": "UPDATE products SET deleted_at = now() WHERE id = :product",
        "mirror": "UPDATE products SET slug = NULL WHERE id = :product",
    }[state]
    with db() as uow:
        uow.session.execute(text(sql), {"price": item.price_id, "product": item.product_id})
        uow.commit()
    answer = checkout(user(db), [(item, 1)])
    assert answer.status == 422 and answer.error_code == "invalid_cart"
    assert count(db, "orders") == 0 and stock(db, item) == 2


def test_untracked_stock_is_neither_taken_nor_given_back(db, stripe_api):
    # Given a product that does not track inventory (its stock column says 0)
    item = product(db)
    order_id = checkout(user(db), [(item, 4)]).json["order_id"]
    assert stock(db, item) == 0 and items_of(db, order_id)[0]["stock_reserved"] == 0
    # When the checkout expires, nothing is "given back" to a stock it never took
    deliver(session_event(stripe_api, db, order_id, "checkout.session.expired", paid=False))
    assert stock(db, item) == 0


# --- foreign, mismatched and replayed events --------------------------------------------------------------------
def test_a_session_whose_metadata_names_another_order_is_rejected_and_neither_order_moves(db, stripe_api):
    # Given two PENDING orders (another user's, and a second one of the same buyer)
    item = product(db, stock=5)
    buyer_id = user(db)
    mine = checkout(buyer_id, [(item, 1)]).json["order_id"]
    other_mine = checkout(buyer_id, [(item, 2)]).json["order_id"]
    theirs = checkout(user(db), [(item, 1)]).json["order_id"]
    for target in (theirs, other_mine):
        # When my paid session arrives with its metadata pointing at the other order
        obj = session_of(stripe_api, db, mine)
        event = session_event(stripe_api, db, mine, metadata={**obj["metadata"], "tollgate_order_id": target})
        answer = deliver(event)
        # Then it is rejected: the session is not that order's checkout
        assert answer.json["status"] == "rejected"
        assert order_row(db, target)["status"] == "PENDING"
    assert order_row(db, mine)["status"] == "PENDING" and stock(db, item) == 1


def test_a_session_naming_an_unknown_or_malformed_order_is_rejected(db, stripe_api):
    item = product(db)
    order_id = checkout(user(db), [(item, 1)]).json["order_id"]
    for bogus in (str(uuid.uuid4()), "not-a-uuid", "' OR 1=1 --"):
        obj = session_of(stripe_api, db, order_id)
        answer = deliver(
            session_event(stripe_api, db, order_id, metadata={**obj["metadata"], "tollgate_order_id": bogus})
        )
        assert answer.json["status"] == "rejected"
    assert order_row(db, order_id)["status"] == "PENDING"


@pytest.mark.parametrize(
    "changes",
    [
        {"amount_total": 100},  # subtotal right, total lowered
        {"amount_total": 0, "amount_subtotal": 0, "payment_status": "no_payment_required"},
        {"currency": "jpy"},  # the same number in a currency worth 100x less
        {"currency": None},
        {"amount_total": "1100"},  # a string is not the integer Stripe sends
        {"amount_total": None},
    ],
)
def test_an_amount_or_currency_that_is_not_the_orders_fulfils_nothing(db, stripe_api, changes):
    item = product(db, amount="11.00", stock=2)
    code_id = discount(db, "ANY")
    order_id = checkout(user(db), [(item, 1)], code="ANY").json["order_id"]
    answer = deliver(session_event(stripe_api, db, order_id, **changes))
    assert answer.json["status"] == "rejected"
    order = order_row(db, order_id)
    assert (order["status"], order["paid_at"]) == ("PENDING", None)
    assert uses(db, code_id) == (0, 1) and stock(db, item) == 1


def test_two_distinct_completed_events_for_one_session_fulfil_once(db, stripe_api):
    # Given a paid order with a download and a counted code
    item = product(db, type="DIGITAL_DOWNLOAD", download_limit=2, stock=3)
    code_id = discount(db, "ONCE10")
    order_id = checkout(user(db), [(item, 1)], code="ONCE10").json["order_id"]
    # When Stripe sends completed and async_payment_succeeded for it as two events, on two threads at once
    events = [
        session_event(stripe_api, db, order_id),
        session_event(stripe_api, db, order_id, "checkout.session.async_payment_succeeded"),
    ]
    answers = _race(2, lambda i: send_stripe(events[i]))
    # Then both are answered (a retryable 5xx is allowed for the loser) and the order is fulfilled exactly once
    assert all(isinstance(a, ApiResponse) and a.status in (200, 503) for a in answers), answers
    for event, answer in zip(events, answers, strict=True):
        if isinstance(answer, ApiResponse) and answer.status != 200:
            deliver(event)  # Stripe's retry
    order = order_row(db, order_id)
    assert order["status"] == "COMPLETED" and uses(db, code_id) == (1, 0) and stock(db, item) == 2
    assert count(db, "outbox_events", "dedupe_key = :k", k=f"order.completed:{order_id}") == 1


# --- delayed payments and reordering -------------------------------------------------------------------------------
def test_an_unpaid_completion_fulfils_nothing_until_the_async_success(db, stripe_api):
    # Given an order for a download with a code, completed by a delayed method (payment_status unpaid)
    item = product(db, type="DIGITAL_DOWNLOAD", download_limit=3, access_days=7, stock=2)
    code_id = discount(db, "LATER")
    order_id = checkout(user(db), [(item, 1)], code="LATER").json["order_id"]
    deliver(session_event(stripe_api, db, order_id, paid=False))
    # Then it is PROCESSING: nothing fulfilled, no access, the use still only reserved, the stock still held
    order = order_row(db, order_id)
    assert (order["status"], order["payment_status"], order["paid_at"]) == ("PROCESSING", "PROCESSING", None)
    (row,) = items_of(db, order_id)
    assert row["fulfilled_at"] is None and row["download_limit"] is None
    assert uses(db, code_id) == (0, 1) and stock(db, item) == 1
    # And the sweep, long after the checkout's expiry, leaves a PROCESSING order alone
    with db() as uow:
        uow.session.execute(
            text("UPDATE orders SET checkout_expires_at = now() - interval '2 hours' WHERE id = :id"), {"id": order_id}
        )
        uow.commit()
    with UnitOfWork() as uow:
        assert orders.release_stale(uow.session, utcnow(), timedelta(minutes=15), 100) == 0
        uow.commit()
    # When the async payment succeeds, it is fulfilled; a failure reported after that releases nothing
    deliver(session_event(stripe_api, db, order_id, "checkout.session.async_payment_succeeded"))
    late = deliver(session_event(stripe_api, db, order_id, "checkout.session.async_payment_failed", paid=False))
    assert late.json["status"] == "ignored"
    order = order_row(db, order_id)
    assert (order["status"], order["payment_status"]) == ("COMPLETED", "SUCCEEDED")
    assert items_of(db, order_id)[0]["download_limit"] == 3
    assert uses(db, code_id) == (1, 0) and stock(db, item) == 1


def test_an_expiry_a_sweep_and_another_expiry_give_the_stock_back_once(db, stripe_api):
    item = product(db, stock=4)
    code_id = discount(db, "BACK", max_uses=1)
    order_id = checkout(user(db), [(item, 3)], code="BACK").json["order_id"]
    expired = session_event(stripe_api, db, order_id, "checkout.session.expired", paid=False)
    deliver(expired)
    with db() as uow:
        uow.session.execute(
            text("UPDATE orders SET checkout_expires_at = now() - interval '2 hours' WHERE id = :id"), {"id": order_id}
        )
        uow.commit()
    with UnitOfWork() as uow:
        assert orders.release_stale(uow.session, utcnow(), timedelta(minutes=15), 100) == 0
        uow.commit()
    deliver(session_event(stripe_api, db, order_id, "checkout.session.expired", paid=False))  # a second event id
    assert stock(db, item) == 4 and uses(db, code_id) == (0, 0)
    assert count(db, "discount_usages", "status = 'released'") == 1


def test_the_sweep_racing_a_completion_never_both_sells_and_gives_back(db, stripe_api):
    # Given 8 orders of one unit each, all past their expiry, and their paid completions
    item = product(db, stock=8)
    order_ids = [checkout(user(db), [(item, 1)]).json["order_id"] for _ in range(8)]
    events = [session_event(stripe_api, db, oid) for oid in order_ids]
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET checkout_expires_at = now() - interval '2 hours'"))
        uow.commit()

    def sweep() -> int:
        total = 0
        for _ in range(8):
            with UnitOfWork() as uow:
                total += orders.release_stale(uow.session, utcnow(), timedelta(minutes=15), 1)
                uow.commit()
        return total

    # When the sweep and the 8 completions run at once on real threads
    results = _race(9, lambda i: sweep() if i == 8 else send_stripe(events[i]))
    for event, answer in zip(events, results[:8], strict=True):
        if isinstance(answer, ApiResponse) and answer.status != 200:
            deliver(event)
    # Then each order is either COMPLETED (its unit sold) or CANCELLED (its unit back, payment kept for a refund)
    rows = [order_row(db, oid) for oid in order_ids]
    completed = [r for r in rows if r["status"] == "COMPLETED"]
    cancelled = [r for r in rows if r["status"] == "CANCELLED"]
    assert len(completed) + len(cancelled) == 8
    assert stock(db, item) == len(cancelled)
    assert all(r["stock_reserved"] == 0 for oid in [r["id"] for r in cancelled] for r in items_of(db, oid))
    assert all(r["stock_reserved"] == 1 for oid in [r["id"] for r in completed] for r in items_of(db, oid))


# --- discounts -----------------------------------------------------------------------------------------------------
def test_a_first_order_code_is_not_held_by_two_open_checkouts_of_one_buyer(db, stripe_api):
    # Given a first-order-only 50 % code (no per-customer limit) and a buyer who has never paid
    item = product(db, amount="40.00")
    code_id = discount(db, "WELCOME", value=50, first_time_only=True)
    buyer_id = user(db)
    # When the buyer opens 8 checkouts with it at once (different Idempotency-Keys), and then one more
    results = _race(8, lambda i: checkout(buyer_id, [(item, 1)], code="welcome", key=f"ft-{i}"))
    later = checkout(buyer_id, [(item, 1)], code="WELCOME")
    # Then one holds the code; the others are told it is for a first order only
    statuses = sorted(r.status for r in results if isinstance(r, ApiResponse))
    assert statuses == [201] + [422] * 7, statuses
    assert later.status == 422 and later.json["error"]["details"]["reason"] == "first_time_only"
    assert uses(db, code_id) == (0, 1)
    # And once that checkout expires unpaid, the code is the buyer's to use again
    (held,) = [r.json["order_id"] for r in results if isinstance(r, ApiResponse) and r.status == 201]
    deliver(session_event(stripe_api, db, held, "checkout.session.expired", paid=False))
    assert checkout(buyer_id, [(item, 1)], code="WELCOME").status == 201


def test_a_per_customer_limit_holds_against_eight_keys_at_once(db, stripe_api):
    item = product(db)
    code_id = discount(db, "TWICE", max_uses_per_customer=2)
    buyer_id = user(db)
    results = _race(8, lambda i: checkout(buyer_id, [(item, 1)], code="TWICE", key=f"pc-{i}"))
    assert sorted(r.status for r in results if isinstance(r, ApiResponse)) == [201] * 2 + [422] * 6
    assert uses(db, code_id) == (0, 2)


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (" save10 ", 201),
        ("Save10", 201),
        ("SAVE10\u200b", 422),
        ("\uff33AVE10", 422),
        ("\u017fave10", 422),
        ("SAVE1O", 422),
    ],
)
def test_code_variants_match_only_the_code_itself(db, stripe_api, code, status):
    # Given SAVE10; a whitespace or case variant is the code, a look-alike (zero-width, fullwidth, long s) is not
    item = product(db)
    discount(db, "SAVE10")
    answer = checkout(user(db), [(item, 1)], code=code)
    assert answer.status == status, answer.json
    if status == 422:
        assert count(db, "discount_usages") == 0


def test_the_discount_window_and_minimum_are_exact(db, stripe_api):
    item = product(db, amount="25.00")
    now = utcnow()
    discount(db, "LATE", valid_until=now - timedelta(seconds=1))
    discount(db, "EARLY", valid_from=now + timedelta(minutes=5))
    discount(db, "MIN50", minimum_amount=Decimal("50.00"))
    buyer_id = user(db)
    assert checkout(buyer_id, [(item, 1)], code="LATE").json["error"]["details"]["reason"] == "expired"
    assert checkout(buyer_id, [(item, 1)], code="EARLY").json["error"]["details"]["reason"] == "not_started"
    assert checkout(buyer_id, [(item, 1)], code="MIN50").json["error"]["details"]["reason"] == "minimum_amount"
    at_bound = checkout(buyer_id, [(item, 2)], code="MIN50")  # exactly 50.00
    assert at_bound.status == 201 and order_row(db, at_bound.json["order_id"])["discount_amount"] == Decimal("5.00")


def test_a_hundred_percent_code_makes_a_zero_order_that_completes_once(db, stripe_api):
    # Given a 100 % code on a taxed product
    item = product(db, amount="9.99", tax_rate="0.2", stock=1)
    code_id = discount(db, "FREE", value=100)
    answer = checkout(user(db), [(item, 1)], code="FREE")
    assert answer.status == 201, answer.json
    order = order_row(db, answer.json["order_id"])
    # Then the total is 0 (no tax on nothing) and Stripe was asked for exactly 0
    assert (order["total_amount"], order["tax_amount"]) == (Decimal("0.00"), Decimal("0.00"))
    assert session_of(stripe_api, db, answer.json["order_id"])["amount_total"] == 0
    # And a completion with no payment required fulfils it once
    deliver(
        session_event(
            stripe_api, db, answer.json["order_id"], payment_status="no_payment_required", payment_intent=None
        )
    )
    assert order_row(db, answer.json["order_id"])["status"] == "COMPLETED" and uses(db, code_id) == (1, 0)


def test_validate_says_nothing_about_other_peoples_uses(db, stripe_api):
    # Given a code used up by others
    item = product(db)
    discount(db, "GONE", max_uses=1)
    assert checkout(user(db), [(item, 1)], code="GONE").status == 201
    # When someone validates it
    answer = api_call(
        "POST", "/discounts/validate", body={"code": "GONE", "items": [{"price_id": str(item.price_id)}]},
        as_user=user(db),
    )  # fmt: skip
    # Then only the verdict and the reason come back: no counts, limits or other buyers
    assert answer.status == 200 and set(answer.json) == {"valid", "discount_amount", "reason"}
    assert answer.json["valid"] is False and answer.json["reason"] == "max_uses_reached"
    body = json.dumps(answer.json)
    assert "current_uses" not in body and "reserved" not in body


# --- Idempotency-Keys ----------------------------------------------------------------------------------------------
def test_another_users_same_key_and_cart_is_their_own_order(db, stripe_api):
    item = product(db, stock=5)
    a, b = user(db), user(db)
    first = checkout(a, [(item, 1)], key="shared-key")
    second = checkout(b, [(item, 1)], key="shared-key")
    assert first.status == second.status == 201
    assert first.json["order_id"] != second.json["order_id"] and stock(db, item) == 3
    assert order_row(db, second.json["order_id"])["user_id"] == b


@pytest.fixture
def stripe_in_flight(monkeypatch: pytest.MonkeyPatch) -> dict[str, threading.Event]:
    """The first order-checkout call Stripe receives is held until `release`; calls with its idempotency key
    arriving meanwhile get Stripe's 409 for a key whose first request is still in progress."""
    signals = {"arrived": threading.Event(), "release": threading.Event()}
    held: list[str] = []

    def route(standin: StripeStandIn, rec: Recorded, path: str) -> tuple[int, Any, str] | None:
        if rec.method != "POST" or path != "/v1/checkout/sessions" or "metadata[tollgate_order_id]" not in rec.form:
            return None
        if not held:
            held.append(rec.headers.get("idempotency-key", ""))
            signals["arrived"].set()
            signals["release"].wait(20)
            return None  # on to the stand-in's own session
        if rec.headers.get("idempotency-key", "") == held[0] and not signals["release"].is_set():
            message = "There is currently another in-progress request using this Stripe API Idempotency Key."
            body = {"error": {"type": "invalid_request_error", "code": "idempotency_key_in_use", "message": message}}
            return 409, body, "application/json"
        return None

    monkeypatch.setattr(StripeStandIn, "extra_routes", [route, *StripeStandIn.extra_routes])
    return signals


def test_a_retry_racing_the_first_request_never_hands_out_a_session_of_a_released_order(
    db, stripe_api, stripe_in_flight
):
    # Given a keyed checkout whose Stripe call is still in flight (a slow network), holding the last unit
    item = product(db, stock=1)
    buyer_id = user(db)
    first: dict[str, ApiResponse] = {}
    thread = threading.Thread(target=lambda: first.update(a=checkout(buyer_id, [(item, 1)], key="dbl")))
    thread.start()
    assert stripe_in_flight["arrived"].wait(20)
    # When the client retries with the same key meanwhile and Stripe answers 409 (the key is in use)
    retry = checkout(buyer_id, [(item, 1)], key="dbl")
    stripe_in_flight["release"].set()
    thread.join(30)
    answer = first["a"]
    # Then the retry failed without touching the order, and the first request hands out its session: the order
    # still holds its unit (a retry's failure never releases what the first request is still opening)
    assert retry.status == 503 and retry.error_code == "payment_provider_error"
    assert answer.status == 201, answer.json
    (row,) = [order_row(db, r["id"]) for r in _orders(db)]
    assert row["status"] == "PENDING" and stock(db, item) == 0
    assert row["provider_checkout_id"] in stripe_api.sessions and row["checkout_url"] == answer.json["url"]
    # And a later retry with the key answers the same order
    again = checkout(buyer_id, [(item, 1)], key="dbl")
    assert again.status == 201 and again.json == answer.json


def test_an_order_released_while_stripe_opens_its_page_never_hands_the_page_out(db, stripe_api, stripe_in_flight):
    # Given a checkout whose Stripe call is in flight, holding the last unit
    item = product(db, stock=1)
    buyer_id = user(db)
    first: dict[str, ApiResponse] = {}
    thread = threading.Thread(target=lambda: first.update(a=checkout(buyer_id, [(item, 1)])))
    thread.start()
    assert stripe_in_flight["arrived"].wait(20)
    # When the order is released meanwhile (the sweep, on an order it found past its expiry) and another buyer
    # takes the unit, and only then Stripe answers
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET checkout_expires_at = now() - interval '2 hours'"))
        uow.commit()
    with UnitOfWork() as uow:
        assert orders.release_stale(uow.session, utcnow(), timedelta(minutes=15), 10) == 1
        uow.commit()
    assert checkout(user(db), [(item, 1)]).status == 201
    stripe_in_flight["release"].set()
    thread.join(30)
    # Then the first buyer gets 409, not a page to pay for a unit that is gone; the session is recorded
    answer = first["a"]
    assert answer.status == 409 and answer.error_code == "idempotency_conflict", answer.json
    released = order_row(db, _orders(db)[0]["id"])
    assert released["status"] == "CANCELLED" and released["checkout_url"] is None
    assert released["provider_checkout_id"] in stripe_api.sessions and stock(db, item) == 0
    # And should that session be paid anyway, the payment is flagged for a refund and nothing is sold twice
    late = deliver(session_event(stripe_api, db, str(released["id"])))
    assert late.json["status"] == "rejected"
    flagged = order_row(db, released["id"])
    assert (flagged["status"], flagged["payment_status"]) == ("CANCELLED", "SUCCEEDED") and stock(db, item) == 0


def _orders(db):
    with db() as uow:
        return list(uow.session.execute(text("SELECT id FROM orders ORDER BY created_at")).mappings())


# --- orders of other people, and roles -----------------------------------------------------------------------------
def test_orders_of_others_are_not_found_and_the_admin_list_is_not_for_users(db, stripe_api):
    item = product(db)
    owner = user(db)
    order_id = checkout(owner, [(item, 1)]).json["order_id"]
    stranger = user(db)
    assert api_call("GET", f"/orders/{order_id}", as_user=stranger).status == 404
    assert api_call("GET", f"/orders/{uuid.uuid4()}", as_user=owner).status == 404
    assert api_call("GET", "/orders/not-a-uuid", as_user=owner).status in (400, 422)
    assert api_call("GET", "/orders", as_user=stranger).json["items"] == []
    assert api_call("GET", "/admin/orders", as_user=stranger, query=f"user_id={owner}").status == 403
    assert api_call("GET", "/admin/discounts", as_user=user(db, "SUPPORT"), role="SUPPORT").status == 403


# --- pack orders ---------------------------------------------------------------------------------------------------
def test_a_pack_session_delivered_as_two_events_at_once_grants_once_with_one_order(db, stripe_api, catalogue, buyer):
    from tests.integration.test_payments_pack_orders import completed, current_session

    # Given one paid pack session, sent by Stripe as two distinct events (a retry with a new id) on two threads
    obj = current_session(buyer, catalogue.pack_id)
    events = [completed(dict(obj)), completed(dict(obj))]
    answers = _race(2, lambda i: send_stripe(events[i]))
    for event, answer in zip(events, answers, strict=True):
        if not (isinstance(answer, ApiResponse) and answer.status == 200):
            deliver(event)
    # Then one purchase, one order with one pack item, and the credits granted once
    assert count(db, "purchases") == 1 and count(db, "orders") == 1 and count(db, "order_items") == 1
    assert balance(db, buyer) == catalogue.pack_credits
    (order,) = [order_row(db, r["id"]) for r in _orders(db)]
    assert order["status"] == "COMPLETED" and order["purchase_id"] is not None


def test_a_pending_pack_order_completes_once_when_paid_later(db, stripe_api, catalogue, buyer):
    from tests.integration.test_payments_pack_orders import completed, current_session

    # Given a pack session first reported unpaid, then paid (twice)
    obj = current_session(buyer, catalogue.pack_id)
    deliver(completed({**obj, "payment_status": "unpaid"}))
    assert order_row(db, _orders(db)[0]["id"])["status"] == "PENDING" and balance(db, buyer) == 0
    paid = stripe_event("checkout.session.async_payment_succeeded", obj)
    deliver(paid)
    deliver(stripe_event("checkout.session.async_payment_succeeded", obj))
    # Then one order, completed, its item fulfilled, and the credits granted once
    assert count(db, "orders") == 1 and balance(db, buyer) == catalogue.pack_credits
    (item,) = items_of(db, _orders(db)[0]["id"])
    assert item["fulfilled_at"] is not None


# --- credentials and accounts --------------------------------------------------------------------------------------
def test_an_api_key_reads_orders_but_cannot_check_out_or_validate(db, stripe_api):
    from tests.gateway_support import api_key_for

    item = product(db)
    buyer_id = user(db)
    key = {"x-api-key": api_key_for(buyer_id, scopes=("orders:read",))}
    body = {"items": [{"price_id": str(item.price_id), "quantity": 1}], **URLS}
    paid = api_call("POST", "/orders/checkout", body=body, headers=key, through_authorizer=True)
    assert paid.status == 403, paid.json
    check = api_call(
        "POST", "/discounts/validate", body={"code": "X", "items": body["items"]}, headers=key, through_authorizer=True
    )
    assert check.status == 403 and count(db, "orders") == 0
    assert api_call("GET", "/orders", headers=key, through_authorizer=True).status == 200


@pytest.mark.parametrize("status", ["SUSPENDED", "DELETED"])
def test_a_suspended_or_deleted_buyer_with_a_still_valid_token_cannot_check_out(db, stripe_api, status):
    item = product(db, stock=1)
    buyer_id = user(db)
    with db() as uow:
        sql = "UPDATE users SET status = :s WHERE id = :id"
        if status == "DELETED":
            sql = "UPDATE users SET deleted_at = now() WHERE id = :id AND :s = :s"
        uow.session.execute(text(sql), {"s": status, "id": buyer_id})
        uow.commit()
    answer = checkout(buyer_id, [(item, 1)])
    assert answer.status in (401, 403), answer.json
    assert count(db, "orders") == 0 and stock(db, item) == 1


# --- amounts in the currency's unit --------------------------------------------------------------------------------
def test_a_price_finer_than_its_currencys_unit_is_refused_not_a_500(db, stripe_api):
    # Given a USD price of 10.005 (the column holds three places; USD pays in cents)
    item = product(db, amount="10.005", stock=5)
    answer = checkout(user(db), [(item, 3)])
    assert answer.status == 422 and answer.error_code == "invalid_cart", answer.json
    assert count(db, "orders") == 0 and stock(db, item) == 5


@pytest.mark.parametrize(("currency", "amount", "minor"), [("jpy", "1000", 1), ("kwd", "3.125", 1000)])
def test_zero_and_three_decimal_currencies_are_asked_and_checked_in_their_minor_unit(
    db, stripe_api, currency, amount, minor
):
    # Given a product in JPY (no decimals) or KWD (three), bought 3 times with a fixed discount that does not
    # divide by the quantity
    item = product(db, amount=amount, currency=currency, tax_rate="0.1", stock=3)
    code_id = discount(db, "ODD", type="FIXED_AMOUNT", value=Decimal("1") if minor == 1 else Decimal("0.001"),
                       currency=currency)  # fmt: skip
    answer = checkout(user(db), [(item, 3)], code="ODD")
    assert answer.status == 201, answer.json
    order = order_row(db, answer.json["order_id"])
    # Then Stripe is asked for the order's total in minor units, and the completion with it is accepted
    assert session_of(stripe_api, db, answer.json["order_id"])["amount_total"] == int(order["total_amount"] * minor)
    deliver(session_event(stripe_api, db, answer.json["order_id"]))
    assert order_row(db, answer.json["order_id"])["status"] == "COMPLETED" and uses(db, code_id) == (1, 0)


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,hi", "//evil.example.com", "ftp://x.example"])
def test_return_urls_are_web_addresses_only(db, stripe_api, url):
    # The return addresses follow billing's rule (any http/https address); script and data URLs are refused
    item = product(db)
    body = {"items": [{"price_id": str(item.price_id)}], "success_url": url, "cancel_url": URLS["cancel_url"]}
    answer = api_call("POST", "/orders/checkout", body=body, as_user=user(db))
    assert answer.status == 422 and count(db, "orders") == 0 and not stripe_api.sessions


def test_a_crash_after_the_grant_but_before_the_pack_order_is_written_grants_nothing_then_once(
    db, stripe_api, catalogue, buyer
):
    from tests.integration.test_payments_pack_orders import completed, current_session

    # Given the database refusing the pack's order row (a crash at the last statement of the delivery)
    with db() as uow:
        uow.session.execute(
            text(
                "CREATE FUNCTION attack_refuse_order() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
            )
        )
        uow.session.execute(
            text(
                "CREATE TRIGGER attack_refuse_order BEFORE INSERT ON orders"
                " FOR EACH ROW EXECUTE FUNCTION attack_refuse_order()"
            )
        )
        uow.commit()
    event = completed(current_session(buyer, catalogue.pack_id))
    try:
        # When the paid pack session is delivered
        failed = send_stripe(event)
        # Then it fails as a whole (Stripe will retry): no credits, no purchase, no order
        assert failed.status >= 500
        assert balance(db, buyer) == 0 and count(db, "purchases") == 0 and count(db, "credit_grants") == 0
    finally:
        with db() as uow:
            uow.session.execute(text("DROP TRIGGER attack_refuse_order ON orders"))
            uow.session.execute(text("DROP FUNCTION attack_refuse_order()"))
            uow.commit()
    # And Stripe's retry of the same event grants once, with its one order
    deliver(event)
    deliver(event)
    assert balance(db, buyer) == catalogue.pack_credits and count(db, "orders") == 1 and count(db, "purchases") == 1


@pytest.mark.parametrize(
    ("event_type", "payment"),
    [("checkout.session.async_payment_failed", "FAILED"), ("checkout.session.expired", "CANCELLED")],
)
def test_a_pending_pack_order_that_will_never_be_paid_is_not_left_pending(
    db, stripe_api, catalogue, buyer, event_type, payment
):
    from tests.integration.test_payments_pack_orders import completed, current_session

    # Given a pack session reported unpaid (a delayed method): a pending purchase and its PENDING order
    obj = current_session(buyer, catalogue.pack_id)
    deliver(completed({**obj, "payment_status": "unpaid"}))
    # When its payment fails (or the session expires)
    deliver(stripe_event(event_type, {**obj, "payment_status": "unpaid"}))
    # Then the order is CANCELLED with the purchase, nothing was granted, and a late success grants nothing
    (order,) = [order_row(db, r["id"]) for r in _orders(db)]
    assert (order["status"], order["payment_status"]) == ("CANCELLED", payment)
    late = deliver(stripe_event("checkout.session.async_payment_succeeded", obj))
    assert late.json["status"] in ("processed", "ignored", "rejected")
    assert balance(db, buyer) == 0 and order_row(db, order["id"])["status"] == "CANCELLED"
