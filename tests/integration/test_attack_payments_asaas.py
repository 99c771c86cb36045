"""Attacks on the Asaas flow: identical checkouts racing, calls failing mid-way, charges reporting less than the
item's price, webhook token tricks, hostile bodies and accounts that may not buy."""

# ruff: noqa: F403, F405
from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.integration.test_payments_asaas import (
    ASAAS_TOKEN,
    CPF,
    Brl,
    asaas_api,
    asaas_env,
    brl,
    buy_pack,
    checkout,
    send_asaas,
)
from tests.integration.test_payments_pack_orders import lock_probe
from tests.payments_support import *
from tests.provider_standins import AsaasStandIn
from tests.support import make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import CheckoutInProgress
from tollgate.payments.asaas import AsaasAdapter, Reference
from tollgate.services import asaas_checkout
from tollgate.services.billing import CheckoutResult

__all__ = ["asaas_api", "asaas_env", "brl"]  # fixtures used by name below


class RacingGateway(AsaasAdapter):
    """The real adapter, holding every look-up until `parties` callers made one (or a short timeout): two
    checkouts that both reach Asaas then both see no charge, the window a duplicate charge is made in."""

    def __init__(self, parties: int) -> None:
        super().__init__(get_settings())
        self._barrier = threading.Barrier(parties, timeout=2)

    def _wait(self) -> None:
        # A broken barrier: the other caller never looked up, it made no call at all.
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait()

    def find_payment(self, external_reference: str) -> dict[str, Any] | None:
        self._wait()
        return super().find_payment(external_reference)

    def find_subscription(self, external_reference: str) -> dict[str, Any] | None:
        self._wait()
        return super().find_subscription(external_reference)


def race(db: Callable[[], UnitOfWork], user_id: uuid.UUID, **kwargs: Any) -> list[CheckoutResult | Exception]:
    gateway = RacingGateway(2)
    results: list[CheckoutResult | Exception] = []

    def run() -> None:
        try:
            results.append(
                asaas_checkout.create_checkout(
                    db(), user_id, success_url="https://app.example.com/ok", gateway=gateway, **kwargs
                )
            )
        except Exception as exc:  # the test inspects what each caller got
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def linked_buyer(api: AsaasStandIn, brl: Brl, buyer: uuid.UUID) -> None:
    """A first checkout (no key) makes and links the buyer's Asaas customer."""
    buy_pack(api, brl, buyer)


@pytest.mark.parametrize("kind", ["pack", "plan"])
def test_two_identical_checkouts_at_once_make_one_asaas_charge(db, asaas_api, brl, buyer, kind):
    # Given a buyer whose Asaas customer exists
    linked_buyer(asaas_api, brl, buyer)
    before_payments, before_subs = len(asaas_api.payments), len(asaas_api.subscriptions)
    item = brl.pack_id if kind == "pack" else brl.plan_id
    # When two checkouts of the same item with the same Idempotency-Key run at the same moment
    results = race(db, buyer, kind=kind, item_id=item, idempotency_key="double-click")
    # Then Asaas holds exactly one new charge (or subscription)
    made = [r for r in results if isinstance(r, CheckoutResult)]
    assert len(results) == 2 and made, results
    if kind == "pack":
        assert len(asaas_api.payments) == before_payments + 1
    else:
        assert len(asaas_api.subscriptions) == before_subs + 1
    # And the other caller got the same charge, or was told the checkout is in progress
    assert len({r.session_id for r in made}) == 1
    assert all(isinstance(r, CheckoutResult | CheckoutInProgress) for r in results), results
    # And a retry afterwards answers that charge without a new call to create one
    creates = sum(1 for r in asaas_api.requests if r.method == "POST")
    again = checkout(buyer, {"kind": kind, "item_id": str(item)}, key="double-click")
    assert again.status == 200 and again.json["session_id"] == made[0].session_id
    assert sum(1 for r in asaas_api.requests if r.method == "POST") == creates


def test_a_checkout_in_progress_answers_409_and_calls_nothing(db, asaas_api, brl, buyer):
    # Given a checkout with this key that claimed its charge and has not finished (its call still running)
    linked_buyer(asaas_api, brl, buyer)
    seen = len(asaas_api.requests)
    body = {"kind": "pack", "item_id": str(brl.pack_id)}
    reference = Reference(
        "pack", buyer.hex, brl.pack_id.hex, None, asaas_checkout._nonce(buyer, "pack", brl.pack_id, None, "k-slow")
    ).encode()
    assert asaas_checkout._claim(db(), buyer, reference) is None
    # When the same checkout comes again
    response = checkout(buyer, body, key="k-slow")
    # Then it is a 409 the client may retry, and Asaas was not called
    assert (response.status, response.error_code) == (409, "checkout_in_progress")
    assert len(asaas_api.requests) == seen


