"""Attacks on order refunds and digital downloads: forged cross-order refund events, a second Stripe refund naming
our row, a refund stuck PENDING beside a dashboard refund, odd amounts and currencies, one Idempotency-Key for two
orders, a pack order settled in the other order, and download links (boundaries, lifetime, unsafe URLs)."""

# ruff: noqa: F401, F811
from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.commerce_refunds_standin import (
    book,
    charge_refunded_2020,
    charge_refunded_current,
    completed_order,
    current_event,
    download_product,
    refund_object,
)
from tests.integration.test_payments_stripe import pack_checkout
from tests.payments_support import (
    STRIPE_SECRET,
    Catalogue,
    balance,
    buyer,
    catalogue,
    count,
    ledger_is_consistent,
    payments_env,
    send_stripe,
    stripe_api,
)
from tests.provider_standins import StripeStandIn
from tests.support import api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import AccessExpired, NotDownloadable, TollgateError
from tollgate.models.storage import FileStatus, StorageObject
from tollgate.payments import adapters
from tollgate.services import downloads, order_refunds, webhooks
from tollgate.services.authz import Actor
from tollgate.storage import get_storage
from tollgate_local.webhooks_cli import stripe_signature

Db = Any


@pytest.fixture
def admin(db: Db) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        return user.id


def _refund(order_id: uuid.UUID, admin: uuid.UUID, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"idempotency-key": key} if key else None
    return api_call(
        "POST", f"/admin/orders/{order_id}/refunds", body=body, as_user=admin, role="ADMIN", headers=headers
    )


def _order(db: Db, order_id: uuid.UUID) -> dict[str, Any]:
    with db() as uow:
        return dict(uow.session.execute(text("SELECT * FROM orders WHERE id = :i"), {"i": order_id}).mappings().one())


def _refunds(db: Db, order_id: uuid.UUID) -> list[dict[str, Any]]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT * FROM refunds WHERE order_id = :i ORDER BY created_at, id"), {"i": order_id}
        ).mappings()
        return [dict(r) for r in rows]


def _posts(stripe: StripeStandIn) -> list[Any]:
    return [r for r in stripe.requests if r.method == "POST" and r.path == "/v1/refunds"]


def _money(row: dict[str, Any]) -> tuple[Decimal, Decimal]:
    return row["refunded_amount"], row["refund_pending_amount"]


def _made_in_stripe(
    payment_intent: str, amount_minor: int, metadata: dict[str, str] | None = None, key: str | None = None
) -> dict[str, Any]:
    """A refund created at Stripe outside the admin route (the dashboard, or a stale retry): the stand-in's
    account holds it, so listing the charge's refunds shows it."""
    answer = adapters.stripe_gateway().create_refund(
        adapters.RefundRequest(
            payment_intent_id=payment_intent, charge_id=None, amount_minor=amount_minor, reason=None,
            metadata=metadata or {}, idempotency_key=key or f"dashboard-{uuid.uuid4().hex}",
        )
    )  # fmt: skip
    assert answer.raw is not None, answer
    return answer.raw


def _age(db: Db, refund_id: str, minutes: int) -> None:
    with db() as uow:
        uow.session.execute(
            text("UPDATE refunds SET created_at = created_at - make_interval(mins => :m) WHERE id = :i"),
            {"m": minutes, "i": refund_id},
        )
        uow.commit()


# --- forged and confused refund events ---------------------------------------------------------------------------
@pytest.mark.parametrize("recorded", [True, False], ids=["our-row-has-its-stripe-id", "our-row-awaits-its-id"])
def test_a_refund_of_another_orders_charge_naming_our_refund_settles_nothing_here(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID, recorded: bool
) -> None:
    # Given order A with an 8.00 refund of ours in flight, and another customer's order B
    victim = completed_order(db, buyer, stripe=stripe_api)
    with db() as uow:
        other_buyer = make_user(uow.session).id
        uow.commit()
    other = completed_order(db, other_buyer, stripe=stripe_api)
    if not recorded:
        stripe_api.failures.extend([500, 500])  # Stripe never answers: A's row has no Stripe id yet
    ours = _refund(victim.order_id, admin, {"amount": "8", "reason": "other"})
    ours_id = ours.json["id"] if recorded else str(_refunds(db, victim.order_id)[0]["id"])
    # When a refund of B's charge arrives whose metadata names A's refund (made in the dashboard by copying it)
    forged = _made_in_stripe(other.payment_intent, 800, {"tollgate_refund_id": ours_id})
    answer = send_stripe(current_event("refund.updated", {**forged, "status": "succeeded"}))
    # Then A's refund is untouched (still in flight, nothing refunded, its own Stripe id kept)
    assert answer.status == 200, answer.json
    (row,) = _refunds(db, victim.order_id)
    assert row["status"] == "PENDING" and row["provider_refund_id"] == (ours.json["provider_refund_id"] if recorded
                                                                        else None)  # fmt: skip
    assert _money(_order(db, victim.order_id)) == (Decimal("0"), Decimal("8.000"))
    # And B counts the refund its charge really had
    (b_row,) = _refunds(db, other.order_id)
    assert b_row["provider_refund_id"] == forged["id"] and b_row["status"] == "SUCCEEDED"
    assert _money(_order(db, other.order_id)) == (Decimal("8.000"), Decimal("0"))


