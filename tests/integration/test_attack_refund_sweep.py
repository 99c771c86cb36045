"""Attacks on the refund sweep and on a pack refund that Stripe fails (after it succeeded, or while pending): every
delivery order of refund.created / refund.updated(succeeded) / charge.refunded (current and 2020-08-27 shapes) /
refund.failed, with replays and stale snapshots sent again as new events; two partial refunds of one pack with one
failing; the sweep racing the webhook on real threads; a refund failing after the buyer spent what came back.
Whatever the order, the buyer's credits are what the money still refunded implies, and the ledger reconciles."""

# ruff: noqa: F401, F811
from __future__ import annotations

import copy
import itertools
import random
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.commerce_refunds_standin import (
    book,
    charge_refunded_2020,
    charge_refunded_current,
    completed_order,
    current_event,
    fail_refund,
    refund_object,
)
from tests.integration.test_commerce_refund_reversal import _mismatches, _order, _pack_order, _purchase
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
from tollgate.db import UnitOfWork
from tollgate.jobs import JobReport, run_job
from tollgate.jobs.provider_reconciliation import ProviderReconciliation

Db = Callable[[], UnitOfWork]
EVENTS = ("created", "succeeded", "charge", "failed")


@pytest.fixture
def admin(db: Db) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        return user.id


def _refund(order_id: uuid.UUID, admin: uuid.UUID, amount: str | None = None) -> str:
    body: dict[str, Any] = {"reason": "requested_by_customer", **({"amount": amount} if amount else {})}
    made = api_call("POST", f"/admin/orders/{order_id}/refunds", body=body, as_user=admin, role="ADMIN")
    assert made.status == 201, made.json
    return str(made.json["provider_refund_id"])


def _status(stripe: StripeStandIn, refund_id: str, status: str) -> dict[str, Any]:
    refund = book(stripe).refunds[refund_id]
    refund["status"] = status
    return copy.deepcopy(refund)


def _charge_event(shape: str, order: Any, pi: str, refunds: list[dict[str, Any]]) -> dict[str, Any]:
    """charge.refunded as Stripe sent it when `refunds` stood as given (amount_refunded counts the live ones)."""
    if shape == "current":
        live = sum(int(r["amount"]) for r in refunds if r["status"] not in {"failed", "canceled"})
        return charge_refunded_current(order.charge, pi, amount=500, refunded=live)
    return charge_refunded_2020(order.charge, pi, amount=500, refunds=copy.deepcopy(refunds))


def _sweep(db: Db, now: datetime) -> JobReport:
    report = run_job(ProviderReconciliation(uow_factory=db), now=now, remaining_ms=lambda: 600_000, uow_factory=db,
                     safety_ms=1)  # fmt: skip
    assert report.complete
    return report


def _fresh(event: dict[str, Any]) -> dict[str, Any]:
    """The same object in a new event (a new id): Stripe sending a stale snapshot again, not a redelivery."""
    return {**copy.deepcopy(event), "id": f"evt_{uuid.uuid4().hex[:24]}"}


def _settled_back(db: Db, buyer: uuid.UUID, order: Any, credits: Decimal, refunded: Decimal) -> None:
    """The buyer holds `credits`, the order and the purchase count `refunded` of its 5.00, the ledger reconciles."""
    assert balance(db, buyer) == credits
    row, purchase = _order(db, order.order_id), _purchase(db, buyer)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (refunded, 0)
    assert purchase["refunded_amount"] == refunded
    assert purchase["credits_clawed_back"] == Decimal(100) - credits
    assert _mismatches(db) == 0 and ledger_is_consistent(db, buyer)


# --- one full refund that fails, in every delivery order -----------------------------------------------------------
@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
@pytest.mark.parametrize("order_of", list(itertools.permutations(EVENTS)), ids="-".join)
def test_a_failed_full_refund_leaves_the_credits_whatever_the_delivery_order(
    db: Db,
    stripe_api: StripeStandIn,
    catalogue: Catalogue,
    buyer: uuid.UUID,
    admin: uuid.UUID,
    shape: str,
    order_of: tuple[str, ...],
) -> None:
    # Given a 5.00 pack of 100 credits refunded in full, whose refund went pending -> succeeded -> failed at Stripe
    # before any of its events was delivered (charge.refunded's snapshot taken while it counted)
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    events = {
        "created": current_event("refund.created", _status(stripe_api, refund_id, "pending")),
        "succeeded": current_event("refund.updated", _status(stripe_api, refund_id, "succeeded")),
    }
    events["charge"] = _charge_event(shape, order, pi, [book(stripe_api).refunds[refund_id]])
    events["failed"] = current_event("refund.failed", fail_refund(stripe_api, refund_id))
    # When they arrive in this order, then all again (redeliveries), then the stale ones again as new events
    for name in order_of:
        answer = send_stripe(events[name])
        assert answer.status == 200, (name, answer.json)
    for name in order_of:
        assert send_stripe(events[name]).status == 200
    for name in order_of:
        assert send_stripe(_fresh(events[name])).status == 200
    # Then the buyer holds the 100 credits, nothing counts as refunded, and the ledger reconciles
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))
    assert _order(db, order.order_id)["status"] == "COMPLETED"
    assert count(db, "credit_grants", "source_key LIKE 'stripe:refund-failed:%' AND amount > 0") <= 1


