"""A pack order's refund that Stripe fails after it succeeded (the card was closed: the money went back to the
account's balance): the credits its claw-back took come back once, through the ledger, in the transaction that
records the failure; the order and the purchase count the money as not refunded again; replays of the success
and of the failure change nothing; the ledger reconciles; and a later refund claws the returned credits again."""

# ruff: noqa: F401, F811
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
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
    fail_refund,
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
from tollgate import ledger
from tollgate.jobs import run_job
from tollgate.jobs.ledger_jobs import LedgerReconciliation
from tollgate_local.webhooks_cli import stripe_event

Db = Any


@pytest.fixture
def admin(db: Db) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        return user.id


def _pack_order(db: Db, stripe: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID) -> tuple[Any, str]:
    """A 5.00 pack of 100 credits bought through Stripe, granted, and its COMPLETED order."""
    checkout = pack_checkout(catalogue, buyer)
    assert send_stripe(checkout).json["status"] == "processed"
    pi = checkout["data"]["object"]["payment_intent"]
    with db() as uow:
        purchase_id = uow.session.execute(text("SELECT id FROM purchases WHERE user_id = :u"), {"u": buyer}).scalar()
    order = completed_order(
        db, buyer, unit_price=Decimal("5.00"), purchase_id=purchase_id, pack_id=catalogue.pack_id,
        payment_intent=pi, stripe=stripe,
    )  # fmt: skip
    assert balance(db, buyer) == Decimal("100")
    return order, pi


def _refund_succeeds(
    stripe: StripeStandIn, order: Any, pi: str, admin: uuid.UUID, *, refunded: int
) -> tuple[str, list[dict[str, Any]]]:
    """An admin refund of the whole order that Stripe settles: refund.updated succeeded, then charge.refunded (the
    purchase's claw-back). Returns Stripe's refund id and the two events."""
    made = api_call("POST", f"/admin/orders/{order.order_id}/refunds", body={"reason": "requested_by_customer"},
                    as_user=admin, role="ADMIN").json  # fmt: skip
    refund_id = str(made["provider_refund_id"])
    book(stripe).refunds[refund_id]["status"] = "succeeded"
    updated = current_event("refund.updated", book(stripe).refunds[refund_id])
    assert send_stripe(updated).status == 200
    charge = charge_refunded_current(order.charge, pi, amount=500, refunded=refunded)
    assert send_stripe(charge).json["status"] == "processed"
    return refund_id, [updated, charge]


def _order(db: Db, order_id: uuid.UUID) -> dict[str, Any]:
    with db() as uow:
        return dict(uow.session.execute(text("SELECT * FROM orders WHERE id = :i"), {"i": order_id}).mappings().one())


def _purchase(db: Db, user_id: uuid.UUID) -> dict[str, Any]:
    with db() as uow:
        return dict(
            uow.session.execute(text("SELECT * FROM purchases WHERE user_id = :u"), {"u": user_id}).mappings().one()
        )


def _mismatches(db: Db) -> int:
    report = run_job(LedgerReconciliation(), now=datetime.now(UTC) + timedelta(days=1), remaining_ms=lambda: 600_000,
                     uow_factory=db, safety_ms=1)  # fmt: skip
    assert report.complete
    return count(db, "ledger_mismatches")


def _failed_2020(refund: dict[str, Any]) -> dict[str, Any]:
    """`charge.refund.updated` at 2020-08-27 (older endpoints): the refund itself, failed."""
    obj = {k: v for k, v in refund.items() if k not in {"destination_details", "next_action", "pending_reason"}}
    return stripe_event("charge.refund.updated", obj, api_version="2020-08-27")


