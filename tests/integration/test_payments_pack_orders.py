"""One pack-order flow for every provider, provider calls only outside the webhook's transaction, and LOCKED
accounts that pay.

Stripe events are built around current-shape objects (tests/fixtures/providers/stripe/current/checkout.session.json,
envelopes at STRIPE_API_VERSION) and, where the shapes differ, the 2020-2024 ones (`tollgate webhooks send`'s
builder labelled 2020-08-27); every delivery is signed by the stripe library and goes through the real handler.
"""

# ruff: noqa: F403, F405, F811
from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer, clear_caches  # noqa: F401
from tests.payments_support import *
from tests.provider_standins import Recorded, StripeStandIn
from tests.support import make_user, project_gateway
from tollgate.db import UnitOfWork
from tollgate.jobs import run_job
from tollgate.jobs.account_jobs import TrialExpiry
from tollgate.models.users import User
from tollgate.payments import adapters
from tollgate.payments.adapters import STRIPE_API_VERSION
from tollgate.services.authz import Actor
from tollgate.services.payment_events.handling import Ctx, PackOrder, fulfil_pack_order
from tollgate.services.webhooks import replay_event
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event

URLS = {"success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/cancel"}

# Backends of this database (other than the asking one) inside a transaction that holds a lock on a table.
LOCKS_HELD = text(
    "SELECT a.pid, array_agg(DISTINCT c.relname ORDER BY c.relname) AS tables "
    "FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid JOIN pg_class c ON c.oid = l.relation "
    "WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND a.backend_type = 'client backend' "
    "AND a.xact_start IS NOT NULL AND l.granted AND l.locktype = 'relation' "
    "AND c.relkind IN ('r', 'p') AND c.relnamespace = 'public'::regnamespace GROUP BY a.pid"
)


def current_session(buyer: uuid.UUID, pack_id: uuid.UUID, *, session_id: str | None = None) -> dict[str, Any]:
    """Stripe's current checkout.session fixture, paid, for the 5.00 USD pack."""
    obj: dict[str, Any] = json.loads((PROVIDER_FIXTURES / "stripe" / "current" / "checkout.session.json").read_text())
    obj.update(
        id=session_id or f"cs_test_{uuid.uuid4().hex}",
        amount_subtotal=500,
        amount_total=500,
        currency="usd",
        customer=f"cus_{uuid.uuid4().hex[:14]}",
        client_reference_id=str(buyer),
        metadata={"user_id": str(buyer), "kind": "pack", "item_id": str(pack_id)},
        payment_intent=f"pi_{uuid.uuid4().hex[:24]}",
        payment_status="paid",
        status="complete",
    )
    return obj


def completed(obj: dict[str, Any], *, api_version: str = STRIPE_API_VERSION) -> dict[str, Any]:
    return stripe_event("checkout.session.completed", obj, api_version=api_version)


def old_session(buyer: uuid.UUID, pack_id: uuid.UUID) -> dict[str, Any]:
    return stripe_checkout_session(user_id=str(buyer), item_id=str(pack_id), amount_minor=500, currency="usd")


def sell_pack_through_price(db: Callable[[], UnitOfWork], price: str = "price_pack") -> None:
    with db() as uow:
        uow.session.execute(text("UPDATE credit_packs SET stripe_price_id = :p"), {"p": price})
        uow.commit()


def lock_probe(stripe_api: StripeStandIn) -> list[tuple[str, list[Any]]]:
    """Record, for every call Stripe's API receives, which transactions of this database hold table locks."""
    seen: list[tuple[str, list[Any]]] = []

    def probe(rec: Recorded) -> None:
        with UnitOfWork() as uow:
            seen.append((rec.path, [list(row.tables) for row in uow.session.execute(LOCKS_HELD)]))

    stripe_api.on_request = probe
    return seen


def webhook_row(db: Callable[[], UnitOfWork], event_id: str) -> Any:
    with db() as uow:
        return uow.session.execute(
            text("SELECT status, attempts, error FROM webhook_events WHERE event_id = :e"), {"e": event_id}
        ).one()


