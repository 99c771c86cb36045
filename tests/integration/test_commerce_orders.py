"""Cart checkout and the order flow against the Stripe stand-in: totals (tax, discount, quantity, rounding),
stock and discount reservations (with races on real threads), the completing webhook (signed, deduplicated,
out of order, amounts checked), abandoned checkouts, the sweep, order reads, and pack/plan orders."""

# ruff: noqa: F403, F405
from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from decimal import Decimal

import pytest

from tests.commerce_orders_support import *
from tests.payments_support import *
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import TollgateError
from tollgate.services import orders


# --- totals --------------------------------------------------------------------------------------------------------
def test_totals_carry_quantity_discount_and_tax_per_item_and_stripe_is_asked_for_the_total(db, stripe_api):
    # Given a taxed product at 10.00 (8.25 %), an untaxed one at 3.33, and a 15 % code for everything
    taxed = product(db, name="Taxed", amount="10.00", tax_rate="0.0825")
    plain = product(db, name="Plain", amount="3.33")
    discount(db, "SAVE15", value=15)
    buyer_id = user(db)
    # When the buyer checks out 3 taxed and 1 plain with the code
    answer = checkout(buyer_id, [(taxed, 3), (plain, 1)], code="save15")
    # Then 201 with the order and Stripe's URL
    assert answer.status == 201, answer.json
    order_id = answer.json["order_id"]
    assert answer.json["url"].startswith(stripe_api.base_url)
    # And per item: 30.00 - 4.50 = 25.50, tax 8.25 % of 25.50 = 2.10 (2.10375 rounded); 3.33 - 0.50 (0.4995) = 2.83
    rows = {r["name"]: r for r in items_of(db, order_id)}
    assert (rows["Taxed"]["total_price"], rows["Taxed"]["discount_amount"], rows["Taxed"]["tax_amount"]) == (
        Decimal("30.000"), Decimal("4.500"), Decimal("2.100"),
    )  # fmt: skip
    assert (rows["Plain"]["total_price"], rows["Plain"]["discount_amount"], rows["Plain"]["tax_amount"]) == (
        Decimal("3.330"), Decimal("0.500"), Decimal("0.000"),
    )  # fmt: skip
    order = order_row(db, order_id)
    assert order["subtotal"] == Decimal("33.33") and order["discount_amount"] == Decimal("5.00")
    assert order["tax_amount"] == Decimal("2.10") and order["total_amount"] == Decimal("30.43")
    assert (order["status"], order["payment_status"]) == ("PENDING", "PENDING")
    assert order["order_number"].startswith("TG-")
    # And Stripe's session adds up to the order's total, in payment mode, expiring in 30 minutes
    session = session_of(stripe_api, db, order_id)
    assert session["amount_total"] == 3043 and session["mode"] == "payment"
    assert session["metadata"]["tollgate_order_id"] == order_id
    assert 30 * 60 <= session["expires_at"] - int(utcnow().timestamp()) <= 32 * 60


def test_a_fixed_discount_applies_only_to_its_products_and_never_below_zero(db, stripe_api):
    # Given a 50.00 fixed code restricted to a 20.00 product, and another product beside it
    cheap = product(db, name="Cheap", amount="20.00")
    other = product(db, name="Other", amount="7.00", tax_rate="0.1")
    discount(db, "BIG50", type="FIXED_AMOUNT", value=50, currency="usd", product_ids=(cheap.product_id,))
    # When a buyer checks out both with it
    answer = checkout(user(db), [(cheap, 1), (other, 1)], code="BIG50")
    assert answer.status == 201, answer.json
    # Then the restricted product is free (not negative), the other is untouched and taxed in full
    rows = {r["name"]: r for r in items_of(db, answer.json["order_id"])}
    assert rows["Cheap"]["discount_amount"] == Decimal("20.000") and rows["Cheap"]["tax_amount"] == 0
    assert rows["Other"]["discount_amount"] == 0 and rows["Other"]["tax_amount"] == Decimal("0.700")
    assert order_row(db, answer.json["order_id"])["total_amount"] == Decimal("7.70")