@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
def test_a_stale_charge_refunded_after_the_failure_does_not_claw_again(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID, shape: str
) -> None:
    # Given a full refund that succeeded, its charge.refunded applied (100 clawed), then failed (100 returned)
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    assert send_stripe(current_event("refund.updated", _status(stripe_api, refund_id, "succeeded"))).status == 200
    charge = _charge_event(shape, order, pi, [book(stripe_api).refunds[refund_id]])
    assert send_stripe(charge).json["status"] == "processed"
    assert balance(db, buyer) == 0
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, refund_id))).status == 200
    assert balance(db, buyer) == Decimal(100)
    # When Stripe's old snapshot of the charge (still counting the refund) arrives again as a new event
    assert send_stripe(_fresh(charge)).status == 200
    # Then nothing is clawed again: the failed refund's money is not refunded
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))


def test_a_refund_failing_while_pending_returns_what_charge_refunded_clawed(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a full refund still pending at Stripe whose charge.refunded already clawed the 100 credits
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    assert balance(db, buyer) == 0 and _order(db, order.order_id)["refund_pending_amount"] == Decimal(5)
    # When the refund fails without ever succeeding
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, refund_id))).status == 200
    # Then the credits come back: the money never left
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))


# --- two partial refunds of one pack, one failing ------------------------------------------------------------------
def _two_refunds(
    db: Db, stripe: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID, shape: str
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """2.00 (first) and 3.00 (second) refunded of a 5.00 pack; the first fails after it succeeded. The events
    Stripe sent along the way, each snapshot as it stood then."""
    order, pi = _pack_order(db, stripe, catalogue, buyer)
    first, second = _refund(order.order_id, admin, "2"), _refund(order.order_id, admin, "3")
    refunds = book(stripe).refunds
    events = {"first_ok": current_event("refund.updated", _status(stripe, first, "succeeded"))}
    events["charge_first"] = _charge_event(shape, order, pi, [refunds[first]])
    events["second_ok"] = current_event("refund.updated", _status(stripe, second, "succeeded"))
    events["charge_both"] = _charge_event(shape, order, pi, [refunds[first], refunds[second]])
    events["first_failed"] = current_event("refund.failed", fail_refund(stripe, first))
    events["charge_after"] = _charge_event(shape, order, pi, [refunds[first], refunds[second]])
    return order, events


ORDERINGS = [list(p) for p in random.Random(13).sample(list(itertools.permutations(range(6))), 10)]


@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
@pytest.mark.parametrize("ordering", ORDERINGS, ids=lambda o: "".join(map(str, o)))
def test_two_partial_refunds_one_failing_leave_what_the_other_implies(
    db: Db,
    stripe_api: StripeStandIn,
    catalogue: Catalogue,
    buyer: uuid.UUID,
    admin: uuid.UUID,
    shape: str,
    ordering: list[int],
) -> None:
    # Given a 5.00 pack refunded 2.00 then 3.00, the 2.00 failing after it succeeded
    order, events = _two_refunds(db, stripe_api, catalogue, buyer, admin, shape)
    names = list(events)
    # When the events arrive in this order, then again, then the snapshots again as new events
    for i in ordering:
        assert send_stripe(events[names[i]]).status == 200
    for i in ordering:
        assert send_stripe(events[names[i]]).status == 200
        assert send_stripe(_fresh(events[names[i]])).status == 200
    # Then 3.00 counts as refunded and 60 of the 100 credits are clawed, once
    _settled_back(db, buyer, order, Decimal(40), Decimal(3))


# --- the sweep -----------------------------------------------------------------------------------------------------
def test_the_sweep_settles_a_refund_that_failed_after_its_claw_back(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a full pack refund whose charge.refunded clawed the credits, then failed at Stripe with no event sent
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    fail_refund(stripe_api, refund_id)
    # When the sweep runs, twice
    report = _sweep(db, datetime.now(UTC) + timedelta(minutes=20))
    assert report.stats.get("refunds_settled") == 1
    assert "refunds_settled" not in _sweep(db, datetime.now(UTC) + timedelta(minutes=40)).stats
    # Then the refund is FAILED and the credits are back, once
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))