# --- no provider call under a lock ----------------------------------------------------------------------------
@pytest.mark.direct_database(reason="it asks for a second connection while its own holds a lock: one per process there")
def test_the_probe_sees_a_transaction_that_holds_locks(db, stripe_api, catalogue, buyer):
    # Given a transaction holding the purchase-row lock as the webhook's does (what the handler did before)
    seen = lock_probe(stripe_api)
    stripe_api.line_item_prices["cs_probe"] = ["price_pack"]
    with db() as uow:
        uow.session.execute(text("SELECT id FROM purchases WHERE provider_order_id = 'cs_probe' FOR UPDATE")).all()
        # When Stripe's API is called inside it
        adapters.stripe_gateway().checkout_price_ids("cs_probe")
    # Then the probe reports the lock: a handler that called Stripe under a lock would fail the test below
    [(_, held)] = seen
    assert ["purchases"] in held


@pytest.mark.parametrize("shape", ["current", "2020-08-27"])
def test_line_items_are_fetched_before_the_webhook_transaction_takes_any_lock(db, stripe_api, catalogue, buyer, shape):
    # Given a pack sold through a Stripe price, and a paid checkout of it (current or 2020-2024 shape)
    sell_pack_through_price(db)
    if shape == "current":
        event = completed(current_session(buyer, catalogue.pack_id))
    else:
        event = completed(old_session(buyer, catalogue.pack_id), api_version=shape)
    stripe_api.line_item_prices[event["data"]["object"]["id"]] = ["price_pack"]
    seen = lock_probe(stripe_api)
    # When Stripe delivers it
    response = send_stripe(event)
    # Then the line items were fetched once, while no transaction of the database held any lock
    assert response.status == 200 and response.json["status"] == "processed", response.json
    assert [path for path, _ in seen] == [f"/v1/checkout/sessions/{event['data']['object']['id']}/line_items"]
    assert seen[0][1] == []
    # And the pack was granted once, checked against the fetched price
    assert balance(db, buyer) == Decimal("100")
    assert ledger_is_consistent(db, buyer)


def test_a_session_whose_fetched_prices_miss_the_packs_price_is_rejected(db, stripe_api, catalogue, buyer):
    # Given a current-shape paid checkout whose line items carry another price than the pack's
    sell_pack_through_price(db)
    event = completed(current_session(buyer, catalogue.pack_id))
    stripe_api.line_item_prices[event["data"]["object"]["id"]] = ["price_other"]
    # When it arrives, then it is rejected with both sides named, and nothing is granted
    response = send_stripe(event)
    assert response.json["status"] == "rejected"
    with db() as uow:
        outcome = uow.session.execute(text("SELECT outcome FROM webhook_events")).scalar_one()
    assert outcome["reported"] == {"prices": ["price_other"]} and outcome["expected"] == {"price": "price_pack"}
    assert balance(db, buyer) == 0 and count(db, "purchases") == 0


def test_a_fetch_that_fails_is_a_5xx_recorded_failed_with_nothing_applied(db, stripe_api, catalogue, buyer):
    # Given a paid checkout, and Stripe's API failing (the SDK retries once, then gives up)
    sell_pack_through_price(db)
    event = completed(current_session(buyer, catalogue.pack_id))
    session_id = event["data"]["object"]["id"]
    stripe_api.line_item_prices[session_id] = ["price_pack"]
    stripe_api.failures = [500, 500]
    # When Stripe delivers it
    response = send_stripe(event)
    # Then the answer is a 5xx (Stripe retries), the event is recorded failed with its payload, nothing applied
    assert response.status >= 500 and response.error_code == "webhook_processing_failed", response.json
    status, attempts, error = webhook_row(db, event["id"])
    assert (status, attempts) == ("failed", 1) and "PaymentProviderError" in error
    assert balance(db, buyer) == 0 and count(db, "purchases") == 0
    # And Stripe's retry, with its API back, applies it
    assert send_stripe(event).json["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")
    # And a later redelivery while the API is down again stays a 2xx duplicate that changes nothing
    stripe_api.failures = [500, 500]
    again = send_stripe(event)
    assert again.status == 200 and again.json["duplicate"] is True
    assert balance(db, buyer) == Decimal("100")