def test_a_fixed_discount_shared_across_lines_adds_up_exactly(db, stripe_api):
    # Given three lines of 1.00 and a 1.00 fixed code (a third each cannot be paid in cents)
    lines = [(product(db, name=f"P{i}", amount="1.00"), 1) for i in range(3)]
    discount(db, "ONE", type="FIXED_AMOUNT", value=1, currency="usd")
    answer = checkout(user(db), lines, code="ONE")
    # Then the shares are whole cents that add up to 1.00, and the total is 2.00
    shares = sorted(r["discount_amount"] for r in items_of(db, answer.json["order_id"]))
    assert shares == [Decimal("0.330"), Decimal("0.330"), Decimal("0.340")]
    assert order_row(db, answer.json["order_id"])["total_amount"] == Decimal("2.00")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (
            lambda db: [(product(db, amount="5.00"), 1), (product(db, amount="5.00", currency="eur"), 1)],
            "mixed_currencies",
        ),
        (lambda db: [(product(db), 1), (product(db, type="SUBSCRIPTION", interval="month"), 1)], "mixed_modes"),
        (lambda db: [(product(db, status="DRAFT"), 1)], "unpublished_product"),
    ],
)
def test_a_cart_that_is_not_one_checkout_is_refused_and_nothing_is_written(db, stripe_api, make, reason):
    # Given a cart that mixes what one Stripe Checkout cannot, or holds a product not for sale
    lines = make(db)
    # When it is checked out
    answer = checkout(user(db), lines)
    # Then 422 invalid_cart with the reason, no order, no Stripe call
    assert answer.status == 422 and answer.error_code == "invalid_cart"
    assert answer.json["error"]["details"]["reason"] == reason
    assert count(db, "orders") == 0 and not stripe_api.sessions


def test_a_quantity_out_of_bounds_is_a_422(db, stripe_api):
    answer = checkout(user(db), [(product(db), 101)])
    assert answer.status == 422 and count(db, "orders") == 0


# --- stock and discount reservations -------------------------------------------------------------------------------
def test_out_of_stock_is_409_naming_the_item_and_takes_nothing(db, stripe_api):
    # Given 2 units left and a discount
    scarce = product(db, name="Scarce", stock=2)
    code_id = discount(db, "TEN", max_uses=5)
    # When 3 are asked for
    answer = checkout(user(db), [(scarce, 3)], code="TEN")
    # Then 409 out_of_stock naming the item; stock and uses untouched, no order
    assert answer.status == 409 and answer.error_code == "out_of_stock"
    assert answer.json["error"]["details"]["price_id"] == str(scarce.price_id)
    assert answer.json["error"]["details"]["available"] == 2
    assert stock(db, scarce) == 2 and uses(db, code_id) == (0, 0) and count(db, "orders") == 0


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"active": False}, "inactive"),
        ({"valid_until": utcnow() - timedelta(days=1)}, "expired"),
        ({"minimum_amount": Decimal("100")}, "minimum_amount"),
        ({"type": "FIXED_AMOUNT", "value": 5, "currency": "eur"}, "currency_mismatch"),
    ],
)
def test_a_discount_that_does_not_apply_is_422_with_the_reason(db, stripe_api, fields, reason):
    item = product(db)
    discount(db, "NOPE", **fields)
    answer = checkout(user(db), [(item, 1)], code="NOPE")
    assert answer.status == 422 and answer.error_code == "discount_invalid"
    assert answer.json["error"]["details"]["reason"] == reason
    assert count(db, "orders") == 0


def test_first_time_only_refuses_a_buyer_with_a_paid_order(db, stripe_api):
    # Given a buyer whose first order was paid
    item = product(db)
    buyer_id = user(db)
    first = checkout(buyer_id, [(item, 1)])
    deliver(session_event(stripe_api, db, first.json["order_id"]))
    discount(db, "WELCOME", first_time_only=True)
    # When they try the first-order code
    answer = checkout(buyer_id, [(item, 1)], code="WELCOME")
    # Then it is refused; a new buyer may use it
    assert answer.json["error"]["details"]["reason"] == "first_time_only"
    assert checkout(user(db), [(item, 1)], code="WELCOME").status == 201


def _race(n: int, fn) -> list[object]:
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