@pytest.mark.parametrize("webhook", ["refund.failed", "charge.refunded"])
def test_the_sweep_racing_the_webhook_moves_the_credits_once(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID, webhook: str
) -> None:
    # Given a full pack refund, clawed back, that failed at Stripe
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    failed = fail_refund(stripe_api, refund_id)
    event = (
        current_event("refund.failed", failed)
        if webhook == "refund.failed"
        else charge_refunded_current(order.charge, pi, amount=500, refunded=500)  # the old snapshot, a new event
    )
    # When the sweep and the webhook run at the same moment on two threads
    start, errors, answers = threading.Barrier(2), [], []

    def sweep() -> None:
        try:
            start.wait()
            _sweep(db, datetime.now(UTC) + timedelta(minutes=20))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def deliver() -> None:
        try:
            start.wait()
            answers.append(send_stripe(event))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=sweep), threading.Thread(target=deliver)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    if answers[0].status != 200:  # the webhook lost a lock race: Stripe delivers it again
        assert send_stripe(event).status == 200
    # Then the credits came back once and nothing counts as refunded
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))
    assert count(db, "credit_grants", "source_key = :k", k=f"stripe:refund-failed:{refund_id}") == 1


# --- spending what came back ---------------------------------------------------------------------------------------
def test_a_refund_failing_after_the_buyer_spent_the_returned_credits(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a full refund clawed back and failed: the 100 credits returned, then all spent
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    first = _refund(order.order_id, admin)
    assert send_stripe(current_event("refund.updated", _status(stripe_api, first, "succeeded"))).status == 200
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, first))).status == 200
    with db() as uow:
        ledger.charge(uow.session, buyer, operation="chat", amount=Decimal("100"))
        uow.commit()
    # When the order is refunded again, Stripe settles it, and that refund fails as well
    second = _refund(order.order_id, admin)
    assert send_stripe(current_event("refund.updated", _status(stripe_api, second, "succeeded"))).status == 200
    assert send_stripe(charge_refunded_current(order.charge, pi, amount=500, refunded=500)).status == 200
    assert balance(db, buyer) == 0  # nothing left to claw: spent credits stay spent
    assert send_stripe(current_event("refund.failed", fail_refund(stripe_api, second))).status == 200
    # Then no credit is made out of nothing (the second claw took none, so none comes back) and the ledger holds
    assert balance(db, buyer) == 0
    assert count(db, "credit_grants", "source_key = :k AND amount > 0", k=f"stripe:refund-failed:{second}") == 0
    row = _order(db, order.order_id)
    assert (row["status"], row["refunded_amount"], row["refund_pending_amount"]) == ("COMPLETED", 0, 0)
    assert _purchase(db, buyer)["refunded_amount"] == 0
    assert _mismatches(db) == 0 and ledger_is_consistent(db, buyer)


# --- one charge.refunded settling several refunds ------------------------------------------------------------------
def test_one_charge_refunded_settling_two_refunds_counts_both(
    db: Db, stripe_api: StripeStandIn, buyer: uuid.UUID, admin: uuid.UUID
) -> None:
    # Given a 20.00 order with two refunds still PENDING (7.00, 5.00) that Stripe settled, and no refund event sent
    order = completed_order(db, buyer, stripe=stripe_api)
    first, second = _refund(order.order_id, admin, "7"), _refund(order.order_id, admin, "5")
    refunds = [_status(stripe_api, first, "succeeded"), _status(stripe_api, second, "succeeded")]
    # When one 2020-shape charge.refunded embeds both (each settles on its own order lock, one after the other)
    obj = charge_refunded_2020(order.charge, order.payment_intent, amount=2000, refunds=refunds)
    assert send_stripe(obj).json["status"] == "processed"
    # Then both count: the first one's move is not lost when the second re-reads the order
    row = _order(db, order.order_id)
    assert (row["refunded_amount"], row["refund_pending_amount"]) == (Decimal(12), 0)
    assert count(db, "refunds", "order_id = :o AND status = 'SUCCEEDED'", o=order.order_id) == 2


