"""Refunds of orders: the admin route against the Stripe stand-in (bounds, idempotency, refusals, no answer),
concurrent partial refunds that never pass the total, and the lifecycle through signed webhooks in the current and
the 2020-08-27 shapes (succeeded, failed, replayed, out of order, made in the dashboard), with a pack order's
credits clawed back once."""

# ruff: noqa: F401, F811
from __future__ import annotations

import threading
import uuid
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
from tollgate.db import UnitOfWork
from tollgate.errors import RefundExceedsPayment, TollgateError
from tollgate.payments import adapters
from tollgate.services import order_refunds, webhooks
from tollgate.services.authz import Actor

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


def _refund_posts(stripe: StripeStandIn) -> list[Any]:
    return [r for r in stripe.requests if r.method == "POST" and r.path == "/v1/refunds"]


# --- the admin route ---------------------------------------------------------------------------------------------
def test_a_partial_refund_reserves_calls_stripe_with_the_refund_id_and_answers_pending(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a completed 20.00 order paid through Stripe
    order = completed_order(db, buyer, product_id=download_product(db), stripe=stripe_api)
    # When an admin refunds 7.50 of it, requested by the customer
    response = _refund(order.order_id, admin, {"amount": "7.5", "reason": "requested_by_customer", "notes": "late"})
    # Then the refund answers 201 PENDING with Stripe's id, and the order holds 7.50 in flight
    assert response.status == 201, response.json
    body = response.json
    assert body["status"] == "PENDING" and body["amount"] == "7.50" and body["provider_refund_id"].startswith("re_")
    assert body["order_refund_pending_amount"] == "7.50" and body["order_refunded_amount"] == "0.00"
    row = _order(db, order.order_id)
    assert row["refund_pending_amount"] == Decimal("7.500") and row["status"] == "COMPLETED"
    # And Stripe was asked for 750 minor units of the payment intent, with the reason, the id and a derived key
    (post,) = _refund_posts(stripe_api)
    assert post.form["payment_intent"] == order.payment_intent and post.form["amount"] == "750"
    assert post.form["reason"] == "requested_by_customer"
    assert post.form["metadata[tollgate_refund_id]"] == body["id"]
    assert post.headers["idempotency-key"] == f"tollgate:order-refund:{body['id']}"
    # And the admin's change is audited with old and new values
    with db() as uow:
        audit = uow.session.execute(text("SELECT * FROM audit_logs WHERE action = 'order.refund'")).mappings().one()
    assert audit["actor_id"] == admin and audit["target_id"] == str(order.order_id)


def test_a_reason_stripe_does_not_know_is_kept_but_not_sent(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a completed order
    order = completed_order(db, buyer, stripe=stripe_api)
    # When it is refunded in full (no amount) for a cancelled subscription
    response = _refund(order.order_id, admin, {"reason": "subscription_canceled"})
    # Then the whole 20.00 is refunded, the reason is recorded, and Stripe gets no reason
    assert response.status == 201, response.json
    assert response.json["amount"] == "20.00" and response.json["reason"] == "subscription_canceled"
    assert "reason" not in _refund_posts(stripe_api)[0].form


def test_more_than_is_left_answers_409_with_what_is_refundable_and_writes_nothing(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 20.00 order with 15.00 already in flight
    order = completed_order(db, buyer, stripe=stripe_api)
    assert _refund(order.order_id, admin, {"amount": "15", "reason": "duplicate"}).status == 201
    # When 5.01 more is asked
    response = _refund(order.order_id, admin, {"amount": "5.01", "reason": "duplicate"})
    # Then 409 refund_exceeds_payment says 5.00 is refundable; nothing more is written or sent
    assert response.status == 409 and response.error_code == "refund_exceeds_payment"
    assert response.json["error"]["details"]["refundable"] == "5.000"
    assert len(_refunds(db, order.order_id)) == 1 and len(_refund_posts(stripe_api)) == 1
    assert _order(db, order.order_id)["refund_pending_amount"] == Decimal("15.000")


@pytest.mark.parametrize(
    "body",
    [
        {"amount": "0", "reason": "other"},
        {"amount": "-1", "reason": "other"},
        {"amount": "1.005", "reason": "other"},
        {"amount": "1", "reason": "because"},
        {"amount": "1"},
        {"amount": "1", "reason": "other", "extra": True},
    ],
)
def test_bad_input_answers_422_and_writes_nothing(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID, body: dict[str, Any]
) -> None:
    # Given a completed order
    order = completed_order(db, buyer, stripe=stripe_api)
    # When the body is not a valid refund
    response = _refund(order.order_id, admin, body)
    # Then 422 with a code, and nothing is reserved, stored or sent
    assert response.status == 422 and response.error_code == "validation_error", response.json
    assert _refunds(db, order.order_id) == [] and _refund_posts(stripe_api) == []
    assert _order(db, order.order_id)["refund_pending_amount"] == 0


def test_orders_that_cannot_be_refunded_answer_404_or_409(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pending order and a missing one
    order = completed_order(db, buyer, stripe=stripe_api)
    with db() as uow:
        uow.session.execute(text("UPDATE orders SET status = 'PENDING' WHERE id = :i"), {"i": order.order_id})
        uow.commit()
    # When each is refunded, Then 409 order_not_refundable and 404 order_not_found, nothing sent
    pending = _refund(order.order_id, admin, {"reason": "other"})
    assert pending.status == 409 and pending.error_code == "order_not_refundable"
    missing = _refund(uuid.uuid4(), admin, {"reason": "other"})
    assert missing.status == 404 and missing.error_code == "order_not_found"
    assert _refund_posts(stripe_api) == []


def test_a_stripe_refusal_marks_the_refund_failed_and_releases_the_amount(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a completed order, and Stripe refusing the next request (400: nothing is created)
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.append(400)
    # When an admin refunds it
    response = _refund(order.order_id, admin, {"amount": "5", "reason": "other"})
    # Then the refund is FAILED, without a Stripe id, and nothing stays reserved
    assert response.status == 201, response.json
    assert response.json["status"] == "FAILED" and response.json["provider_refund_id"] is None
    row = _order(db, order.order_id)
    assert row["refund_pending_amount"] == 0 and row["refunded_amount"] == 0
    # And the whole amount can be refunded again
    assert _refund(order.order_id, admin, {"reason": "other"}).json["amount"] == "20.00"


def test_no_answer_keeps_the_reservation_and_a_retry_with_the_same_key_completes_it(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a completed order, and Stripe failing (500) the call and its automatic retry
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    # When an admin refunds 4.00 with an Idempotency-Key
    first = _refund(order.order_id, admin, {"amount": "4", "reason": "other"}, key="refund-1")
    # Then 503: the refund may exist, so its 4.00 stays reserved (PENDING, no Stripe id)
    assert first.status == 503, first.json
    (row,) = _refunds(db, order.order_id)
    assert row["status"] == "PENDING" and row["provider_refund_id"] is None
    assert _order(db, order.order_id)["refund_pending_amount"] == Decimal("4.000")
    # When the admin retries with the same key
    again = _refund(order.order_id, admin, {"amount": "4", "reason": "other"}, key="refund-1")
    # Then the same refund is sent again with the same Stripe key, and recorded; nothing is reserved twice
    assert again.status == 201 and again.json["id"] == str(row["id"]) and again.json["provider_refund_id"]
    keys = {r.headers["idempotency-key"] for r in _refund_posts(stripe_api)}
    assert keys == {f"tollgate:order-refund:{row['id']}"}
    assert len(book(stripe_api).refunds) == 1
    assert _order(db, order.order_id)["refund_pending_amount"] == Decimal("4.000")


def test_the_same_idempotency_key_answers_the_first_refund_and_another_body_conflicts(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a refund made with an Idempotency-Key
    order = completed_order(db, buyer, stripe=stripe_api)
    first = _refund(order.order_id, admin, {"amount": "3", "reason": "duplicate"}, key="k-1")
    # When the same request is repeated, and the key is reused for another amount
    repeat = _refund(order.order_id, admin, {"amount": "3", "reason": "duplicate"}, key="k-1")
    other = _refund(order.order_id, admin, {"amount": "4", "reason": "duplicate"}, key="k-1")
    # Then the repeat answers the first refund, the other is 409; one refund exists and one Stripe call was made
    assert repeat.status == 201 and repeat.json["id"] == first.json["id"]
    assert other.status == 409 and other.error_code == "idempotency_conflict"
    assert len(_refunds(db, order.order_id)) == 1 and len(_refund_posts(stripe_api)) == 1


def test_partial_refunds_racing_never_pass_the_total(db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID) -> None:
    # Given a 20.00 order and an admin, and the stand-in answering
    order = completed_order(db, buyer, stripe=stripe_api)
    with db() as uow:
        actor = Actor.user(make_user(uow.session, role="ADMIN").id, "ADMIN")
        uow.commit()
    gateway = adapters.stripe_gateway()
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    outcomes: list[object] = []

    def refund() -> None:
        barrier.wait(timeout=30)
        try:
            outcomes.append(
                order_refunds.refund_order(
                    UnitOfWork(), actor, order.order_id, amount=Decimal("6.00"), reason="other", gateway=gateway
                )
            )
        except TollgateError as exc:
            outcomes.append(exc)

    # When 8 admins refund 6.00 each at the same moment
    threads = [threading.Thread(target=refund) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    # Then exactly 3 refunds (18.00) pass, the others are refused with what is left, and Stripe saw 3
    made = [o for o in outcomes if isinstance(o, order_refunds.RefundView)]
    refused = [o for o in outcomes if isinstance(o, RefundExceedsPayment)]
    assert len(outcomes) == threads_n and len(made) == 3 and len(refused) == 5, outcomes
    assert {r.details["refundable"] for r in refused} == {"2.000"}
    row = _order(db, order.order_id)
    assert row["refund_pending_amount"] + row["refunded_amount"] == Decimal("18.000") <= row["total_amount"]
    assert len(_refund_posts(stripe_api)) == 3 and len(_refunds(db, order.order_id)) == 3


# --- the lifecycle through webhooks ------------------------------------------------------------------------------
def _stripe_refund(stripe: StripeStandIn, refund_id: str, **changes: Any) -> dict[str, Any]:
    obj = book(stripe).refunds[refund_id]
    obj.update(changes)
    return obj


def test_refund_updated_succeeded_moves_the_amount_once_and_a_full_refund_revokes_downloads(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a two-item order refunded 15.00 and then the remaining 25.00, both pending at Stripe
    order = completed_order(db, buyer, product_id=download_product(db), items=2, stripe=stripe_api)
    part = _refund(order.order_id, admin, {"amount": "15", "reason": "other"}).json
    rest = _refund(order.order_id, admin, {"reason": "other"}).json
    assert rest["amount"] == "25.00"
    # When Stripe reports the first succeeded (twice: a redelivery and a new event with the same state)
    event = current_event("refund.updated", _stripe_refund(stripe_api, part["provider_refund_id"], status="succeeded"))
    assert send_stripe(event).json["status"] == "processed"
    assert send_stripe(event).json["duplicate"] is True
    again = current_event("refund.updated", _stripe_refund(stripe_api, part["provider_refund_id"]))
    assert send_stripe(again).status == 200
    assert webhooks.replay_event(event["id"], Actor.operator("tests")).status == "processed"  # applied again, forced
    # Then 15.00 moved from pending to refunded once; the order stays COMPLETED; downloads keep working
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("15.000"), Decimal("25.000"))
    assert row["status"] == "COMPLETED" and row["payment_status"] == "SUCCEEDED"
    # When the rest succeeds
    last = current_event("refund.updated", _stripe_refund(stripe_api, rest["provider_refund_id"], status="succeeded"))
    assert send_stripe(last).status == 200
    # Then the order is REFUNDED in full, and every item lost its access
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("40.000"), 0)
    assert row["status"] == "REFUNDED" and row["payment_status"] == "REFUNDED"
    with db() as uow:
        revoked = uow.session.execute(
            text("SELECT count(*) FROM order_items WHERE order_id = :i AND access_revoked_at IS NOT NULL"),
            {"i": order.order_id},
        ).scalar_one()
    assert revoked == 2
    assert {r["status"] for r in _refunds(db, order.order_id)} == {"SUCCEEDED"}


def test_refund_failed_releases_the_amount_once(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pending 8.00 refund
    order = completed_order(db, buyer, stripe=stripe_api)
    made = _refund(order.order_id, admin, {"amount": "8", "reason": "other"}).json
    # When Stripe reports it failed, then (out of order) an older pending update arrives
    failed = _stripe_refund(
        stripe_api, made["provider_refund_id"], status="failed", failure_reason="lost_or_stolen_card"
    )
    assert send_stripe(current_event("refund.failed", failed)).status == 200
    older = {**failed, "status": "pending"}
    assert send_stripe(current_event("refund.updated", older)).status == 200
    # Then the refund is FAILED with the reason, nothing is reserved or refunded, and it never comes back
    (row,) = _refunds(db, order.order_id)
    assert row["status"] == "FAILED" and row["metadata"]["failure_reason"] == "lost_or_stolen_card"
    order_row = _order(db, order.order_id)
    assert order_row["refund_pending_amount"] == 0 and order_row["refunded_amount"] == 0
    assert send_stripe(current_event("refund.updated", {**failed, "status": "succeeded"})).status == 200
    assert _order(db, order.order_id)["refunded_amount"] == 0


class _WebhookFirst:
    """Stripe answering the refund only after its webhook was delivered: the event reaches Tollgate before the
    admin call records the refund's Stripe id."""

    def __init__(self, inner: adapters.StripeGateway, event_type: str) -> None:
        self.inner, self.event_type = inner, event_type
        self.delivered: list[Any] = []

    def create_refund(self, request: adapters.RefundRequest) -> adapters.RefundAnswer:
        answer = self.inner.create_refund(request)
        assert answer.raw is not None
        self.delivered.append(send_stripe(current_event(self.event_type, {**answer.raw, "status": "succeeded"})))
        return answer


def test_refund_updated_before_the_row_has_its_stripe_id_is_found_by_metadata(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a completed order, and Stripe's refund.updated (succeeded) delivered before the admin call records
    order = completed_order(db, buyer, stripe=stripe_api)
    gateway = _WebhookFirst(adapters.stripe_gateway(), "refund.updated")
    # When the admin refunds 5.00 (Stripe's own answer still says pending)
    view = order_refunds.refund_order(
        UnitOfWork(), Actor.user(admin, "ADMIN"), order.order_id, amount=Decimal("5"), reason="other",
        gateway=gateway,  # type: ignore[arg-type]
    )  # fmt: skip
    # Then the webhook found the row by its metadata, recorded the Stripe id and settled it; the late "pending"
    # answer moved nothing back
    assert gateway.delivered[0].json["status"] == "processed"
    assert view.status == "SUCCEEDED" and view.provider_refund_id and view.provider_refund_id.startswith("re_")
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("5.000"), 0)


def test_charge_refunded_in_the_current_shape_lists_the_refunds_and_in_the_2020_shape_reads_them(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given two orders each with a pending 6.00 refund
    current = completed_order(db, buyer, stripe=stripe_api)
    older = completed_order(db, buyer, stripe=stripe_api)
    one = _refund(current.order_id, admin, {"amount": "6", "reason": "other"}).json
    two = _refund(older.order_id, admin, {"amount": "6", "reason": "other"}).json
    # When charge.refunded arrives at the pinned version (no refunds embedded: they are listed from Stripe)
    _stripe_refund(stripe_api, one["provider_refund_id"], status="succeeded")
    answer = send_stripe(charge_refunded_current(current.charge, current.payment_intent, amount=2000, refunded=600))
    # And at 2020-08-27, with the refund embedded
    embedded = _stripe_refund(stripe_api, two["provider_refund_id"], status="succeeded")
    answer_2020 = send_stripe(charge_refunded_2020(older.charge, older.payment_intent, amount=2000, refunds=[embedded]))
    # Then both orders count their 6.00 as refunded
    assert answer.json["status"] == "processed" and answer_2020.json["status"] == "processed"
    for order in (current, older):
        row = _order(db, order.order_id)
        assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("6.000"), 0)
    listed = [r for r in stripe_api.requests if r.method == "GET" and r.path.startswith("/v1/refunds?")]
    assert len(listed) == 1 and current.charge in listed[0].path


def test_a_refund_made_in_the_dashboard_is_recorded_and_counted_once(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID
) -> None:
    # Given a completed 20.00 order with a download item
    order = completed_order(db, buyer, product_id=download_product(db), stripe=stripe_api)
    # When someone refunds all of it in the Stripe dashboard (refund.created, then charge.refunded in 2020 shape)
    obj = refund_object("re_dashboard_1", amount=2000, charge=order.charge, payment_intent=order.payment_intent)
    assert send_stripe(current_event("refund.created", obj)).json["status"] == "processed"
    assert (
        send_stripe(charge_refunded_2020(order.charge, order.payment_intent, amount=2000, refunds=[obj])).status == 200
    )
    # Then one SUCCEEDED refund of 20.00 is recorded and the order is REFUNDED, its item revoked
    (row,) = _refunds(db, order.order_id)
    assert row["status"] == "SUCCEEDED" and row["provider_refund_id"] == "re_dashboard_1"
    assert row["amount"] == Decimal("20.000") and row["requested_by"] is None
    order_row = _order(db, order.order_id)
    assert order_row["status"] == "REFUNDED" and order_row["refunded_amount"] == Decimal("20.000")
    download = api_call("GET", f"/orders/{order.order_id}/items/{order.item_ids[0]}/download", as_user=buyer)
    assert download.status == 403 and download.error_code == "refunded"


def test_a_pack_order_claws_its_credits_back_once_and_keeps_its_refunded_amount(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 5.00 pack of 100 credits bought through Stripe, and its completed order
    checkout = pack_checkout(catalogue, buyer)
    assert send_stripe(checkout).json["status"] == "processed"
    pi = checkout["data"]["object"]["payment_intent"]
    with db() as uow:
        purchase_id = uow.session.execute(text("SELECT id FROM purchases")).scalar_one()
    order = completed_order(
        db, buyer, unit_price=Decimal("5.00"), purchase_id=purchase_id, pack_id=catalogue.pack_id,
        payment_intent=pi, stripe=stripe_api,
    )  # fmt: skip
    assert balance(db, buyer) == Decimal("100")
    # When an admin refunds the order in full and Stripe settles it
    made = _refund(order.order_id, admin, {"reason": "requested_by_customer"}).json
    assert made["amount"] == "5.00"
    refund = _stripe_refund(stripe_api, made["provider_refund_id"], status="succeeded")
    refunded = charge_refunded_current(order.charge, pi, amount=500, refunded=500)
    assert send_stripe(refunded).json["status"] == "processed"
    # And every event is delivered again, and refund.updated comes too
    assert send_stripe(refunded).json["duplicate"] is True
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    assert send_stripe(current_event("refund.updated", refund)).status == 200
    # Then the credits were clawed back once, and the order counts 5.00 refunded once
    assert balance(db, buyer) == Decimal("0")
    assert count(db, "credit_transactions", "type = 'clawback'") == 1
    row = _order(db, order.order_id)
    assert row["status"] == "REFUNDED" and (row["refunded_amount"], row["refund_pending_amount"]) == (
        Decimal("5.000"),
        0,
    )
    assert ledger_is_consistent(db, buyer)


def test_a_dashboard_refund_that_does_not_fit_beside_refunds_in_flight_waits_for_them(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 20.00 order with 15.00 of ours in flight
    order = completed_order(db, buyer, stripe=stripe_api)
    ours = _refund(order.order_id, admin, {"amount": "15", "reason": "other"}).json
    # When a 10.00 refund made in the dashboard arrives first
    dashboard = current_event(
        "refund.created",
        refund_object("re_dashboard_2", amount=1000, charge=order.charge, payment_intent=order.payment_intent),
    )
    waiting = send_stripe(dashboard)
    # Then it is not applied (5xx: Stripe retries), and nothing passes the total
    assert waiting.status >= 500
    assert len(_refunds(db, order.order_id)) == 1
    # When ours fails at Stripe, and the dashboard refund is delivered again
    failed = _stripe_refund(stripe_api, ours["provider_refund_id"], status="failed")
    assert send_stripe(current_event("refund.failed", failed)).status == 200
    applied = send_stripe(dashboard)
    # Then the dashboard refund is counted: 10.00 refunded, nothing in flight
    assert applied.status == 200 and applied.json["status"] == "processed"
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"], row["status"]) == (Decimal("10.000"), 0, "COMPLETED")
