"""Asaas: checkout (pack and plan) against the Asaas stand-in, webhooks authenticated by `asaas-access-token`,
grants once per charge, refunds / chargebacks clawed back once, overdue, subscriptions, out-of-order deliveries,
failures rolled back, and ProviderReconciliation repairing a charge no webhook brought."""

# ruff: noqa: F403, F405
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from tests.payments_support import *
from tests.provider_standins import AsaasStandIn
from tests.support import ApiResponse, api_call, make_user
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import WebhookProcessingFailed
from tollgate.jobs import run_job
from tollgate.jobs.provider_reconciliation import ProviderReconciliation
from tollgate.models.credits import CreditPack, Plan
from tollgate.payments.asaas import Reference
from tollgate.services.webhooks import receive_webhook

ASAAS_TOKEN = "asaas-webhook-token-for-the-tests-0123456789"
CPF = "529.982.247-25"  # a valid CPF (check digits), the kind Asaas's sandbox accepts
URLS = {"success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/cancel"}


@pytest.fixture
def asaas_env(monkeypatch: pytest.MonkeyPatch, payments_env: None) -> Iterator[None]:
    monkeypatch.setenv("ASAAS_WEBHOOK_TOKEN", ASAAS_TOKEN)
    monkeypatch.delenv("ASAAS_API_KEY", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def asaas_api(monkeypatch: pytest.MonkeyPatch, asaas_env: None) -> Iterator[AsaasStandIn]:
    server = AsaasStandIn().start()
    monkeypatch.setenv("ASAAS_API_KEY", server.api_key)
    monkeypatch.setenv("ASAAS_API_BASE", server.api_base)
    get_settings.cache_clear()
    yield server
    server.stop()
    get_settings.cache_clear()


class Brl:
    def __init__(self, pack: CreditPack, plan: Plan) -> None:
        self.pack_id, self.plan_id = pack.id, plan.id


@pytest.fixture
def brl(db: Callable[[], UnitOfWork]) -> Brl:
    with db() as uow:
        pack = CreditPack(name="Pacote 200", credits=Decimal("200"), price=Decimal("25.00"), currency="brl",
                          expires_after_days=365, active=True)  # fmt: skip
        plan = Plan(tier="PRO", name="Pro", monthly_credits=Decimal("1000"), rollover="none",
                    price_monthly=Decimal("49.90"), price_yearly=Decimal("499.00"), currency="brl", active=True,
                    features=[])  # fmt: skip
        uow.session.add_all([pack, plan])
        uow.session.flush()
        cat = Brl(pack, plan)
        uow.commit()
    return cat


def send_asaas(payload: dict[str, Any] | str, *, token: str | None = ASAAS_TOKEN) -> ApiResponse:
    body = payload if isinstance(payload, str) else json.dumps(payload)
    headers = {"asaas-access-token": token} if token is not None else {}
    return api_call("POST", "/webhooks/asaas", raw_body=body.encode(), headers=headers)


def checkout(user_id: uuid.UUID, body: dict[str, Any], key: str | None = None) -> ApiResponse:
    headers = {"idempotency-key": key} if key else {}
    return api_call("POST", "/billing/checkout", as_user=user_id, headers=headers,
                    body={"provider": "asaas", **URLS, **body})  # fmt: skip


def buy_pack(api: AsaasStandIn, brl: Brl, user_id: uuid.UUID) -> dict[str, Any]:
    """A pack checkout through the route; answers the charge Asaas made for it."""
    response = checkout(user_id, {"kind": "pack", "item_id": str(brl.pack_id), "tax_id": CPF})
    assert response.status == 200, response.body
    return api.payments[response.json["session_id"]]


def user_row(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> Any:
    with db() as uow:
        return uow.session.execute(text("SELECT * FROM users WHERE id = :u"), {"u": user_id}).mappings().one()


def subscription_row(db: Callable[[], UnitOfWork], sub_id: str) -> Any:
    with db() as uow:
        return (
            uow.session.execute(
                text("SELECT * FROM subscriptions WHERE provider = 'asaas' AND provider_subscription_id = :s"),
                {"s": sub_id},
            )
            .mappings()
            .one()
        )


# --- checkout ------------------------------------------------------------------------------------------------------
def test_a_pack_checkout_makes_one_brl_charge_the_buyer_picks_pix_boleto_or_card_on(db, asaas_api, brl, buyer):
    # When the buyer checks out the pack through Asaas with a CPF and an Idempotency-Key
    body = {"kind": "pack", "item_id": str(brl.pack_id), "tax_id": CPF}
    response = checkout(buyer, body, key="k-1")
    # Then the answer is the charge's invoice page, and Asaas was asked for a customer and one charge
    assert response.status == 200, response.body
    [payment] = asaas_api.payments.values()
    assert response.json == {"url": payment["invoiceUrl"], "provider": "asaas", "session_id": payment["id"]}
    [customer] = asaas_api.customers.values()
    assert customer["cpfCnpj"] == "52998224725" and customer["externalReference"] == str(buyer)
    [create] = [r for r in asaas_api.requests if r.method == "POST" and r.path == "/v3/payments"]
    assert create.headers["access_token"] == asaas_api.api_key
    assert create.json["billingType"] == "UNDEFINED" and create.json["value"] == 25.0
    assert create.json["customer"] == customer["id"]
    ref = Reference.parse(payment["externalReference"])
    assert ref is not None and (ref.kind, ref.user_id, ref.item_id) == ("pack", buyer.hex, brl.pack_id.hex)
    # And the Asaas customer is remembered on the account
    assert user_row(db, buyer)["asaas_customer_id"] == customer["id"]
    # When the same checkout is retried with the same key (no CPF needed now)
    again = checkout(buyer, {"kind": "pack", "item_id": str(brl.pack_id)}, key="k-1")
    # Then it answers the same charge, and Asaas still holds one charge and one customer
    assert again.status == 200 and again.json["session_id"] == payment["id"]
    assert len(asaas_api.payments) == 1 and len(asaas_api.customers) == 1
    # And another key is another charge
    other = checkout(buyer, {"kind": "pack", "item_id": str(brl.pack_id)}, key="k-2")
    assert other.status == 200 and other.json["session_id"] != payment["id"]
    assert len(asaas_api.payments) == 2


def test_the_first_asaas_checkout_needs_a_valid_cpf_or_cnpj(db, asaas_api, brl, buyer):
    # Given no Asaas customer for the buyer yet
    # When the buyer checks out without a tax id, or with one whose check digits are wrong
    missing = checkout(buyer, {"kind": "pack", "item_id": str(brl.pack_id)})
    wrong = checkout(buyer, {"kind": "pack", "item_id": str(brl.pack_id), "tax_id": "529.982.247-24"})
    # Then both are refused before anything is created at Asaas
    assert (missing.status, missing.error_code) == (422, "validation_error")
    assert (wrong.status, wrong.error_code) == (422, "validation_error")
    assert not asaas_api.customers and not asaas_api.payments


def test_asaas_charges_only_brl_items(db, asaas_api, catalogue, buyer):
    # Given a pack priced in USD
    # When it is checked out through Asaas
    response = checkout(buyer, {"kind": "pack", "item_id": str(catalogue.pack_id), "tax_id": CPF})
    # Then it is refused as not configured for Asaas, and nothing reached Asaas
    assert (response.status, response.error_code) == (409, "provider_not_configured")
    assert not asaas_api.requests


def test_asaas_errors_answer_as_a_provider_failure(db, asaas_api, brl, buyer):
    # Given Asaas refuses the next call
    asaas_api.failures.append(400)
    # When the buyer checks out
    response = checkout(buyer, {"kind": "pack", "item_id": str(brl.pack_id), "tax_id": CPF})
    # Then the answer is a provider error carrying Asaas's error list
    assert response.status == 502 or response.status == 503, response.body
    assert response.error_code == "payment_provider_error"
    assert response.json["error"]["details"]["errors"][0]["description"] == "injected failure"


def test_a_plan_checkout_is_an_asaas_subscription_whose_first_charge_is_paid_now(db, asaas_api, brl, buyer):
    # When the buyer checks out the plan yearly
    response = checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "interval": "year", "tax_id": CPF},
                        key="p-1")  # fmt: skip
    # Then Asaas holds one YEARLY subscription at the plan's yearly price, and the answer is its first charge
    assert response.status == 200, response.body
    [sub] = asaas_api.subscriptions.values()
    assert (sub["cycle"], sub["value"], sub["billingType"]) == ("YEARLY", 499.0, "UNDEFINED")
    assert response.json["session_id"] == sub["id"]
    [first] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    assert response.json["url"] == first["invoiceUrl"]
    # And a retry with the same key makes no second subscription
    again = checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "interval": "year"}, key="p-1")
    assert again.status == 200 and again.json["session_id"] == sub["id"] and len(asaas_api.subscriptions) == 1


