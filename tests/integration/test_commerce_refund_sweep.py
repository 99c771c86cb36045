"""ProviderReconciliation's refund sweep against the Stripe stand-in: order refunds left PENDING with no event to
settle them are looked up at Stripe (GET /v1/refunds/{id}, or the create again with the admin call's key, or past
Stripe's idempotency window the charge's refund list), settled once through the webhooks' path, in bounded
batches, safe against a webhook settling the same refund meanwhile; what stays unsettled is counted `unresolved`."""

# ruff: noqa: F401, F811
from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.commerce_refunds_standin import book, charge_refunded_current, completed_order, current_event
from tests.integration.test_payments_stripe import pack_checkout
from tests.payments_support import (
    Catalogue,
    balance,
    buyer,
    catalogue,
    count,
    payments_env,
    send_stripe,
    stripe_api,
)
from tests.provider_standins import StripeStandIn
from tests.support import api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import PaymentProviderError
from tollgate.jobs import JobReport, run_job
from tollgate.jobs.provider_reconciliation import ProviderReconciliation
from tollgate.payments import adapters
from tollgate.services.refund_sweep import RefundLookups

Db = Callable[[], UnitOfWork]


@pytest.fixture
def admin(db: Db) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        return user.id


def _later(minutes: int = 20) -> datetime:
    """The job's clock, past REFUND_SWEEP_AFTER_MINUTES (15) from refunds made now."""
    return datetime.now(UTC) + timedelta(minutes=minutes)


def _sweep(db: Db, now: datetime, gateway: Callable[[], RefundLookups] | None = None, **settings: Any) -> JobReport:
    job = ProviderReconciliation(get_settings().model_copy(update=settings) if settings else None, uow_factory=db)
    if gateway is not None:
        job.refund_gateway = gateway
    report = run_job(job, now=now, remaining_ms=lambda: 600_000, uow_factory=db, safety_ms=1)
    assert report.complete
    return report


def _refund(order_id: uuid.UUID, admin: uuid.UUID, amount: str, key: str | None = None) -> Any:
    return api_call("POST", f"/admin/orders/{order_id}/refunds", body={"amount": amount, "reason": "other"},
                    as_user=admin, role="ADMIN", headers={"idempotency-key": key} if key else None)  # fmt: skip


def _order(db: Db, order_id: uuid.UUID) -> dict[str, Any]:
    with db() as uow:
        return dict(uow.session.execute(text("SELECT * FROM orders WHERE id = :i"), {"i": order_id}).mappings().one())


def _refund_row(db: Db, refund_id: str) -> dict[str, Any]:
    with db() as uow:
        return dict(uow.session.execute(text("SELECT * FROM refunds WHERE id = :i"), {"i": refund_id}).mappings().one())


def _refund_calls(stripe: StripeStandIn, method: str = "POST") -> list[Any]:
    return [r for r in stripe.requests if r.method == method and r.path.startswith("/v1/refunds")]


class _Gateway:
    """The real adapter (to the stand-in), with a hook before an answer is returned."""

    def __init__(self, before_answer: Callable[[dict[str, Any]], None] | None = None, fail: bool = False) -> None:
        self.inner = adapters.stripe_gateway()
        self.before_answer, self.fail = before_answer, fail

    def retrieve_refund(self, refund_id: str) -> dict[str, Any]:
        if self.fail:
            raise PaymentProviderError("Stripe refused to read the refund", details={"status": 500})
        found = self.inner.retrieve_refund(refund_id)
        if self.before_answer is not None:
            self.before_answer(found)
        return found

    def create_refund(self, request: adapters.RefundRequest) -> adapters.RefundAnswer:
        return self.inner.create_refund(request)

    def list_charge_refunds(self, charge_id: str) -> list[dict[str, Any]]:
        return self.inner.list_charge_refunds(charge_id)


# --- settled from Stripe's own answer ------------------------------------------------------------------------------
def test_a_refund_stripe_settled_without_an_event_is_settled_once(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 20.00 order with an 8.00 refund PENDING, that Stripe has since settled without any event arriving
    order = completed_order(db, buyer, stripe=stripe_api)
    made = _refund(order.order_id, admin, "8").json
    book(stripe_api).refunds[made["provider_refund_id"]]["status"] = "succeeded"
    # When the job runs before the refund is 15 minutes old
    young = _sweep(db, _later(minutes=5))
    # Then it is left alone (its answer or event may still come)
    assert "refunds_settled" not in young.stats and _refund_row(db, made["id"])["status"] == "PENDING"
    # When the job runs later
    report = _sweep(db, _later())
    # Then the refund was read at Stripe by its id and settled: 8.00 refunded, nothing in flight
    assert report.stats.get("refunds_settled") == 1 and "unresolved" not in report.stats
    assert [r.path for r in _refund_calls(stripe_api, "GET")] == [f"/v1/refunds/{made['provider_refund_id']}"]
    assert _refund_row(db, made["id"])["status"] == "SUCCEEDED"
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("8.000"), 0)
    # When the job runs again, and Stripe's refund.updated finally arrives
    again = _sweep(db, _later(minutes=35))
    late = send_stripe(current_event("refund.updated", book(stripe_api).refunds[made["provider_refund_id"]]))
    # Then nothing moves twice
    assert "refunds_settled" not in again.stats and late.status == 200
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("8.000"), 0)