def test_a_second_stripe_refund_carrying_our_refund_id_cannot_fail_ours_and_is_counted_itself(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 5.00 refund of ours, pending at Stripe with its id recorded
    order = completed_order(db, buyer, stripe=stripe_api)
    ours = _refund(order.order_id, admin, {"amount": "5", "reason": "other"}).json
    # When another Stripe refund of the same charge with the same metadata (a retry after Stripe forgot the key)
    # fails, and then a further one succeeds
    twin = _made_in_stripe(order.payment_intent, 500, {"tollgate_refund_id": ours["id"]})
    assert send_stripe(current_event("refund.failed", {**twin, "status": "failed"})).status == 200
    # Then ours is still in flight: the twin's failure released nothing (the twin is recorded FAILED on its own)
    row = next(r for r in _refunds(db, order.order_id) if str(r["id"]) == ours["id"])
    assert row["status"] == "PENDING" and row["provider_refund_id"] == ours["provider_refund_id"]
    assert _money(_order(db, order.order_id)) == (Decimal("0"), Decimal("5.000"))
    # When ours succeeds, and a third refund naming it succeeds too
    mine = book(stripe_api).refunds[ours["provider_refund_id"]]
    assert send_stripe(current_event("refund.updated", {**mine, "status": "succeeded"})).status == 200
    third = _made_in_stripe(order.payment_intent, 300, {"tollgate_refund_id": ours["id"]})
    assert send_stripe(current_event("refund.updated", {**third, "status": "succeeded"})).status == 200
    # Then both refunds Stripe made are counted once each: 8.00 refunded, none in flight
    assert _money(_order(db, order.order_id)) == (Decimal("8.000"), Decimal("0"))
    by_stripe = {r["provider_refund_id"]: r["status"] for r in _refunds(db, order.order_id)}
    assert by_stripe == {ours["provider_refund_id"]: "SUCCEEDED", twin["id"]: "FAILED", third["id"]: "SUCCEEDED"}


def test_a_refund_event_naming_our_refund_with_another_amount_is_not_taken_for_ours(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 5.00 refund of ours that Stripe never answered (no Stripe id)
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    assert _refund(order.order_id, admin, {"amount": "5", "reason": "other"}).status == 503
    (ours,) = _refunds(db, order.order_id)
    # When a 2.00 refund of the same charge naming it succeeds
    other = _made_in_stripe(order.payment_intent, 200, {"tollgate_refund_id": str(ours["id"])})
    assert send_stripe(current_event("refund.updated", {**other, "status": "succeeded"})).status == 200
    # Then ours keeps its 5.00 in flight and the 2.00 is counted on its own
    rows = {r["id"]: r for r in _refunds(db, order.order_id)}
    assert rows[ours["id"]]["status"] == "PENDING" and rows[ours["id"]]["provider_refund_id"] is None
    assert _money(_order(db, order.order_id)) == (Decimal("2.000"), Decimal("5.000"))


# --- a refund stuck PENDING ----------------------------------------------------------------------------------
def test_a_refund_stripe_never_made_does_not_block_a_dashboard_refund_forever(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a full 20.00 refund of ours that never reached Stripe (503, and the admin never retried), long ago
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    assert _refund(order.order_id, admin, {"reason": "other"}).status == 503
    (stuck,) = _refunds(db, order.order_id)
    _age(db, str(stuck["id"]), 60)
    # When the customer is refunded in full in the Stripe dashboard
    dashboard = _made_in_stripe(order.payment_intent, 2000)
    answer = send_stripe(current_event("refund.created", {**dashboard, "status": "succeeded"}))
    # Then the event is applied (no 5xx for days): Stripe's list shows ours was never made, so it is FAILED and
    # its reservation released; the dashboard refund is counted and the order is REFUNDED
    assert answer.status == 200 and answer.json["status"] == "processed", answer.json
    rows = {r["provider_refund_id"]: r for r in _refunds(db, order.order_id)}
    assert rows[None]["status"] == "FAILED" and rows[None]["metadata"]["failure_reason"] == "not_made_at_stripe"
    assert rows[dashboard["id"]]["status"] == "SUCCEEDED"
    row = _order(db, order.order_id)
    assert _money(row) == (Decimal("20.000"), Decimal("0")) and row["status"] == "REFUNDED"
    # And the admin's late retry of the lost request sends nothing more
    assert _refund(order.order_id, admin, {"reason": "other"}).status == 409
    assert len(book(stripe_api).refunds) == 1


def test_a_refund_stripe_made_but_never_answered_is_settled_by_the_next_refund_event(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 6.00 refund of ours that Stripe made and succeeded, but whose answer and events were lost
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    assert _refund(order.order_id, admin, {"amount": "6", "reason": "other"}).status == 503
    (stuck,) = _refunds(db, order.order_id)
    made = _made_in_stripe(
        order.payment_intent, 600, {"tollgate_refund_id": str(stuck["id"])}, key=f"tollgate:order-refund:{stuck['id']}"
    )
    book(stripe_api).refunds[made["id"]]["status"] = "succeeded"
    _age(db, str(stuck["id"]), 60)
    # When a 14.00 dashboard refund of the rest arrives (it would not fit beside ours in flight)
    dashboard = _made_in_stripe(order.payment_intent, 1400)
    answer = send_stripe(current_event("refund.created", {**dashboard, "status": "succeeded"}))
    # Then ours is found in Stripe's list by its metadata, recorded and settled; both count; the order is REFUNDED
    assert answer.status == 200, answer.json
    rows = {r["id"]: r for r in _refunds(db, order.order_id)}
    assert rows[stuck["id"]]["status"] == "SUCCEEDED" and rows[stuck["id"]]["provider_refund_id"] == made["id"]
    row = _order(db, order.order_id)
    assert _money(row) == (Decimal("20.000"), Decimal("0")) and row["status"] == "REFUNDED"


def test_a_refund_still_being_made_is_not_failed_by_the_sweep(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 15.00 refund of ours whose call is (as far as anyone knows) still in flight: no answer, just made
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    assert _refund(order.order_id, admin, {"amount": "15", "reason": "other"}).status == 503
    # When a 10.00 dashboard refund arrives that does not fit beside it
    dashboard = _made_in_stripe(order.payment_intent, 1000)
    answer = send_stripe(current_event("refund.created", {**dashboard, "status": "succeeded"}))
    # Then the event waits (5xx, Stripe retries) and ours keeps its reservation
    assert answer.status >= 500
    (row,) = _refunds(db, order.order_id)
    assert row["status"] == "PENDING" and _money(_order(db, order.order_id)) == (Decimal("0"), Decimal("15.000"))


# --- amounts and currencies ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "amount", ["10.0001", 1e20, "1e20", "NaN", "Infinity", "-0.01", 0, "0.000", True, [], {"v": 1}, "0x10"]
)
def test_hostile_amounts_are_refused_with_422_and_nothing_is_reserved(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID, amount: Any
) -> None:
    # Given a completed 20.00 order
    order = completed_order(db, buyer, stripe=stripe_api)
    # When an admin asks for a hostile amount
    response = _refund(order.order_id, admin, {"amount": amount, "reason": "other"})
    # Then 422 validation_error; nothing reserved, stored or sent
    assert response.status == 422 and response.error_code == "validation_error", response.json
    assert _refunds(db, order.order_id) == [] and _posts(stripe_api) == []
    assert _money(_order(db, order.order_id)) == (Decimal("0"), Decimal("0"))


@pytest.mark.parametrize("amount", ["10", 10, 10.0, "10.000"])
def test_a_number_or_a_string_of_ten_is_ten(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID, amount: Any
) -> None:
    # Given a completed 20.00 order, When 10 is refunded in any spelling, Then Stripe is asked for 1000 cents
    order = completed_order(db, buyer, stripe=stripe_api)
    response = _refund(order.order_id, admin, {"amount": amount, "reason": "other"})
    assert response.status == 201 and response.json["amount"] == "10.00", response.json
    assert _posts(stripe_api)[0].form["amount"] == "1000"


@pytest.mark.parametrize(
    ("currency", "total", "asked", "minor", "refused"),
    [
        ("jpy", Decimal("2000"), "1500", "1500", None),
        ("jpy", Decimal("2000"), "1.5", None, "validation_error"),
        ("kwd", Decimal("5.250"), "1.250", "1250", None),
        ("kwd", Decimal("5.250"), "1.2505", None, "validation_error"),
    ],
)
def test_zero_and_three_decimal_currencies_are_sent_in_their_minor_units(
    db: Db,
    stripe_api: StripeStandIn,
    buyer: uuid.UUID,
    admin: uuid.UUID,
    currency: str,
    total: Decimal,
    asked: str,
    minor: str | None,
    refused: str | None,
) -> None:
    # Given a completed order in a currency without cents (JPY) or with three decimals (KWD)
    order = completed_order(db, buyer, unit_price=total, currency=currency, stripe=stripe_api)
    # When part of it is refunded
    response = _refund(order.order_id, admin, {"amount": asked, "reason": "other"})
    # Then Stripe gets the currency's minor units, or a finer amount is refused before anything is reserved
    if refused:
        assert response.status == 422 and response.error_code == refused, response.json
        assert _posts(stripe_api) == [] and _refunds(db, order.order_id) == []
        return
    assert response.status == 201, response.json
    assert _posts(stripe_api)[0].form["amount"] == minor
    assert Decimal(response.json["amount"]) == Decimal(asked)


def test_one_idempotency_key_for_two_orders_makes_two_refunds_with_their_own_stripe_keys(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given two completed orders
    first = completed_order(db, buyer, stripe=stripe_api)
    second = completed_order(db, buyer, stripe=stripe_api)
    # When the same Idempotency-Key refunds each
    a = _refund(first.order_id, admin, {"amount": "3", "reason": "other"}, key="same-key")
    b = _refund(second.order_id, admin, {"amount": "3", "reason": "other"}, key="same-key")
    # Then each order has its own refund, and Stripe saw two different keys (no answer of one for the other)
    assert a.status == b.status == 201 and a.json["id"] != b.json["id"]
    assert a.json["order_id"] == str(first.order_id) and b.json["order_id"] == str(second.order_id)
    assert len({p.headers["idempotency-key"] for p in _posts(stripe_api)}) == 2
    assert _money(_order(db, first.order_id))[1] == _money(_order(db, second.order_id))[1] == Decimal("3.000")


def test_a_user_cannot_refund_even_their_own_order(db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID) -> None:
    # Given a buyer's completed order, When the buyer calls the admin refund route, Then 403 and nothing is sent
    order = completed_order(db, buyer, stripe=stripe_api)
    response = api_call("POST", f"/admin/orders/{order.order_id}/refunds", body={"reason": "other"}, as_user=buyer)
    assert response.status == 403 and _posts(stripe_api) == [] and _refunds(db, order.order_id) == []


# --- pack orders -----------------------------------------------------------------------------------------------------
def test_a_pack_order_settled_by_refund_updated_before_charge_refunded_claws_back_once(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 5.00 pack of 100 credits bought through Stripe, its completed order, and a full refund of it
    checkout = pack_checkout(catalogue, buyer)
    assert send_stripe(checkout).json["status"] == "processed"
    pi = checkout["data"]["object"]["payment_intent"]
    with db() as uow:
        purchase_id = uow.session.execute(text("SELECT id FROM purchases")).scalar_one()
    order = completed_order(
        db, buyer, unit_price=Decimal("5.00"), purchase_id=purchase_id, pack_id=catalogue.pack_id,
        payment_intent=pi, stripe=stripe_api,
    )  # fmt: skip
    made = _refund(order.order_id, admin, {"reason": "requested_by_customer"}).json
    refund = {**book(stripe_api).refunds[made["provider_refund_id"]], "status": "succeeded"}
    book(stripe_api).refunds[made["provider_refund_id"]] = refund
    # When refund.updated arrives first (twice), then charge.refunded (twice, the second a new event)
    for _ in range(2):
        assert send_stripe(current_event("refund.updated", refund)).status == 200
    for _ in range(2):
        assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    # Then the credits were clawed back once and the order counts 5.00 refunded once
    assert balance(db, buyer) == Decimal("0")
    assert count(db, "credit_transactions", "type = 'clawback'") == 1
    row = _order(db, order.order_id)
    assert row["status"] == "REFUNDED" and _money(row) == (Decimal("5.000"), Decimal("0"))
    assert ledger_is_consistent(db, buyer)


# --- downloads -------------------------------------------------------------------------------------------------------
def test_the_access_period_ends_exactly_at_its_boundary(db: Db) -> None:
    # Given an item whose access ends at a known moment
    with db() as uow:
        buyer = make_user(uow.session).id
        uow.commit()
    ends = utcnow() + timedelta(days=1)
    order = completed_order(db, buyer, product_id=download_product(db), access_expires_at=ends)
    item = order.item_ids[0]
    # When it is downloaded a microsecond before the end, at the end, and after
    link = downloads.download(UnitOfWork(), get_storage(), buyer, order.order_id, item, now=ends - timedelta(0, 0, 1))
    assert link.url.startswith("https://")
    for moment in (ends, ends + timedelta(seconds=1)):
        with pytest.raises(AccessExpired):
            downloads.download(UnitOfWork(), get_storage(), buyer, order.order_id, item, now=moment)
    # Then only the first was counted
    with db() as uow:
        counted = uow.session.execute(text("SELECT download_count FROM order_items WHERE id = :i"), {"i": item})
        assert counted.scalar_one() == 1


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(document.cookie)",
        "http://cdn.example.com/ebook.pdf",
        "data:text/html;base64,PHNjcmlwdD4=",
        "//evil.example.com/x",
        "file:///etc/passwd",
        "https:///nohost",
    ],
)
def test_a_download_url_that_is_not_https_is_never_answered(db: Db, url: str) -> None:
    # Given a product whose download URL is not a plain https address (the catalogue let it in)
    with db() as uow:
        buyer = make_user(uow.session).id
        uow.commit()
    order = completed_order(db, buyer, product_id=download_product(db, download_url=url, download_limit=3))
    # When the buyer downloads it, Then 409 not_downloadable (no usable file); nothing is counted
    answer = api_call("GET", f"/orders/{order.order_id}/items/{order.item_ids[0]}/download", as_user=buyer)
    assert answer.status == 409 and answer.json["error"]["details"]["reason"] == "no_file", answer.json
    with pytest.raises(NotDownloadable):
        downloads.download(UnitOfWork(), get_storage(), buyer, order.order_id, order.item_ids[0])
    with db() as uow:
        counted = uow.session.execute(
            text("SELECT download_count FROM order_items WHERE id = :i"), {"i": order.item_ids[0]}
        )
        assert counted.scalar_one() == 0


def test_a_signed_link_lives_only_the_configured_few_minutes(db: Db) -> None:
    # Given a product with an uploaded, ready file (a storage row as /files leaves it)
    with db() as uow:
        buyer = make_user(uow.session).id
        stored = StorageObject(
            user_id=buyer, provider="local", key=f"users/{buyer}/ebook.pdf", pathname="ebook.pdf",
            original_name="Ebook.pdf", content_type="application/pdf", size=10, status=FileStatus.READY,
            upload_expires_at=utcnow(), completed_at=utcnow(),
        )  # fmt: skip
        uow.session.add(stored)
        uow.session.flush()
        file_id = stored.id
        uow.commit()
    order = completed_order(db, buyer, product_id=download_product(db, download_url=None, download_file_id=file_id))
    moment = utcnow()
    # When it is downloaded
    link = downloads.download(UnitOfWork(), get_storage(), buyer, order.order_id, order.item_ids[0], now=moment)
    # Then the link expires after the configured lifetime, at most an hour: a refund right after cannot be outrun long
    lifetime = get_settings().file_download_expiry_seconds
    assert link.expires_at == moment + timedelta(seconds=lifetime) and lifetime <= 3600
    assert link.url != "" and "://" in link.url


def test_the_same_refund_spelled_differently_is_the_same_idempotent_request(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a refund of 10 made with an Idempotency-Key
    order = completed_order(db, buyer, stripe=stripe_api)
    first = _refund(order.order_id, admin, {"amount": 10, "reason": "other"}, key="spelled")
    # When it is retried as "10.00" and as "10.000"
    retries = [_refund(order.order_id, admin, {"amount": a, "reason": "other"}, key="spelled") for a in ("10.00", "10")]
    # Then each answers the first refund; one refund, one Stripe call
    assert first.status == 201 and [r.status for r in retries] == [201, 201], [r.json for r in retries]
    assert {r.json["id"] for r in retries} == {first.json["id"]}
    assert len(_refunds(db, order.order_id)) == 1 and len(_posts(stripe_api)) == 1


def test_admin_refunds_racing_a_dashboard_refund_never_pass_the_charge(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 20.00 order of which 10.00 was just refunded in the Stripe dashboard (its event not yet delivered),
    # and Stripe settling refunds at once
    order = completed_order(db, buyer, stripe=stripe_api)
    book(stripe_api).status = "succeeded"
    dashboard = current_event("refund.created", _made_in_stripe(order.payment_intent, 1000))
    gateway = adapters.stripe_gateway()
    actor = Actor.user(admin, "ADMIN")
    barrier = threading.Barrier(5)
    outcomes: list[object] = []

    def refund() -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.append(
                order_refunds.refund_order(
                    UnitOfWork(), actor, order.order_id, amount=Decimal("6"), reason="other", gateway=gateway
                )
            )
        except TollgateError as exc:
            outcomes.append(exc)

    def deliver() -> None:
        barrier.wait(timeout=30)
        outcomes.append(send_stripe(dashboard).status)

    # When four admins refund 6.00 each while the dashboard refund's event arrives
    threads = [threading.Thread(target=refund) for _ in range(4)] + [threading.Thread(target=deliver)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 5, outcomes
    if 200 not in outcomes:  # it did not fit beside refunds in flight: Stripe delivers it again
        assert send_stripe(dashboard).status == 200
    # Then what Tollgate counts is exactly what Stripe refunded (10.00 + one 6.00), nothing in flight, within total
    refunded_at_stripe = sum(c.refunded for c in book(stripe_api).charges.values() if c.id == order.charge)
    row = _order(db, order.order_id)
    assert refunded_at_stripe == 1600
    assert _money(row) == (Decimal("16.000"), Decimal("0")) and row["refunded_amount"] <= row["total_amount"]
    made = [o for o in outcomes if isinstance(o, order_refunds.RefundView)]
    assert sorted(v.status for v in made if v.status != "SUCCEEDED") == ["FAILED"] * (len(made) - 1)


class _TwinFirst:
    """Stripe answering our refund only after a twin (another Stripe refund with the same metadata and amount, made
    in the dashboard) had its pending event delivered: the row was tied to the twin before the answer came."""

    def __init__(self, inner: adapters.StripeGateway) -> None:
        self.inner = inner
        self.twin: dict[str, Any] = {}

    def create_refund(self, request: adapters.RefundRequest) -> adapters.RefundAnswer:
        self.twin = _made_in_stripe(str(request.payment_intent_id), request.amount_minor, dict(request.metadata))
        assert send_stripe(current_event("refund.created", {**self.twin, "status": "pending"})).status == 200
        return self.inner.create_refund(request)


def test_an_answer_about_another_stripe_refund_than_the_rows_settles_nothing_twice(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given Stripe settling at once, and a twin of our 5.00 refund whose event ties our row to it first
    order = completed_order(db, buyer, stripe=stripe_api)
    book(stripe_api).status = "succeeded"
    gateway = _TwinFirst(adapters.stripe_gateway())
    # When the admin refunds 5.00 (Stripe's answer: our own refund, succeeded)
    view = order_refunds.refund_order(
        UnitOfWork(), Actor.user(admin, "ADMIN"), order.order_id, amount=Decimal("5"), reason="other",
        gateway=gateway,  # type: ignore[arg-type]
    )  # fmt: skip
    # Then the row follows the twin it was tied to: the answer about another refund moved nothing
    assert view.provider_refund_id == gateway.twin["id"] and view.status == "PENDING"
    # When the twin fails and our own refund's event (succeeded) arrives
    assert send_stripe(current_event("refund.failed", {**gateway.twin, "status": "failed"})).status == 200
    real = next(r for r in book(stripe_api).refunds.values() if r["id"] != gateway.twin["id"])
    assert send_stripe(current_event("refund.updated", real)).status == 200
    # Then exactly the 5.00 Stripe refunded is counted, nothing is in flight
    assert _money(_order(db, order.order_id)) == (Decimal("5.000"), Decimal("0"))
    assert {r["provider_refund_id"]: r["status"] for r in _refunds(db, order.order_id)} == {
        gateway.twin["id"]: "FAILED",
        real["id"]: "SUCCEEDED",
    }


def test_deliveries_of_one_dashboard_refund_racing_each_other_count_it_once_and_all_succeed(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID
) -> None:
    # Given a 20.00 order refunded 7.00 in the Stripe dashboard, and the order's row held locked for a moment
    order = completed_order(db, buyer, stripe=stripe_api)
    obj = {**_made_in_stripe(order.payment_intent, 700), "status": "succeeded"}
    events = [
        current_event("refund.created", obj),
        current_event("refund.updated", obj),
        charge_refunded_2020(order.charge, order.payment_intent, amount=2000, refunds=[obj]),
    ]
    statuses: list[str] = []

    def deliver(event: dict[str, Any]) -> None:
        # Straight to the webhook service: the local gateway runs one invocation of a function at a time
        raw = json.dumps(event)
        try:
            receipt = webhooks.receive_webhook(
                "stripe", raw.encode(), {"stripe-signature": stripe_signature(raw, STRIPE_SECRET)}
            )
            statuses.append(receipt.status)
        except TollgateError as exc:
            statuses.append(exc.code)

    holder = UnitOfWork()
    with holder:
        holder.session.execute(text("SELECT 1 FROM orders WHERE id = :i FOR UPDATE"), {"i": order.order_id})
        # When its three events arrive together: each finds no row for the refund, then waits for the order
        threads = [threading.Thread(target=deliver, args=(e,)) for e in events]
        for thread in threads:
            thread.start()
        time.sleep(2)
        holder.rollback()
    for thread in threads:
        thread.join(timeout=120)
    # Then each is applied (no 5xx for Stripe to retry), and the 7.00 is recorded and counted once
    assert statuses == ["processed"] * 3, statuses
    (row,) = _refunds(db, order.order_id)
    assert row["provider_refund_id"] == obj["id"] and row["status"] == "SUCCEEDED"
    assert _money(_order(db, order.order_id)) == (Decimal("7.000"), Decimal("0"))


def test_a_pack_order_refunded_in_the_dashboard_claws_back_once(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID
) -> None:
    # Given a 5.00 pack of 100 credits bought through Stripe and its completed order
    checkout = pack_checkout(catalogue, buyer)
    assert send_stripe(checkout).json["status"] == "processed"
    pi = checkout["data"]["object"]["payment_intent"]
    with db() as uow:
        purchase_id = uow.session.execute(text("SELECT id FROM purchases")).scalar_one()
    order = completed_order(
        db, buyer, unit_price=Decimal("5.00"), purchase_id=purchase_id, pack_id=catalogue.pack_id,
        payment_intent=pi, stripe=stripe_api,
    )  # fmt: skip
    # When it is refunded in full in the dashboard: charge.refunded (2020, embedded), refund.created, and again
    obj = {**_made_in_stripe(pi, 500), "status": "succeeded"}
    for _ in range(2):
        assert send_stripe(charge_refunded_2020(order.charge, pi, amount=500, refunds=[obj])).status == 200
        assert send_stripe(current_event("refund.created", obj)).status == 200
    # Then the credits were clawed back once, and the order counts the 5.00 once
    assert balance(db, buyer) == Decimal("0")
    assert count(db, "credit_transactions", "type = 'clawback'") == 1
    row = _order(db, order.order_id)
    assert row["status"] == "REFUNDED" and _money(row) == (Decimal("5.000"), Decimal("0"))
    assert len(_refunds(db, order.order_id)) == 1 and ledger_is_consistent(db, buyer)


def test_a_refund_that_fails_after_it_succeeded_gives_the_order_back_its_money_and_access(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a download order refunded in full, succeeded at Stripe: REFUNDED, access revoked
    order = completed_order(db, buyer, product_id=download_product(db), stripe=stripe_api)
    made = _refund(order.order_id, admin, {"reason": "requested_by_customer"}).json
    refund = {**book(stripe_api).refunds[made["provider_refund_id"]], "status": "succeeded"}
    assert send_stripe(current_event("refund.updated", refund)).status == 200
    assert _order(db, order.order_id)["status"] == "REFUNDED"
    # When Stripe fails it afterwards (the card was closed), then an older succeeded update arrives, and the failure
    # is delivered again
    failed = {**refund, "status": "failed", "failure_reason": "expired_or_canceled_card"}
    assert send_stripe(current_event("refund.failed", failed)).status == 200
    assert send_stripe(current_event("refund.updated", refund)).status == 200
    assert send_stripe(current_event("refund.failed", failed)).status == 200
    # Then the order holds its money again, once: COMPLETED, nothing refunded, the item downloadable again
    row = _order(db, order.order_id)
    assert (row["status"], row["payment_status"]) == ("COMPLETED", "SUCCEEDED")
    assert _money(row) == (Decimal("0"), Decimal("0"))
    (refund_row,) = _refunds(db, order.order_id)
    assert refund_row["status"] == "FAILED" and refund_row["metadata"]["failed_after_success"] is True
    download = api_call("GET", f"/orders/{order.order_id}/items/{order.item_ids[0]}/download", as_user=buyer)
    assert download.status == 200, download.json
    # And the customer can be refunded again, by the admin route
    again = _refund(order.order_id, admin, {"reason": "requested_by_customer"})
    assert again.status == 201 and again.json["amount"] == "20.00"


def test_a_dashboard_refund_that_can_never_fit_is_recorded_with_its_overlap_not_retried_for_ever(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID
) -> None:
    # Given a 20.00 order whose books already count 15.00 refunded (nothing in flight) while Stripe shows room
    order = completed_order(db, buyer, stripe=stripe_api)
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET refunded_amount = 15 WHERE id = :i"), {"i": order.order_id})
        uow.commit()
    # When a 10.00 refund made in the dashboard arrives
    obj = {**_made_in_stripe(order.payment_intent, 1000), "status": "succeeded"}
    answer = send_stripe(current_event("refund.created", obj))
    # Then it is applied (200: nothing in flight could ever make room): 5.00 counted, 5.00 kept as the overlap
    assert answer.status == 200 and answer.json["status"] == "processed", answer.json
    (row,) = _refunds(db, order.order_id)
    assert row["status"] == "SUCCEEDED" and row["amount"] == Decimal("5.000")
    assert row["metadata"]["uncounted"] == "5.000" and row["metadata"]["stripe_amount"] == "10.000"
    order_row = _order(db, order.order_id)
    assert order_row["status"] == "REFUNDED" and _money(order_row) == (Decimal("20.000"), Decimal("0"))


def test_a_product_file_deleted_after_the_sale_is_not_served_nor_counted(db: Db) -> None:
    # Given a product whose uploaded file its owner deleted after the sale (and no download URL)
    with db() as uow:
        buyer = make_user(uow.session).id
        stored = StorageObject(
            user_id=buyer, provider="local", key=f"users/{buyer}/gone.pdf", pathname="gone.pdf",
            original_name="Gone.pdf", content_type="application/pdf", size=10, status=FileStatus.DELETED,
            upload_expires_at=utcnow(), completed_at=utcnow(), deleted_at=utcnow(),
        )  # fmt: skip
        uow.session.add(stored)
        uow.session.flush()
        file_id = stored.id
        uow.commit()
    order = completed_order(db, buyer, product_id=download_product(db, download_url=None, download_file_id=file_id))
    # When the buyer downloads it, Then 409 not_downloadable (no_file), and the try is not counted
    answer = api_call("GET", f"/orders/{order.order_id}/items/{order.item_ids[0]}/download", as_user=buyer)
    assert answer.status == 409 and answer.json["error"]["details"]["reason"] == "no_file", answer.json
    with db() as uow:
        counted = uow.session.execute(
            text("SELECT download_count FROM order_items WHERE id = :i"), {"i": order.item_ids[0]}
        )
        assert counted.scalar_one() == 0


def test_charge_refunded_alone_also_settles_a_refund_stripe_never_made(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a full refund of ours that never reached Stripe, long ago, and a full dashboard refund of the order
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    assert _refund(order.order_id, admin, {"reason": "other"}).status == 503
    (stuck,) = _refunds(db, order.order_id)
    _age(db, str(stuck["id"]), 60)
    dashboard = _made_in_stripe(order.payment_intent, 2000)
    book(stripe_api).refunds[dashboard["id"]]["status"] = "succeeded"
    # When only charge.refunded arrives, at the pinned version (its refunds listed from Stripe)
    answer = send_stripe(charge_refunded_current(order.charge, order.payment_intent, amount=2000, refunded=2000))
    # Then ours is FAILED as never made, the dashboard refund counted, the order REFUNDED
    assert answer.status == 200, answer.json
    rows = {r["provider_refund_id"]: r["status"] for r in _refunds(db, order.order_id)}
    assert rows == {None: "FAILED", dashboard["id"]: "SUCCEEDED"}
    row = _order(db, order.order_id)
    assert _money(row) == (Decimal("20.000"), Decimal("0")) and row["status"] == "REFUNDED"