# --- webhook authentication ----------------------------------------------------------------------------------------
def test_the_webhook_token_is_required_and_compared_exactly(db, asaas_api, brl, buyer):
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    event = asaas_api.event("PAYMENT_RECEIVED", payment)
    # When the event comes without the header, with a wrong token, or with a prefix of the right one
    for token in (None, "x" * 40, ASAAS_TOKEN[:20]):
        response = send_asaas(event, token=token)
        # Then it is refused and nothing is stored or granted
        assert (response.status, response.error_code) == (400, "invalid_signature"), token
    assert webhook_rows(db) == [] and balance(db, buyer) == 0
    # When it comes with the token
    response = send_asaas(event)
    # Then it is applied
    assert response.status == 200 and response.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("200")


def test_the_webhook_token_must_be_32_to_255_characters():
    # Then a short or an overlong token is refused by the configuration, a 32-character one is taken
    with pytest.raises(ValidationError):
        Settings(asaas_webhook_token="too-short")
    with pytest.raises(ValidationError):
        Settings(asaas_webhook_token="x" * 256)
    assert Settings(asaas_webhook_token="y" * 32).asaas_webhook_token is not None


def test_an_unconfigured_token_answers_like_other_providers(db, payments_env, monkeypatch):
    monkeypatch.delenv("ASAAS_WEBHOOK_TOKEN", raising=False)
    get_settings.cache_clear()
    response = send_asaas({"id": "evt_1", "event": "PAYMENT_RECEIVED", "payment": {"id": "pay_1"}})
    assert (response.status, response.error_code) == (500, "configuration_error")
    assert webhook_rows(db) == []