def _service_checkout(buyer_id: uuid.UUID, item: Item, code: str | None = None) -> uuid.UUID:
    result = orders.checkout(UnitOfWork(), buyer_id, items=[(item.price_id, 1)], discount_code=code, **URLS)
    return result.order_id


def test_racing_checkouts_never_oversell_the_last_units(db, stripe_api):
    # Given 10 units left and 16 buyers racing for one each, on real threads
    item = product(db, stock=10)
    buyers = [user(db) for _ in range(16)]
    results = _race(16, lambda i: _service_checkout(buyers[i], item))
    # Then exactly 10 orders hold stock, 6 were told out_of_stock, and stock is 0, never below
    assert sum(isinstance(r, uuid.UUID) for r in results) == 10
    assert results.count("out_of_stock") == 6
    assert stock(db, item) == 0
    assert count(db, "order_items", "stock_reserved = 1") == 10


def test_racing_checkouts_never_overshoot_a_discounts_uses(db, stripe_api):
    # Given a code with 10 uses left and 16 buyers racing with it
    item = product(db)
    code_id = discount(db, "LAST10", max_uses=10)
    buyers = [user(db) for _ in range(16)]
    results = _race(16, lambda i: _service_checkout(buyers[i], item, "LAST10"))
    # Then 10 reserved a use, 6 were refused, and the counts never pass the limit
    assert sum(isinstance(r, uuid.UUID) for r in results) == 10
    assert results.count("discount_invalid") == 6
    assert uses(db, code_id) == (0, 10)


def test_one_customer_racing_with_a_once_per_customer_code_gets_it_once(db, stripe_api):
    item = product(db)
    code_id = discount(db, "ONCE", max_uses_per_customer=1)
    buyer_id = user(db)
    results = _race(6, lambda i: _service_checkout(buyer_id, item, "ONCE"))
    assert sum(isinstance(r, uuid.UUID) for r in results) == 1
    assert uses(db, code_id) == (0, 1)
    assert count(db, "discount_usages", "status = 'reserved'") == 1


# --- the completing webhook ----------------------------------------------------------------------------------------
def test_the_webhook_completes_the_order_once_and_fulfils_each_item_by_type(db, stripe_api):
    # Given a download (3 downloads, 30 days), a service and a code, checked out
    download = product(db, name="Ebook", type="DIGITAL_DOWNLOAD", download_limit=3, access_days=30, stock=5)
    service = product(db, name="Setup", type="SERVICE", amount="50.00")
    code_id = discount(db, "HALF", value=50)
    answer = checkout(user(db), [(download, 1), (service, 1)], code="HALF")
    order_id = answer.json["order_id"]
    # When Stripe reports the session paid, and delivers the same event again
    event = session_event(stripe_api, db, order_id)
    first = deliver(event)
    again = deliver(event)
    # Then the order is COMPLETED and paid, once; the use is counted; the stock stays sold
    assert first.json["status"] == "processed" and again.json["duplicate"] is True
    order = order_row(db, order_id)
    assert (order["status"], order["payment_status"]) == ("COMPLETED", "SUCCEEDED")
    assert order["paid_at"] is not None and order["provider_payment_intent_id"]
    assert uses(db, code_id) == (1, 0) and stock(db, download) == 4
    assert count(db, "discount_usages", "status = 'used'") == 1
    # And the download has its limit and access period; the service is recorded
    rows = {r["name"]: r for r in items_of(db, order_id)}
    assert rows["Ebook"]["download_limit"] == 3
    assert timedelta(days=29) < rows["Ebook"]["access_expires_at"] - utcnow() <= timedelta(days=30)
    assert rows["Setup"]["fulfilled_at"] is not None and rows["Setup"]["access_expires_at"] is None
    # And a second event for the same session (async_payment_succeeded) changes nothing
    late = deliver(session_event(stripe_api, db, order_id, "checkout.session.async_payment_succeeded"))
    assert late.json["status"] == "processed" and uses(db, code_id) == (1, 0)