def test_a_failed_asaas_call_frees_the_claim_and_the_retry_makes_one_charge(db, asaas_api, brl, buyer):
    # Given a buyer whose Asaas customer exists, and Asaas failing the next call
    linked_buyer(asaas_api, brl, buyer)
    before = len(asaas_api.payments)
    asaas_api.failures.append(500)
    body = {"kind": "pack", "item_id": str(brl.pack_id)}
    # When the checkout fails, then is retried with the same key
    failed = checkout(buyer, body, key="k-flaky")
    retried = checkout(buyer, body, key="k-flaky")
    # Then the failure is a provider error, the retry succeeds, and one charge exists
    assert failed.status in (502, 503) and failed.error_code == "payment_provider_error"
    assert retried.status == 200, retried.body
    assert len(asaas_api.payments) == before + 1
    with db() as uow:
        claims = uow.session.execute(text("SELECT session_id FROM asaas_checkout_claims")).scalars().all()
    assert claims == [retried.json["session_id"]]


# --- charges that report less than the price ----------------------------------------------------------------------
def test_a_pack_charge_lowered_below_its_original_value_grants_nothing(db, asaas_api, brl, buyer):
    # Given a pack charge whose value was lowered to 1.00 while `originalValue` still shows the price
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    payment.update(value=1.0, originalValue=25.0, netValue=0.97)
    # When Asaas reports it received
    response = send_asaas(asaas_api.event("PAYMENT_RECEIVED", payment))
    # Then it is rejected as a mismatch and no credits are granted
    assert response.status == 200 and response.json["status"] == "rejected", response.body
    assert balance(db, buyer) == 0


def test_a_pack_charge_with_interest_added_still_grants(db, asaas_api, brl, buyer):
    # Given a boleto paid late: Asaas added interest to `value`, `originalValue` is the price
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    payment.update(value=25.75, originalValue=25.0, interestValue=0.75)
    # When Asaas reports it received
    response = send_asaas(asaas_api.event("PAYMENT_RECEIVED", payment))
    # Then the pack is granted
    assert response.json["status"] == "processed", response.body
    assert balance(db, buyer) == Decimal("200")


def test_a_subscription_charge_lowered_below_the_plan_price_grants_no_allowance(db, asaas_api, brl, buyer):
    # Given a monthly plan checkout (the subscription is known) whose first charge was lowered to 1.00
    response = checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF}, key="p-low")
    assert response.status == 200, response.body
    sub = asaas_api.subscriptions[response.json["session_id"]]
    created = send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub))
    assert created.json["status"] == "processed", created.body
    [charge] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    charge = asaas_api.settle(charge["id"])
    charge.update(value=1.0, originalValue=49.9)
    # When Asaas reports it received
    paid = send_asaas(asaas_api.event("PAYMENT_RECEIVED", charge))
    # Then it is rejected, no allowance is granted and the user stays FREE
    assert paid.json["status"] == "rejected", paid.body
    assert balance(db, buyer) == 0
    with db() as uow:
        tier = uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": buyer}).scalar_one()
    assert tier == "FREE"


# --- the webhook token ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "token",
    [
        "",
        " ",
        ASAAS_TOKEN + "x",
        ASAAS_TOKEN[:-1],
        " " + ASAAS_TOKEN,
        f"wrong-token-of-some-length-000000,{ASAAS_TOKEN}",
        f"{ASAAS_TOKEN},{ASAAS_TOKEN}",
        ASAAS_TOKEN.upper(),
    ],
)
def test_near_misses_of_the_webhook_token_are_refused(db, asaas_api, brl, buyer, token):
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    # When the event comes with a token that is empty, longer, shorter, padded, a list, or another case
    response = send_asaas(asaas_api.event("PAYMENT_RECEIVED", payment), token=token)
    # Then it is refused and nothing is stored or granted
    assert (response.status, response.error_code) == (400, "invalid_signature")
    assert webhook_rows(db) == [] and balance(db, buyer) == 0


def test_during_a_rotation_each_configured_token_works_alone(db, asaas_api, brl, buyer, monkeypatch):
    # Given two tokens configured (a rotation)
    new = "the-next-asaas-webhook-token-0123456789"
    monkeypatch.setenv("ASAAS_WEBHOOK_TOKEN", f"{ASAAS_TOKEN},{new}")
    get_settings.cache_clear()
    first = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    second = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    # When one event comes with the old token and another with the new one, and a third with both joined
    old_ok = send_asaas(asaas_api.event("PAYMENT_RECEIVED", first), token=ASAAS_TOKEN)
    new_ok = send_asaas(asaas_api.event("PAYMENT_RECEIVED", second), token=new)
    joined = send_asaas(asaas_api.event("PAYMENT_RECEIVED", second), token=f"{ASAAS_TOKEN},{new}")
    # Then each token works alone, and the joined list is refused
    assert old_ok.json["status"] == new_ok.json["status"] == "processed"
    assert (joined.status, joined.error_code) == (400, "invalid_signature")
    assert balance(db, buyer) == Decimal("400")