def test_a_replay_fetches_before_its_transaction_too(db, stripe_api, catalogue, buyer):
    # Given an event that failed because Stripe's API was down
    sell_pack_through_price(db)
    event = completed(current_session(buyer, catalogue.pack_id))
    stripe_api.line_item_prices[event["data"]["object"]["id"]] = ["price_pack"]
    stripe_api.failures = [500, 500]
    assert send_stripe(event).status >= 500
    seen = lock_probe(stripe_api)
    # When an operator replays it
    receipt = replay_event(event["id"], Actor.operator(), db)
    # Then the replay fetched the line items again, with no lock held, and granted the pack once
    assert receipt.status == "processed"
    assert len(seen) == 1 and seen[0][1] == []
    assert balance(db, buyer) == Decimal("100")
    # And replaying it again changes nothing
    assert replay_event(event["id"], Actor.operator(), db).detail["already"] == "completed"
    assert balance(db, buyer) == Decimal("100")


def test_events_that_need_nothing_from_the_api_make_no_call(db, stripe_api, catalogue, buyer):
    # Given checkouts of a pack that sells without a Stripe price: one unpaid, one paid
    seen = lock_probe(stripe_api)
    unpaid = current_session(buyer, catalogue.pack_id)
    unpaid["payment_status"] = "unpaid"
    # When they arrive, then none of them calls Stripe's API
    assert send_stripe(completed(unpaid)).json["status"] == "processed"
    assert send_stripe(completed(current_session(buyer, catalogue.pack_id))).json["status"] == "processed"
    assert seen == []


# --- one pack-order flow ---------------------------------------------------------------------------------------
def ctx(uow: UnitOfWork, provider: str) -> Ctx:
    return Ctx(
        session=uow.session,
        provider=provider,
        event_type="test",
        webhook_event_id=uuid.uuid4(),
        provider_time=None,
        livemode=False,
        now=datetime.now(UTC),
    )


def fulfil(db: Callable[[], UnitOfWork], buyer: uuid.UUID, order: PackOrder) -> dict[str, Any]:
    with db() as uow:
        user = uow.session.get(User, buyer)
        assert user is not None
        outcome = fulfil_pack_order(ctx(uow, order.provider), user, order)
        uow.commit()
    return {**outcome.detail, "outcome": outcome.status}


def test_the_pack_order_flow_checks_records_pending_grants_once(db, catalogue, buyer):
    # Given orders of the pack at another provider (the flow every provider module calls)
    def order(order_id: str, **kw: Any) -> PackOrder:
        fields: dict[str, Any] = {"amount_minor": 500, "currency": "USD", "paid": True, **kw}
        return PackOrder(provider="asaas", order_id=order_id, pack_ref=str(catalogue.pack_id), **fields)

    # When one reports the wrong amount, another an unknown pack, then they are rejected and grant nothing
    assert fulfil(db, buyer, order("pay_1", amount_minor=499))["outcome"] == "rejected"
    assert fulfil(db, buyer, order("pay_1", currency="brl"))["outcome"] == "rejected"
    assert fulfil(db, buyer, PackOrder("asaas", "pay_2", str(uuid.uuid4()), 500, "usd", True))["outcome"] == "rejected"
    # When an unpaid one arrives, it is recorded pending; paid later, granted; again, answered as done
    assert fulfil(db, buyer, order("pay_3", paid=False, payment_id="pay_3"))["outcome"] == "processed"
    assert balance(db, buyer) == 0 and count(db, "purchases", "status = 'pending'") == 1
    paid = fulfil(db, buyer, order("pay_3"))
    assert paid["granted"] == "100.0000"
    assert fulfil(db, buyer, order("pay_3"))["already"] == "completed"
    # Then one purchase, granted once under the provider's order key, keeping the payment id refunds will name
    assert balance(db, buyer) == Decimal("100")
    with db() as uow:
        row = uow.session.execute(
            text("SELECT status, amount, currency, provider_payment_id, grant_source_key FROM purchases")
        ).one()
    assert tuple(row) == ("completed", Decimal("5.000"), "usd", "pay_3", "asaas:order:pay_3")