def test_a_subscription_cart_links_the_subscription_it_started(db, stripe_api):
    plan_product = product(db, name="Club", type="SUBSCRIPTION", amount="9.00", interval="month")
    answer = checkout(user(db), [(plan_product, 1)])
    assert answer.status == 201, answer.json
    assert session_of(stripe_api, db, answer.json["order_id"])["mode"] == "subscription"
    deliver(session_event(stripe_api, db, answer.json["order_id"]))
    order = order_row(db, answer.json["order_id"])
    assert order["status"] == "COMPLETED" and order["subscription_id"] is not None


def test_amounts_that_do_not_match_the_order_are_rejected_and_nothing_moves(db, stripe_api):
    item = product(db, stock=3)
    code_id = discount(db, "TEN")
    order_id = checkout(user(db), [(item, 1)], code="TEN").json["order_id"]
    for changes in ({"amount_total": 1}, {"amount_subtotal": 1}, {"currency": "eur"}):
        # When Stripe reports another amount or currency than the order's
        answer = deliver(session_event(stripe_api, db, order_id, **changes))
        # Then the event is rejected; the order stays PENDING with its reservations
        assert answer.json["status"] == "rejected"
    assert order_row(db, order_id)["status"] == "PENDING" and uses(db, code_id) == (0, 1) and stock(db, item) == 2


def test_a_session_that_is_not_the_orders_is_rejected(db, stripe_api):
    item = product(db)
    order_id = checkout(user(db), [(item, 1)]).json["order_id"]
    answer = deliver(session_event(stripe_api, db, order_id, id=f"cs_test_{uuid.uuid4().hex}"))
    assert answer.json["status"] == "rejected" and order_row(db, order_id)["status"] == "PENDING"


def test_an_abandoned_checkout_frees_the_stock_and_the_use(db, stripe_api):
    # Given an order holding 2 units and a use
    item = product(db, stock=5)
    code_id = discount(db, "TEN", max_uses=1)
    order_id = checkout(user(db), [(item, 2)], code="TEN").json["order_id"]
    assert stock(db, item) == 3 and uses(db, code_id) == (0, 1)
    # When Stripe reports the session expired (twice)
    event = session_event(stripe_api, db, order_id, "checkout.session.expired", paid=False)
    deliver(event)
    deliver(event)
    # Then the order is CANCELLED, the stock and the use are back, once; another buyer may use the code
    order = order_row(db, order_id)
    assert (order["status"], order["payment_status"]) == ("CANCELLED", "CANCELLED")
    assert stock(db, item) == 5 and uses(db, code_id) == (0, 0)
    assert count(db, "discount_usages", "status = 'released'") == 1
    assert checkout(user(db), [(item, 1)], code="TEN").status == 201


def test_a_failed_delayed_payment_releases_and_marks_the_payment_failed(db, stripe_api):
    item = product(db, stock=1)
    order_id = checkout(user(db), [(item, 1)]).json["order_id"]
    # Given Stripe said completed but unpaid (a delayed method): PROCESSING, stock still held
    deliver(session_event(stripe_api, db, order_id, paid=False))
    assert order_row(db, order_id)["status"] == "PROCESSING" and stock(db, item) == 0
    # When the payment fails
    deliver(session_event(stripe_api, db, order_id, "checkout.session.async_payment_failed", paid=False))
    order = order_row(db, order_id)
    assert (order["status"], order["payment_status"]) == ("CANCELLED", "FAILED") and stock(db, item) == 1


def test_an_expired_after_the_completion_does_not_release(db, stripe_api):
    item = product(db, stock=2)
    code_id = discount(db, "TEN")
    order_id = checkout(user(db), [(item, 1)], code="TEN").json["order_id"]
    deliver(session_event(stripe_api, db, order_id))
    answer = deliver(session_event(stripe_api, db, order_id, "checkout.session.expired", paid=False))
    assert answer.json["status"] == "ignored"
    assert order_row(db, order_id)["status"] == "COMPLETED" and stock(db, item) == 1 and uses(db, code_id) == (1, 0)