def test_a_deeply_nested_body_with_the_right_token_is_a_client_error(db, asaas_env):
    # Given a body nested far deeper than any Asaas event
    body = '{"id": "evt_deep", "event": "PAYMENT_RECEIVED", "payment": ' + "[" * 100_000 + "]" * 100_000 + "}"
    # When it arrives with the right token
    response = send_asaas(body)
    # Then it is refused as a bad request, not a server error, and nothing is stored
    assert 400 <= response.status < 500, response.body
    assert webhook_rows(db) == []


BAD_PAYMENTS: list[Any] = [None, "pay_1", [], {"value": 25}]


def test_a_payment_event_without_a_usable_payment_is_rejected_not_failed(db, asaas_env):
    # When events carry a payment that is not an object, or has no id
    answers = [
        send_asaas({"id": f"evt_bad_{n}", "event": "PAYMENT_RECEIVED", "payment": payment})
        for n, payment in enumerate(BAD_PAYMENTS)
    ]
    # Then each is stored rejected (2xx: no retry can fix it), none is a 5xx
    assert [a.status for a in answers] == [200] * 4
    assert {a.json["status"] for a in answers} == {"rejected"}


# --- who may buy ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", ["SUSPENDED"])
def test_a_suspended_account_cannot_check_out_through_asaas(db, asaas_api, brl, buyer, status):
    # Given a suspended account
    with db() as uow:
        uow.session.execute(text("UPDATE users SET status = :s WHERE id = :u"), {"s": status, "u": buyer})
        uow.commit()
    # When it checks out a pack and a plan through Asaas
    pack = checkout(buyer, {"kind": "pack", "item_id": str(brl.pack_id), "tax_id": CPF}, key="s-1")
    plan = checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF}, key="s-2")
    # Then both are refused and Asaas heard nothing
    assert (pack.status, pack.error_code) == (403, "account_disabled")
    assert (plan.status, plan.error_code) == (403, "account_disabled")
    assert asaas_api.requests == []


def test_a_charge_naming_another_user_in_its_reference_credits_that_user_not_the_payer(db, asaas_api, brl, buyer):
    # Given a charge made by the buyer's checkout, paid from another Asaas customer (a friend paying the link)
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    with db() as uow:
        other = make_user(uow.session, asaas_customer_id="cus_other").id
        uow.commit()
    payment["customer"] = "cus_other"
    # When Asaas reports it received
    response = send_asaas(asaas_api.event("PAYMENT_RECEIVED", payment))
    # Then the credits go to the checkout's buyer (the reference Tollgate wrote), never to the other account
    assert response.json["status"] == "processed", response.body
    assert balance(db, buyer) == Decimal("200") and balance(db, other) == 0


# --- deliveries at once --------------------------------------------------------------------------------------------
def deliver_at_once(events: list[dict[str, Any]]) -> list[int]:
    statuses: list[int] = []

    def deliver(event: dict[str, Any]) -> None:
        statuses.append(send_asaas(event).status)

    threads = [threading.Thread(target=deliver, args=(event,)) for event in events]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return statuses


def test_one_event_delivered_twice_at_once_grants_once(db, asaas_api, brl, buyer):
    # Given one PAYMENT_RECEIVED event
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    event = asaas_api.event("PAYMENT_RECEIVED", payment)
    # When Asaas delivers it twice at the same moment
    statuses = deliver_at_once([event, event])
    # Then both are answered 2xx and the pack is granted once
    assert statuses == [200, 200]
    assert balance(db, buyer) == Decimal("200") and count(db, "purchases", "provider = 'asaas'") == 1


def test_confirmed_and_received_of_one_charge_at_once_grant_once(db, asaas_api, brl, buyer):
    # Given a card charge: CONFIRMED and RECEIVED are two events of the same payment
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    events = [asaas_api.event("PAYMENT_CONFIRMED", payment), asaas_api.event("PAYMENT_RECEIVED", payment)]
    # When both arrive at the same moment (one may be asked to retry), then Asaas retries what failed
    deliver_at_once(events)
    assert [send_asaas(event).status for event in events] == [200, 200]
    # Then the pack is granted once
    assert balance(db, buyer) == Decimal("200") and count(db, "purchases", "provider = 'asaas'") == 1
    assert ledger_is_consistent(db, buyer)


# --- no Asaas call under a lock ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["pack", "plan"])
def test_no_asaas_call_of_a_checkout_runs_while_a_transaction_holds_locks(db, asaas_api, brl, buyer, kind):
    # Given a probe that looks, at every call Asaas receives, for transactions holding row or table locks
    seen = lock_probe(asaas_api)
    item = brl.pack_id if kind == "pack" else brl.plan_id
    # When a first checkout (customer created) with an Idempotency-Key runs, and is retried
    first = checkout(buyer, {"kind": kind, "item_id": str(item), "tax_id": CPF}, key=f"probe-{kind}")
    again = checkout(buyer, {"kind": kind, "item_id": str(item)}, key=f"probe-{kind}")
    # Then every call was made with no lock held by any transaction
    assert first.status == again.status == 200, first.body
    assert seen and all(tables == [] for _, tables in seen), seen