def test_without_an_amount_check_the_packs_price_must_be_carried(db, catalogue, buyer):
    # Given orders whose total is not the pack's list price (tax, discounts): the variant is the only proof
    def order(order_id: str, price_ref: str | None) -> PackOrder:
        return PackOrder(
            "lemonsqueezy", order_id, str(catalogue.pack_id), 5899, "usd", True, price_ref=price_ref,
            amount_checked=False,
        )  # fmt: skip

    # When one carries no variant or another one, then it is rejected; the pack's variant grants
    assert fulfil(db, buyer, order("1", None))["outcome"] == "rejected"
    assert fulfil(db, buyer, order("2", "999"))["outcome"] == "rejected"
    assert fulfil(db, buyer, order("3", "111"))["outcome"] == "processed"
    assert balance(db, buyer) == Decimal("100")


# --- LOCKED accounts pay -----------------------------------------------------------------------------------------
def lock_by_trial_expiry(db: Callable[[], UnitOfWork], email: str) -> uuid.UUID:
    """End the user's trial an hour ago and let TrialExpiry lock the account, as it does in production."""
    now = datetime.now(UTC)
    with db() as uow:
        user_id: uuid.UUID = uow.session.execute(
            text(
                "UPDATE users SET trial_started_at = :start, trial_ends_at = :end, tier = 'PRO' "
                "WHERE lower(email) = lower(:email) RETURNING id"
            ),
            {"start": now - timedelta(days=14), "end": now - timedelta(hours=1), "email": email},
        ).scalar_one()
        uow.commit()
    run_job(TrialExpiry(), now=now, remaining_ms=lambda: 600_000, uow_factory=db, safety_ms=1)
    return user_id


def status_of(db: Callable[[], UnitOfWork], user_id: uuid.UUID) -> str:
    with db() as uow:
        return str(uow.session.execute(text("SELECT status FROM users WHERE id = :u"), {"u": user_id}).scalar_one())


def test_a_locked_account_checks_out_pays_and_is_unlocked_end_to_end(
    db,
    auth_env: AuthEnv,
    stripe_api,
    catalogue,
):
    # Given a signed-in user whose trial ended unpaid: TrialExpiry locked the account
    email = auth_env.register_verified()
    token = auth_env.login(email)["access_token"]
    user_id = lock_by_trial_expiry(db, email)
    assert status_of(db, user_id) == "LOCKED"
    before = balance(db, user_id)  # the sign-up credits
    # And the pack sells through a Stripe price
    sell_pack_through_price(db)
    call = lambda method, path, **kw: api_call(method, path, headers=bearer(token), through_authorizer=True, **kw)  # noqa: E731
    # And outside billing the authorizer refuses the account
    assert call("GET", "/credits/balance").status == 403
    # When the user starts a checkout of the pack through the gateway
    started = call("POST", "/billing/checkout", body={"provider": "stripe", "kind": "pack", **URLS,
                                                      "item_id": str(catalogue.pack_id)})  # fmt: skip
    # Then Stripe is asked for a session naming the buyer and the pack's price
    assert started.status == 200, started.json
    session = stripe_api.sessions[started.json["session_id"]]
    assert session["metadata"] == {"user_id": str(user_id), "kind": "pack", "item_id": str(catalogue.pack_id)}
    assert stripe_api.line_item_prices[session["id"]] == ["price_pack"]
    # When Stripe reports the session paid (a signed checkout.session.completed at the pinned version)
    paid = current_session(user_id, catalogue.pack_id, session_id=session["id"])
    delivered = send_stripe(completed(paid))
    # Then the credits are granted and the account is ACTIVE again
    assert delivered.status == 200 and delivered.json["status"] == "processed", delivered.json
    assert status_of(db, user_id) == "ACTIVE"
    assert balance(db, user_id) == before + Decimal("100") and ledger_is_consistent(db, user_id)
    # And once the verdict cached before the payment has expired (AUTHORIZER_CACHE_SECONDS), other routes work again
    project_gateway().runner.module("AuthorizerFunction").cache.clear()
    again = call("GET", "/credits/balance")
    assert again.status == 200, again.json
    assert Decimal(again.json["balance"]) == before + Decimal("100")
    # And TrialExpiry does not lock it again: the trial did not end unpaid any more
    run_job(TrialExpiry(), now=datetime.now(UTC) + timedelta(hours=1), remaining_ms=lambda: 600_000,
            uow_factory=db, safety_ms=1)  # fmt: skip
    assert status_of(db, user_id) == "ACTIVE"