def test_a_completion_after_the_release_is_recorded_for_a_refund_and_takes_nothing_back(db, stripe_api):
    item = product(db, stock=1)
    order_id = checkout(user(db), [(item, 1)]).json["order_id"]
    deliver(session_event(stripe_api, db, order_id, "checkout.session.expired", paid=False))
    # When a completion arrives after the release (and someone else bought the unit)
    assert checkout(user(db), [(item, 1)]).status == 201
    answer = deliver(session_event(stripe_api, db, order_id))
    # Then it is rejected for an operator: the order stays CANCELLED with the payment recorded; no oversell
    assert answer.json["status"] == "rejected"
    order = order_row(db, order_id)
    assert (order["status"], order["payment_status"]) == ("CANCELLED", "SUCCEEDED") and stock(db, item) == 0


# --- Stripe failures, the sweep, idempotency -----------------------------------------------------------------------
def test_a_stripe_failure_releases_the_reservations_and_cancels_the_order(db, stripe_api):
    item = product(db, stock=1)
    code_id = discount(db, "TEN", max_uses=1)
    stripe_api.order_checkout_failures = 2  # the adapter retries once
    answer = checkout(user(db), [(item, 1)], code="TEN")
    assert answer.status == 503 and answer.error_code == "payment_provider_error"
    (order,) = [order_row(db, r["id"]) for r in _all_orders(db)]
    assert order["status"] == "CANCELLED" and stock(db, item) == 1 and uses(db, code_id) == (0, 0)


def _all_orders(db):
    with db() as uow:
        return list(uow.session.execute(text("SELECT id FROM orders")).mappings())


def test_the_sweep_releases_pending_orders_past_their_expiry(db, stripe_api):
    # Given an order whose session was never created (stock and use held) and expired an hour ago
    item = product(db, stock=3)
    code_id = discount(db, "TEN")
    order_id = checkout(user(db), [(item, 1)], code="TEN").json["order_id"]
    fresh_id = checkout(user(db), [(item, 1)]).json["order_id"]
    with db() as uow:
        uow.session.execute(
            text("UPDATE orders SET checkout_expires_at = now() - interval '1 hour' WHERE id = :id"), {"id": order_id}
        )
        uow.commit()
    # When the OrderReservationExpiry schedule fires (the template's function and handler)
    from tests.integration.test_jobs_ledger import invoke_schedule

    report = invoke_schedule("OrderReservationExpiry", utcnow())
    # Then only the stale order is released; the fresh one keeps its unit
    assert report["stats"].get("orders_released") == 1
    assert order_row(db, order_id)["status"] == "CANCELLED" and order_row(db, fresh_id)["status"] == "PENDING"
    assert stock(db, item) == 2 and uses(db, code_id) == (0, 0)


def test_the_same_idempotency_key_answers_the_same_order_and_another_cart_conflicts(db, stripe_api):
    item = product(db, stock=5)
    buyer_id = user(db)
    first = checkout(buyer_id, [(item, 1)], key="k-1")
    again = checkout(buyer_id, [(item, 1)], key="k-1")
    assert first.status == again.status == 201 and first.json == again.json
    assert stock(db, item) == 4 and len(stripe_api.sessions) == 1
    other = checkout(buyer_id, [(item, 2)], key="k-1")
    assert other.status == 409 and other.error_code == "idempotency_conflict"


def test_a_retry_after_a_crash_before_the_session_was_recorded_gets_stripes_first_session(db, stripe_api):
    # Given a checkout whose Stripe session was made but never recorded (the process died between the two)
    item = product(db, name="Mug", stock=5)
    taxed = product(db, name="Tee", amount="7.00", tax_rate="0.0825")
    buyer_id = user(db)
    first = checkout(buyer_id, [(item, 3), (taxed, 1)], key="crash-1")
    with db() as uow:
        uow.session.execute(
            text("UPDATE orders SET provider_checkout_id = NULL, checkout_url = NULL WHERE id = :id"),
            {"id": first.json["order_id"]},
        )
        uow.commit()
    # When the client retries with the same key
    again = checkout(buyer_id, [(item, 3), (taxed, 1)], key="crash-1")
    # Then Stripe is asked with the very same parameters and answers its first session; nothing is taken twice
    assert again.status == 201, again.json
    assert again.json == first.json and len(stripe_api.sessions) == 1
    assert order_row(db, first.json["order_id"])["provider_checkout_id"] in stripe_api.sessions
    assert stock(db, item) == 2 and count(db, "orders") == 1