# --- the sweep at every point of the deliveries --------------------------------------------------------------------
@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
@pytest.mark.parametrize("at", range(5))
def test_the_sweep_anywhere_among_the_deliveries_leaves_the_credits(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID, shape: str, at: int
) -> None:
    # Given a full pack refund that went pending -> succeeded -> failed at Stripe, its events not yet delivered
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    events = [current_event("refund.created", _status(stripe_api, refund_id, "pending"))]
    events.append(_charge_event(shape, order, pi, [book(stripe_api).refunds[refund_id]]))
    events.append(current_event("refund.updated", _status(stripe_api, refund_id, "succeeded")))
    events.append(current_event("refund.failed", fail_refund(stripe_api, refund_id)))
    # When the sweep runs at this point of the deliveries (and once more at the end)
    steps: list[dict[str, Any] | None] = [*events]
    steps.insert(at, None)
    for step in steps:
        if step is None:
            _sweep(db, datetime.now(UTC) + timedelta(minutes=20))
        else:
            assert send_stripe(step).status == 200
    _sweep(db, datetime.now(UTC) + timedelta(minutes=40))
    for event in events:
        assert send_stripe(_fresh(event)).status == 200
    # Then the credits are the buyer's and nothing counts as refunded
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))


# --- a refund made in Stripe's dashboard that fails ----------------------------------------------------------------
def _dashboard_refund(stripe: StripeStandIn, order: Any, pi: str, amount: int) -> str:
    """A refund of the charge made in Stripe's dashboard (no Tollgate row, no tollgate_refund_id)."""
    refund = refund_object(f"re_{uuid.uuid4().hex[:24]}", amount=amount, charge=order.charge, payment_intent=pi)
    with book(stripe).lock:
        book(stripe).refunds[refund["id"]] = refund
        book(stripe).charges[pi].refunded += amount
    return str(refund["id"])


@pytest.mark.parametrize("first", ["failed", "charge"])
@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
def test_a_dashboard_refund_that_fails_leaves_the_credits(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, first: str, shape: str
) -> None:
    # Given a 5.00 refund of the pack made in Stripe's dashboard, which succeeded, then failed
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _dashboard_refund(stripe_api, order, pi, 500)
    charge = _charge_event(shape, order, pi, [book(stripe_api).refunds[refund_id]])
    failed = current_event("refund.failed", fail_refund(stripe_api, refund_id))
    # When the failure and the charge's (older) snapshot arrive in either order, then both again as new events
    for event in (failed, charge) if first == "failed" else (charge, failed):
        assert send_stripe(event).status == 200
    for event in (failed, charge):
        assert send_stripe(_fresh(event)).status == 200
    # Then the buyer keeps the 100 credits: the money never left
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))
    assert count(db, "refunds", "provider_refund_id = :r AND status = 'FAILED'", r=refund_id) == 1


@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
def test_the_failure_racing_a_stale_charge_refunded_moves_the_credits_once(
    db: Db, stripe_api: StripeStandIn, catalogue: Catalogue, buyer: uuid.UUID, admin: uuid.UUID, shape: str
) -> None:
    # Given a full pack refund that succeeded and was clawed back, then failed at Stripe
    order, pi = _pack_order(db, stripe_api, catalogue, buyer)
    refund_id = _refund(order.order_id, admin)
    assert send_stripe(current_event("refund.updated", _status(stripe_api, refund_id, "succeeded"))).status == 200
    charge = _charge_event(shape, order, pi, [book(stripe_api).refunds[refund_id]])
    assert send_stripe(charge).status == 200 and balance(db, buyer) == 0
    events = [current_event("refund.failed", fail_refund(stripe_api, refund_id)), _fresh(charge), _fresh(charge)]
    # When the failure and two stale snapshots of the charge arrive at the same moment on three threads
    start, answers = threading.Barrier(len(events)), []

    def deliver(event: dict[str, Any]) -> None:
        start.wait()
        answers.append((event, send_stripe(event)))

    threads = [threading.Thread(target=deliver, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for event, answer in answers:
        if answer.status != 200:  # a lock race lost: Stripe delivers it again
            assert send_stripe(event).status == 200
    # Then the credits came back once and were not clawed again
    _settled_back(db, buyer, order, Decimal(100), Decimal(0))
    assert count(db, "credit_transactions", "type = 'clawback' AND user_id = :u", u=buyer) == 1