# --- packs ---------------------------------------------------------------------------------------------------------
def test_confirmed_then_received_grants_once_and_a_duplicate_changes_nothing(db, asaas_api, brl, buyer):
    payment = buy_pack(asaas_api, brl, buyer)
    # When the card charge is confirmed, then received (two events for one charge)
    confirmed = asaas_api.event("PAYMENT_CONFIRMED", asaas_api.settle(payment["id"], "CONFIRMED"))
    first = send_asaas(confirmed)
    received = send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"], "RECEIVED")))
    # Then the pack's credits are granted once, keyed by the Asaas payment id
    assert first.json["status"] == "processed" and received.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("200")
    [purchase] = grants(db, buyer, "purchase")
    assert purchase["source_key"] == f"asaas:order:{payment['id']}"
    assert count(db, "purchases", "provider = 'asaas' AND status = 'completed'") == 1
    # When the first event is delivered again
    again = send_asaas(confirmed)
    # Then it is a duplicate that changes nothing
    assert again.status == 200 and again.json["duplicate"] is True
    assert balance(db, buyer) == Decimal("200") and ledger_is_consistent(db, buyer)


def test_a_charge_whose_value_is_not_the_packs_price_grants_nothing(db, asaas_api, brl, buyer):
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    payment["value"] = 2.5
    response = send_asaas(asaas_api.event("PAYMENT_RECEIVED", payment))
    assert response.status == 200 and response.json["status"] == "rejected"
    assert balance(db, buyer) == 0


def test_refunds_claw_back_once_per_step_and_a_chargeback_once_per_charge(db, asaas_api, brl, buyer):
    payment = buy_pack(asaas_api, brl, buyer)
    send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"])))
    # When 10.00 of 25.00 is refunded (delivered twice)
    partial = asaas_api.event("PAYMENT_PARTIALLY_REFUNDED", asaas_api.refund(payment["id"], 10.0))
    assert send_asaas(partial).json["status"] == "processed"
    assert send_asaas(partial).json["duplicate"] is True
    # Then 40% of the credits are clawed back, once
    assert balance(db, buyer) == Decimal("120")
    # When the rest is refunded
    send_asaas(asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(payment["id"])))
    # Then the rest is clawed back and the purchase is refunded
    assert balance(db, buyer) == 0
    assert count(db, "refunds", "provider = 'asaas' AND kind = 'refund'") == 2
    assert count(db, "purchases", "status = 'refunded'") == 1
    # Given a second pack, paid
    second = buy_pack(asaas_api, brl, buyer)
    send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(second["id"])))
    assert balance(db, buyer) == Decimal("200")
    # When a chargeback is requested, then disputed
    second["status"], second["chargeback"] = "CHARGEBACK_REQUESTED", {"status": "REQUESTED", "reason": "FRAUD"}
    send_asaas(asaas_api.event("PAYMENT_CHARGEBACK_REQUESTED", second))
    second["status"], second["chargeback"]["status"] = "CHARGEBACK_DISPUTE", "IN_DISPUTE"
    send_asaas(asaas_api.event("PAYMENT_CHARGEBACK_DISPUTE", second))
    # Then its credits are clawed back once
    assert balance(db, buyer) == 0
    assert count(db, "refunds", "provider = 'asaas' AND kind = 'chargeback'") == 1
    assert ledger_is_consistent(db, buyer)