@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
def test_a_refund_failing_after_success_returns_the_clawed_credits_once(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID, shape: str
) -> None:
    # Given a pack order refunded in full and settled: its 100 credits clawed back
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id, succeeded = _refund_succeeds(stripe_api, order, pi, admin, refunded=500)
    assert balance(db, buyer) == 0 and _order(db, order.order_id)["status"] == "REFUNDED"
    # When Stripe fails the refund after it succeeded (current: refund.failed; 2020: charge.refund.updated)
    failed_obj = fail_refund(stripe_api, refund_id)
    failed = current_event("refund.failed", failed_obj) if shape == "current" else _failed_2020(failed_obj)
    answer = send_stripe(failed)
    # Then the 100 credits are back, in one grant keyed by the Stripe refund
    assert answer.status == 200 and answer.json["status"] == "processed", answer.json
    assert balance(db, buyer) == Decimal("100")
    key = f"stripe:refund-failed:{refund_id}"
    assert count(db, "credit_grants", "source_key = :k AND amount = 100 AND kind = 'purchase'", k=key) == 1
    # And the order counts nothing refunded and is COMPLETED again; the refund is FAILED with what came back
    row = _order(db, order.order_id)
    assert (row["status"], row["payment_status"], row["refunded_amount"], row["refund_pending_amount"]) == (
        "COMPLETED", "SUCCEEDED", 0, 0,
    )  # fmt: skip
    with db() as uow:
        refund = uow.session.execute(
            text("SELECT status, metadata FROM refunds WHERE order_id = :o"), {"o": order.order_id}
        ).one()
    assert refund.status == "FAILED" and refund.metadata["credits_returned"] == "100.0000"
    assert refund.metadata["failed_after_success"] is True
    # And the purchase counts its money as paid again
    purchase = _purchase(db, buyer)
    assert (purchase["status"], purchase["refunded_amount"], purchase["credits_clawed_back"]) == ("completed", 0, 0)
    # When every event is delivered again, and the success and the failure come again as new events
    assert send_stripe(failed).json["duplicate"] is True
    assert all(send_stripe(event).json["duplicate"] is True for event in succeeded)
    assert send_stripe(current_event("refund.updated", {**failed_obj, "status": "succeeded"})).status == 200
    assert send_stripe(current_event("refund.updated", failed_obj)).status == 200
    assert send_stripe(current_event("refund.failed", failed_obj)).status == 200
    # Then nothing moved again: 100 credits, one returned grant, one claw-back, the order as it was
    assert balance(db, buyer) == Decimal("100")
    assert count(db, "credit_grants", "source_key LIKE 'stripe:refund-failed:%'") == 1
    assert count(db, "credit_transactions", "type = 'clawback' AND user_id = :u", u=buyer) == 1
    assert _order(db, order.order_id)["refunded_amount"] == 0
    # And the ledger reconciliation job finds no mismatch
    assert _mismatches(db) == 0 and ledger_is_consistent(db, buyer)


def test_only_what_the_claw_back_took_comes_back_when_credits_were_spent(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pack order whose buyer spent 70 of its 100 credits, then refunded in full: the claw-back took 30
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    with db() as uow:
        ledger.charge(uow.session, buyer, operation="chat", amount=Decimal("70"))
        uow.commit()
    refund_id, _ = _refund_succeeds(stripe_api, order, pi, admin, refunded=500)
    assert balance(db, buyer) == 0
    assert _purchase(db, buyer)["credits_clawed_back"] == Decimal("30")
    # When Stripe fails the refund after it succeeded
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, refund_id))).status == 200
    # Then 30 credits come back, not 100: the 70 spent stay spent
    assert balance(db, buyer) == Decimal("30")
    assert count(db, "credit_grants", "source_key = :k AND amount = 30", k=f"stripe:refund-failed:{refund_id}") == 1
    assert _mismatches(db) == 0


def test_a_later_refund_claws_the_returned_credits_back(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pack order refunded, clawed back, then failed at Stripe: its 100 credits returned
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    first, _ = _refund_succeeds(stripe_api, order, pi, admin, refunded=500)
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, first))).status == 200
    assert balance(db, buyer) == Decimal("100")
    # When the admin refunds the order again and Stripe settles it (the charge's refunded amount is 5.00 again)
    second, _ = _refund_succeeds(stripe_api, order, pi, admin, refunded=500)
    # Then the returned credits are clawed back: the money went back once, and so did the credits
    assert second != first
    assert balance(db, buyer) == 0
    assert _order(db, order.order_id)["status"] == "REFUNDED"
    purchase = _purchase(db, buyer)
    assert (purchase["status"], purchase["credits_clawed_back"]) == ("refunded", Decimal("100"))
    assert _mismatches(db) == 0


def test_a_failed_refund_of_an_order_that_was_never_counted_returns_nothing(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a pack order whose refund succeeded at Stripe but whose charge.refunded (the claw-back) never came
    order, _ = _pack_order(db, stripe_api, catalogue, buyer)
    made = api_call("POST", f"/admin/orders/{order.order_id}/refunds", body={"reason": "duplicate"},
                    as_user=admin, role="ADMIN").json  # fmt: skip
    refund_id = str(made["provider_refund_id"])
    book(stripe_api).refunds[refund_id]["status"] = "succeeded"
    assert send_stripe(current_event("refund.updated", book(stripe_api).refunds[refund_id])).status == 200
    assert balance(db, buyer) == Decimal("100")  # nothing was clawed yet
    # When the refund fails
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, refund_id))).status == 200
    # Then no credits are made out of nothing: the balance stays 100 and no returned grant exists
    assert balance(db, buyer) == Decimal("100")
    assert count(db, "credit_grants", "source_key LIKE 'stripe:refund-failed:%'") == 0
    assert _order(db, order.order_id)["status"] == "COMPLETED"