def test_a_suspended_account_still_cannot_check_out(db, auth_env: AuthEnv, stripe_api, catalogue):
    # Given a signed-in user whose account is then suspended
    email = auth_env.register_verified()
    token = auth_env.login(email)["access_token"]
    with db() as uow:
        user_id = uow.session.execute(
            text("UPDATE users SET status = 'SUSPENDED' WHERE lower(email) = lower(:e) RETURNING id"), {"e": email}
        ).scalar_one()
        uow.commit()
    clear_caches()
    body = {"provider": "stripe", "kind": "pack", "item_id": str(catalogue.pack_id), **URLS}
    # When it tries to check out through the gateway, then the authorizer refuses it
    through = api_call("POST", "/billing/checkout", headers=bearer(token), through_authorizer=True, body=body)
    assert through.status in (401, 403)
    # And the billing service refuses it too, whatever reached it
    direct = api_call("POST", "/billing/checkout", as_user=user_id, body=body)
    assert direct.status == 403 and direct.error_code == "account_disabled"
    assert not [r for r in stripe_api.requests if r.path == "/v1/checkout/sessions"]


def test_a_locked_account_is_unlocked_by_a_lemonsqueezy_pack_too(db, payments_env, catalogue):
    # Given a LOCKED account (trial ended unpaid)
    with db() as uow:
        user = make_user(uow.session, status="LOCKED", trial_ends_at=datetime.now(UTC) - timedelta(days=1))
        uow.commit()
        user_id = user.id
    # When its Lemon Squeezy order of the pack is paid
    from tollgate_local.webhooks_cli import lemonsqueezy_order

    event = lemonsqueezy_order(user_id=str(user_id), item_id=str(catalogue.pack_id), variant_id="111", total_minor=500)
    assert send_lemonsqueezy(event).json["status"] == "processed"
    # Then it is ACTIVE with the pack's credits
    assert status_of(db, user_id) == "ACTIVE"
    assert balance(db, user_id) == Decimal("100")


# --- local tooling ------------------------------------------------------------------------------------------------
def test_the_cli_builds_stripe_events_at_the_pinned_version_in_current_shapes(db, payments_env, catalogue, buyer):
    # Given the checkout event `tollgate webhooks send stripe checkout.session.completed` builds
    event = stripe_event("checkout.session.completed", old_session(buyer, catalogue.pack_id))
    current: dict[str, Any] = json.loads(
        (PROVIDER_FIXTURES / "stripe" / "current" / "checkout.session.json").read_text()
    )
    # Then it is labelled with the pinned version, and every field of its session is one the current API has
    assert event["api_version"] == STRIPE_API_VERSION
    assert set(event["data"]["object"]) <= set(current)
    assert {"invoice", "customer_creation", "payment_method_types"} <= set(event["data"]["object"])
    # And it applies, signed with the stripe library
    assert send_stripe(event).json["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")


def test_a_stripe_listen_secret_added_to_the_comma_list_verifies(db, payments_env, catalogue, buyer, monkeypatch):
    # Given the endpoint's secret and the one `stripe listen` printed, comma-separated, as the README says
    readme = " ".join((PROVIDER_FIXTURES.parents[2] / "README.md").read_text().split())
    assert "stripe listen --forward-to localhost:3000/webhooks/stripe" in readme
    assert "STRIPE_WEBHOOK_SECRET=whsec_dashboard…,whsec_cli…" in readme
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", f"{STRIPE_SECRET}, whsec_from_stripe_listen")
    get_settings.cache_clear()
    # When events arrive signed with either, then both verify and apply; another secret does not
    first = completed(current_session(buyer, catalogue.pack_id))
    second = completed(current_session(buyer, catalogue.pack_id))
    assert send_stripe(first).json["status"] == "processed"
    assert send_stripe(second, secret="whsec_from_stripe_listen").json["status"] == "processed"
    forged = send_stripe(completed(current_session(buyer, catalogue.pack_id)), secret="whsec_other")
    assert forged.status == 400 and forged.error_code == "invalid_signature"
    assert balance(db, buyer) == Decimal("200")