def test_a_refund_before_its_confirmation_leaves_nothing_granted(db, asaas_api, brl, buyer):
    # Given a charge paid and fully refunded, whose PAYMENT_RECEIVED comes last
    payment = buy_pack(asaas_api, brl, buyer)
    received = asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(payment["id"]), at="2026-12-01 12:00:00")
    refunded = asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(payment["id"]), at="2026-12-01 13:00:00")
    # When the refund arrives first
    first = send_asaas(refunded)
    # Then the purchase is recorded refunded with its credits taken back in the same event
    assert first.status == 200 and first.json["status"] == "processed"
    assert balance(db, buyer) == 0
    assert count(db, "purchases", "provider = 'asaas' AND status = 'refunded'") == 1
    # When the confirmation arrives after it
    late = send_asaas(received)
    # Then nothing is granted
    assert late.status == 200 and balance(db, buyer) == 0
    assert len(grants(db, buyer, "purchase")) == 1 and ledger_is_consistent(db, buyer)


def test_a_failing_event_answers_5xx_keeps_nothing_and_the_retry_applies_it(db, asaas_api, brl, buyer, monkeypatch):
    from tollgate.services.payment_events.handling import fulfil_pack_order as real

    target = "tollgate.services.payment_events.asaas_events.fulfil_pack_order"
    payment = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
    event = asaas_api.event("PAYMENT_RECEIVED", payment)

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("injected")

    # Given the grant fails after the purchase was written
    def grant_then_fail(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        boom()

    monkeypatch.setattr(target, grant_then_fail)
    # When the event arrives
    response = send_asaas(event)
    # Then Asaas is answered 5xx (it retries), and nothing of the event was kept but the failed attempt
    assert response.status == 500 and response.error_code == "webhook_processing_failed"
    assert balance(db, buyer) == 0 and count(db, "purchases") == 0
    [row] = webhook_rows(db)
    assert row["status"] == "failed" and row["provider"] == "asaas"
    # When Asaas retries once the fault is gone
    monkeypatch.setattr(target, real)
    retried = send_asaas(event)
    # Then it is applied once
    assert retried.status == 200 and retried.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("200")
    with pytest.raises(WebhookProcessingFailed):  # and the service raises the same for a direct caller
        monkeypatch.setattr(target, grant_then_fail)
        other = asaas_api.settle(buy_pack(asaas_api, brl, buyer)["id"])
        body = json.dumps(asaas_api.event("PAYMENT_RECEIVED", other)).encode()
        receive_webhook("asaas", body, {"asaas-access-token": ASAAS_TOKEN})


# --- plans ---------------------------------------------------------------------------------------------------------
def test_a_subscription_grants_its_allowance_per_paid_charge_goes_past_due_and_ends(db, asaas_api, brl, buyer):
    response = checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF})
    [sub] = asaas_api.subscriptions.values()
    [first] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    assert response.status == 200
    # When Asaas reports the subscription created (ACTIVE, its first charge unpaid)
    send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00"))
    # Then it is recorded pending: no tier before a payment
    assert subscription_row(db, sub["id"])["status"] == "pending"
    assert user_row(db, buyer)["tier"] == "FREE"
    # When the first charge is confirmed and then received
    send_asaas(asaas_api.event("PAYMENT_CONFIRMED", asaas_api.settle(first["id"], "CONFIRMED"),
                               at="2026-12-01 10:05:00"))  # fmt: skip
    send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(first["id"]), at="2026-12-01 10:06:00"))
    # Then the plan's allowance is granted once and the user has the plan's tier
    assert balance(db, buyer) == Decimal("1000")
    assert subscription_row(db, sub["id"])["status"] == "active"
    assert user_row(db, buyer)["tier"] == "PRO"
    # When the next month's charge is overdue
    second = asaas_api.new_payment(sub["customer"], 49.9, "2027-01-01", subscription=sub["id"])
    overdue = dict(second, status="OVERDUE")
    send_asaas(asaas_api.event("PAYMENT_OVERDUE", overdue, at="2027-01-02 08:00:00"))
    # Then the subscription is past due (access kept while it can be paid) and the user is mailed
    assert subscription_row(db, sub["id"])["status"] == "past_due"
    assert user_row(db, buyer)["tier"] == "PRO"
    assert count(db, "email_logs", "type = 'payment_failed' AND user_id = :u", u=buyer) == 1
    # When it is paid late
    send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(second["id"], on="2027-01-05"),
                               at="2027-01-05 09:00:00"))  # fmt: skip
    # Then the subscription is active again and the new period's allowance is granted
    assert subscription_row(db, sub["id"])["status"] == "active"
    assert count(db, "invoices", "provider = 'asaas' AND credits_granted = 1000") == 2
    # When Asaas reports the subscription removed
    sub["deleted"] = True
    send_asaas(asaas_api.event("SUBSCRIPTION_DELETED", sub, at="2027-01-10 09:00:00"))
    # Then it is ended and the tier goes back to FREE; an older update afterwards does not revive it
    assert subscription_row(db, sub["id"])["status"] == "deleted"
    assert user_row(db, buyer)["tier"] == "FREE"
    sub["deleted"] = False
    send_asaas(asaas_api.event("SUBSCRIPTION_UPDATED", sub, at="2027-01-03 09:00:00"))
    assert subscription_row(db, sub["id"])["status"] == "deleted"
    assert ledger_is_consistent(db, buyer)