# --- reads ---------------------------------------------------------------------------------------------------------
def test_orders_are_listed_for_their_owner_and_hidden_from_others(db, stripe_api):
    item = product(db, tax_rate="0.2")
    owner = user(db)
    order_id = checkout(owner, [(item, 2)]).json["order_id"]
    listed = api_call("GET", "/orders", as_user=owner)
    assert listed.status == 200 and [o["id"] for o in listed.json["items"]] == [order_id]
    one = api_call("GET", f"/orders/{order_id}", as_user=owner).json
    assert (one["subtotal"], one["tax_amount"], one["total"], one["refunded_amount"]) == (
        "20.00",
        "4.00",
        "24.00",
        "0.00",
    )
    assert one["items"][0]["quantity"] == 2 and one["status"] == "PENDING" and one["order_number"].startswith("TG-")
    # Another user's order answers 404
    stranger = api_call("GET", f"/orders/{order_id}", as_user=user(db))
    assert stranger.status == 404 and stranger.error_code == "order_not_found"


def test_admin_orders_are_for_admins_and_support_with_filters(db, stripe_api):
    item = product(db)
    buyer_a, buyer_b = user(db), user(db)
    a = checkout(buyer_a, [(item, 1)]).json["order_id"]
    checkout(buyer_b, [(item, 1)])
    assert api_call("GET", "/admin/orders", as_user=user(db)).status == 403
    for role in ("ADMIN", "SUPPORT"):
        staff = user(db, role)
        answer = api_call("GET", "/admin/orders", as_user=staff, role=role, query=f"user_id={buyer_a}&status=PENDING")
        assert answer.status == 200 and [o["id"] for o in answer.json["items"]] == [a]
    admin = user(db, "ADMIN")
    paged = api_call("GET", "/admin/orders", as_user=admin, role="ADMIN", query="limit=1")
    assert len(paged.json["items"]) == 1 and paged.json["next_cursor"]


# --- packs and plans are orders too --------------------------------------------------------------------------------
def test_a_pack_purchase_is_a_one_item_order_granted_once(db, stripe_api, catalogue, buyer):
    # Given a paid pack checkout session, delivered twice
    from tests.integration.test_payments_pack_orders import completed, current_session

    event = completed(current_session(buyer, catalogue.pack_id))
    deliver(event)
    deliver(event)
    # Then one COMPLETED order with one pack item names the purchase, and the credits were granted once
    (order,) = [order_row(db, r["id"]) for r in _all_orders(db)]
    assert (order["status"], order["payment_status"], order["total_amount"]) == (
        "COMPLETED",
        "SUCCEEDED",
        Decimal("5.00"),
    )
    assert order["purchase_id"] is not None
    (item,) = items_of(db, order["id"])
    assert (item["kind"], item["pack_id"], item["fulfilled_at"] is not None) == ("pack", catalogue.pack_id, True)
    assert balance(db, buyer) == catalogue.pack_credits


def test_a_plans_first_payment_is_a_one_item_order_with_its_subscription(db, stripe_api, catalogue, buyer):
    obj = {
        "id": f"cs_test_{uuid.uuid4().hex}", "object": "checkout.session", "mode": "subscription",
        "client_reference_id": str(buyer), "customer": f"cus_{uuid.uuid4().hex[:14]}",
        "subscription": f"sub_{uuid.uuid4().hex[:14]}", "amount_total": 1900, "amount_subtotal": 1900,
        "currency": "usd", "payment_status": "paid", "status": "complete",
        "metadata": {"user_id": str(buyer), "kind": "plan", "item_id": str(catalogue.pro_id)},
    }  # fmt: skip
    deliver(stripe_event("checkout.session.completed", obj))
    (order,) = [order_row(db, r["id"]) for r in _all_orders(db)]
    assert order["status"] == "COMPLETED" and order["subscription_id"] is not None
    (item,) = items_of(db, order["id"])
    assert (item["kind"], item["plan_id"], item["total_price"]) == ("plan", catalogue.pro_id, Decimal("19.000"))