def test_a_refund_failed_at_stripe_releases_its_reservation(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pending 20.00 refund that Stripe failed, its event lost
    order = completed_order(db, buyer, stripe=stripe_api)
    made = _refund(order.order_id, admin, "20").json
    book(stripe_api).refunds[made["provider_refund_id"]].update(status="failed", failure_reason="unknown")
    # When the job runs
    report = _sweep(db, _later())
    # Then the refund is FAILED with Stripe's reason and the order can be refunded again
    assert report.stats.get("refunds_settled") == 1
    refund = _refund_row(db, made["id"])
    assert refund["status"] == "FAILED" and refund["metadata"]["failure_reason"] == "unknown"
    assert _order(db, order.order_id)["refund_pending_amount"] == 0


def test_a_refund_stripe_never_confirmed_is_created_again_with_the_same_key_once(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 5.00 refund whose create Stripe never answered (500 twice: the admin got 503, no Stripe id)
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    first = _refund(order.order_id, admin, "5", key="r-1")
    assert first.status == 503
    with db() as uow:
        refund_id = str(uow.session.execute(text("SELECT id FROM refunds WHERE order_id = :o"),
                                            {"o": order.order_id}).scalar_one())  # fmt: skip
    book(stripe_api).status = "succeeded"  # Stripe settles card refunds at once
    # When the job runs
    report = _sweep(db, _later())
    # Then the create was sent again with the admin call's key, one refund exists at Stripe, and it is settled
    assert report.stats.get("refunds_settled") == 1
    keys = [r.headers["idempotency-key"] for r in _refund_calls(stripe_api)]
    assert set(keys) == {f"tollgate:order-refund:{refund_id}"} and len(book(stripe_api).refunds) == 1
    refund = _refund_row(db, refund_id)
    assert refund["status"] == "SUCCEEDED" and refund["provider_refund_id"] in book(stripe_api).refunds
    assert _order(db, order.order_id)["refunded_amount"] == Decimal("5.000")
    # And the admin's retry with the same key answers that refund, making nothing new
    retry = _refund(order.order_id, admin, "5", key="r-1")
    assert retry.status == 201 and retry.json["status"] == "SUCCEEDED" and len(book(stripe_api).refunds) == 1


def test_a_create_that_reached_stripe_but_lost_its_answer_reaches_the_same_refund(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 6.00 refund that Stripe made (and settled) although its answer never reached the admin call
    order = completed_order(db, buyer, stripe=stripe_api)
    book(stripe_api).status = "succeeded"

    class LostAnswer:
        def __init__(self) -> None:
            self.inner = adapters.stripe_gateway()

        def create_refund(self, request: adapters.RefundRequest) -> adapters.RefundAnswer:
            self.inner.create_refund(request)
            raise PaymentProviderError("Stripe did not answer the refund", details={"status": None})

    from tollgate.services import order_refunds
    from tollgate.services.authz import Actor

    with pytest.raises(PaymentProviderError):
        order_refunds.refund_order(UnitOfWork(), Actor.user(admin, "ADMIN"), order.order_id, amount=Decimal("6"),
                                   reason="other", gateway=LostAnswer())  # type: ignore[arg-type]  # fmt: skip
    assert len(book(stripe_api).refunds) == 1
    # When the job runs
    report = _sweep(db, _later())
    # Then the retry with the same key reached that same refund: one refund at Stripe, settled once
    assert report.stats.get("refunds_settled") == 1 and len(book(stripe_api).refunds) == 1
    (stripe_id,) = book(stripe_api).refunds
    with db() as uow:
        row = uow.session.execute(text("SELECT status, provider_refund_id FROM refunds WHERE order_id = :o"),
                                  {"o": order.order_id}).one()  # fmt: skip
    assert (row.status, row.provider_refund_id) == ("SUCCEEDED", stripe_id)
    assert _order(db, order.order_id)["refunded_amount"] == Decimal("6.000")


def test_past_stripes_key_window_the_charge_list_decides_and_an_absent_refund_fails(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 7.00 refund without a Stripe id, asked for more than a day before the job runs
    order = completed_order(db, buyer, stripe=stripe_api)
    stripe_api.failures.extend([500, 500])
    assert _refund(order.order_id, admin, "7").status == 503
    # When the job runs a day later (Stripe may have forgotten the key: a create could make a twin)
    report = _sweep(db, _later(minutes=24 * 60 + 20))
    # Then no create was sent again; the charge's refunds were listed, and the refund, absent, failed
    assert report.stats.get("refunds_settled") == 1
    assert len(_refund_calls(stripe_api)) == 2  # the admin call and its one automatic retry
    assert any(r.path.startswith("/v1/refunds?") for r in _refund_calls(stripe_api, "GET"))
    with db() as uow:
        status = uow.session.execute(text("SELECT status FROM refunds WHERE order_id = :o"),
                                     {"o": order.order_id}).scalar_one()  # fmt: skip
    assert status == "FAILED" and _order(db, order.order_id)["refund_pending_amount"] == 0


# --- what stays open, races, bounds --------------------------------------------------------------------------------
def test_what_stripe_cannot_settle_is_counted_unresolved(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given three stale refunds: one pending at Stripe, one needing the customer's action, one Stripe cannot read
    orders = [completed_order(db, buyer, stripe=stripe_api) for _ in range(3)]
    made = [_refund(o.order_id, admin, "2").json for o in orders]
    book(stripe_api).refunds[made[1]["provider_refund_id"]]["status"] = "requires_action"
    unreadable = made[2]["provider_refund_id"]

    class Gateway(_Gateway):
        def retrieve_refund(self, refund_id: str) -> dict[str, Any]:
            if refund_id == unreadable:
                raise PaymentProviderError("Stripe refused to read the refund", details={"status": 500})
            return super().retrieve_refund(refund_id)

    # When the job runs
    report = _sweep(db, _later(), gateway=Gateway)
    # Then the pending one is counted as pending at Stripe, the other two `unresolved` (the alarm's figure)
    assert report.stats.get("refunds_pending_at_stripe") == 1 and report.stats.get("unresolved") == 2
    assert "refunds_settled" not in report.stats
    # And every reservation still holds: nothing was released on a guess
    assert all(_order(db, o.order_id)["refund_pending_amount"] == Decimal("2.000") for o in orders)


def test_a_webhook_settling_the_refund_meanwhile_wins_and_nothing_moves_twice(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a stale 9.00 refund that Stripe settled, and its refund.updated delivered while the sweep reads Stripe
    order = completed_order(db, buyer, stripe=stripe_api)
    made = _refund(order.order_id, admin, "9").json
    book(stripe_api).refunds[made["provider_refund_id"]]["status"] = "succeeded"
    delivered: list[Any] = []

    def webhook_first(found: dict[str, Any]) -> None:
        delivered.append(send_stripe(current_event("refund.updated", found)))

    # When the job runs
    report = _sweep(db, _later(), gateway=lambda: _Gateway(before_answer=webhook_first))
    # Then the webhook settled it, the sweep found it settled, and 9.00 is refunded once
    assert delivered[0].json["status"] == "processed"
    assert report.stats.get("refunds_already_settled") == 1 and "refunds_settled" not in report.stats
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal("9.000"), 0)


def test_the_sweep_goes_in_bounded_batches_and_settles_every_stale_refund(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given five stale refunds that Stripe settled, and a batch of two
    orders = [completed_order(db, buyer, stripe=stripe_api) for _ in range(5)]
    for order in orders:
        made = _refund(order.order_id, admin, "1").json
        book(stripe_api).refunds[made["provider_refund_id"]]["status"] = "succeeded"
    # When the job runs
    report = _sweep(db, _later(), refund_sweep_batch_size=2)
    # Then all five are settled, two (at most) a step
    assert report.stats.get("refunds_settled") == 5
    assert all(_order(db, o.order_id)["refunded_amount"] == Decimal("1.000") for o in orders)


def test_a_swept_pack_refund_leaves_the_claw_back_to_the_charge_event(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pack order of 100 credits with a stale full refund that Stripe settled, no event delivered
    checkout = pack_checkout(catalogue, buyer)
    assert send_stripe(checkout).json["status"] == "processed"
    with db() as uow:
        purchase_id = uow.session.execute(text("SELECT id FROM purchases")).scalar_one()
    order = completed_order(
        db, buyer, unit_price=Decimal("5.00"), purchase_id=purchase_id, pack_id=catalogue.pack_id,
        payment_intent=checkout["data"]["object"]["payment_intent"], stripe=stripe_api,
    )  # fmt: skip
    made = _refund(order.order_id, admin, "5").json
    book(stripe_api).refunds[made["provider_refund_id"]]["status"] = "succeeded"
    # When the job runs
    report = _sweep(db, _later())
    # Then the order's refund is settled, and no credits moved outside the purchase's claw-back path
    assert report.stats.get("refunds_settled") == 1
    assert _order(db, order.order_id)["status"] == "REFUNDED"
    assert balance(db, buyer) == Decimal("100") and count(db, "credit_transactions", "type = 'clawback'") == 0
    # When the charge's charge.refunded arrives (late, or replayed by the job's event phase)
    pi = checkout["data"]["object"]["payment_intent"]
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    # Then the credits are clawed back once, and the order's money is not counted twice
    assert balance(db, buyer) == 0 and count(db, "credit_transactions", "type = 'clawback'") == 1
    assert _order(db, order.order_id)["refunded_amount"] == Decimal("5.000")