def test_a_refund_of_a_subscription_charge_claws_its_allowance_back(db, asaas_api, brl, buyer):
    checkout(buyer, {"kind": "plan", "item_id": str(brl.plan_id), "tax_id": CPF})
    [sub] = asaas_api.subscriptions.values()
    [first] = [p for p in asaas_api.payments.values() if p["subscription"] == sub["id"]]
    send_asaas(asaas_api.event("SUBSCRIPTION_CREATED", sub, at="2026-12-01 10:00:00"))
    send_asaas(asaas_api.event("PAYMENT_RECEIVED", asaas_api.settle(first["id"]), at="2026-12-01 10:06:00"))
    assert balance(db, buyer) == Decimal("1000")
    # When the charge is refunded
    send_asaas(asaas_api.event("PAYMENT_REFUNDED", asaas_api.refund(first["id"]), at="2026-12-02 10:00:00"))
    # Then the period's allowance is clawed back
    assert balance(db, buyer) == 0
    assert count(db, "invoices", "provider = 'asaas' AND status = 'refunded'") == 1


# --- reconciliation ------------------------------------------------------------------------------------------------
def test_reconciliation_applies_a_paid_charge_no_webhook_brought_once(db, asaas_api, brl, buyer):
    # Given a pack charge paid at Asaas whose webhook never arrived
    payment = buy_pack(asaas_api, brl, buyer)
    today = datetime.now(UTC).astimezone().date().isoformat()
    asaas_api.settle(payment["id"], on=today)
    payment["dateCreated"] = today
    # And a charge that is not Tollgate's
    asaas_api.new_payment("cus_other", 10.0, today, dateCreated=today, status="RECEIVED", paymentDate=today)
    job = ProviderReconciliation(uow_factory=db)
    # When the job runs
    now = datetime.now(UTC) + timedelta(minutes=15)
    report = run_job(job, now=now, remaining_ms=lambda: 600_000, uow_factory=db, safety_ms=1)
    # Then the charge is applied once (both passes see it) and the foreign one is left alone
    assert report.complete
    assert report.stats["asaas_payments_applied"] == 1, report.stats
    assert report.stats["ignored"] == 2 and report.stats["already_known"] == 1
    assert balance(db, buyer) == Decimal("200")
    # When the late webhook arrives, or the job runs again
    send_asaas(asaas_api.event("PAYMENT_RECEIVED", payment))
    again = run_job(ProviderReconciliation(uow_factory=db), now=now + timedelta(minutes=15),
                    remaining_ms=lambda: 600_000, uow_factory=db, safety_ms=1)  # fmt: skip
    # Then nothing more is granted
    assert "asaas_payments_applied" not in again.stats
    assert balance(db, buyer) == Decimal("200") and len(grants(db, buyer, "purchase")) == 1


def test_the_cli_sends_an_asaas_event_with_the_token(db, asaas_env, brl):
    from tollgate_local.webhooks_cli import asaas_payment_event, signed_headers

    with db() as uow:
        user = make_user(uow.session)
        uow.commit()
        user_id = user.id
    body = json.dumps(asaas_payment_event("PAYMENT_RECEIVED", user_id=str(user_id), item_id=str(brl.pack_id),
                                          value="25.00"))  # fmt: skip
    headers = {k: v for k, v in signed_headers("asaas", body, ASAAS_TOKEN).items() if k != "Content-Type"}
    assert headers == {"asaas-access-token": ASAAS_TOKEN}
    response = api_call("POST", "/webhooks/asaas", raw_body=body.encode(), headers=headers)
    assert response.status == 200 and response.json["status"] == "processed"
    assert balance(db, user_id) == Decimal("200")
