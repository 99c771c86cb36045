"""The Billing routes against the Stripe / Lemon Squeezy stand-ins; admin replay; the `tollgate webhooks` CLI."""

# ruff: noqa: F403, F405
from __future__ import annotations

import hashlib
import json
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.payments_support import *
from tests.provider_standins import nested_form
from tests.support import make_user
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event

URLS = {"success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/cancel"}


def test_a_stripe_pack_checkout_carries_the_buyer_and_the_item(db, stripe_api, catalogue, buyer):
    # When the buyer starts a checkout for the pack (with an Idempotency-Key)
    response = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        headers={"idempotency-key": "k-1"},
        body={"provider": "stripe", "kind": "pack", "item_id": str(catalogue.pack_id), **URLS},
    )
    # Then the answer is the session's URL, and Stripe was asked for a payment session naming buyer and item
    assert response.status == 200, response.body
    assert response.json["url"].startswith(stripe_api.base_url)
    [request] = [r for r in stripe_api.requests if r.path == "/v1/checkout/sessions"]
    form = request.form
    assert form["mode"] == "payment"
    assert form["client_reference_id"] == str(buyer)
    assert nested_form(form, "metadata") == {"user_id": str(buyer), "kind": "pack", "item_id": str(catalogue.pack_id)}
    assert form["line_items[0][price_data][unit_amount]"] == "500"
    assert form["line_items[0][price_data][currency]"] == "usd"
    assert request.headers["idempotency-key"] == f"checkout:{buyer}:{hashlib.sha256(b'k-1').hexdigest()}"
    # And a repeat with the same key and body answers the same session; another body under it is a conflict
    again = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        headers={"idempotency-key": "k-1"},
        body={"provider": "stripe", "kind": "pack", "item_id": str(catalogue.pack_id), **URLS},
    )
    assert again.json["session_id"] == response.json["session_id"]
    other = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        headers={"idempotency-key": "k-1"},
        body={
            "provider": "stripe",
            "kind": "pack",
            "item_id": str(catalogue.pack_id),
            **URLS,
            "cancel_url": "https://x.example/c",
        },
    )
    assert (other.status, other.error_code) == (409, "idempotency_conflict")


def test_a_stripe_plan_checkout_is_a_subscription_with_the_plans_price(db, stripe_api, catalogue, buyer):
    response = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        body={"provider": "stripe", "kind": "plan", "item_id": str(catalogue.pro_id), "interval": "year", **URLS},
    )
    assert response.status == 200
    form = stripe_api.requests[-1].form
    assert form["mode"] == "subscription"
    assert form["line_items[0][price]"] == "price_pro_year"
    assert nested_form(form, "subscription_data[metadata") or form["subscription_data[metadata][user_id]"] == str(buyer)


def test_a_lemonsqueezy_checkout_carries_custom_data(db, lemonsqueezy_api, catalogue, buyer):
    response = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        body={"provider": "lemonsqueezy", "kind": "pack", "item_id": str(catalogue.pack_id), **URLS},
    )
    assert response.status == 200, response.body
    assert "/checkout/custom/" in response.json["url"]
    sent = lemonsqueezy_api.requests[-1].json["data"]
    assert sent["attributes"]["checkout_data"]["custom"] == {
        "user_id": str(buyer),
        "kind": "pack",
        "item_id": str(catalogue.pack_id),
    }
    assert sent["relationships"]["variant"]["data"]["id"] == "111"
    assert sent["relationships"]["store"]["data"]["id"] == "4242"


def test_checkout_refusals_are_clear_4xx(db, stripe_api, catalogue, buyer, monkeypatch):
    unknown = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        body={"provider": "stripe", "kind": "pack", "item_id": str(uuid.uuid4()), **URLS},
    )
    assert (unknown.status, unknown.error_code) == (404, "item_not_found")
    bad = api_call("POST", "/billing/checkout", as_user=buyer, body={"provider": "paypal", "kind": "pack"})
    assert (bad.status, bad.error_code) == (422, "validation_error")
    no_ls = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        body={"provider": "lemonsqueezy", "kind": "pack", "item_id": str(catalogue.pack_id), **URLS},
    )
    assert (no_ls.status, no_ls.error_code) == (409, "provider_not_configured")
    anonymous = api_call("POST", "/billing/checkout", body={"provider": "stripe"}, through_authorizer=True)
    assert anonymous.status in {401, 403}
    stripe_api.failures = [500, 500]  # the SDK retries once (same idempotency key), then gives up
    down = api_call(
        "POST",
        "/billing/checkout",
        as_user=buyer,
        body={"provider": "stripe", "kind": "pack", "item_id": str(catalogue.pack_id), **URLS},
    )
    assert (down.status, down.error_code) == (503, "payment_provider_error")


def test_the_stripe_portal_needs_a_customer(db, stripe_api, catalogue, buyer):
    none = api_call("POST", "/billing/portal", as_user=buyer)
    assert (none.status, none.error_code) == (404, "no_billing_account")
    with db() as uow:
        uow.session.execute(text("UPDATE users SET stripe_customer_id = 'cus_portal' WHERE id = :u"), {"u": buyer})
        uow.commit()
    response = api_call(
        "POST", "/billing/portal", as_user=buyer, body={"return_url": "https://app.example.com/account"}
    )
    assert response.status == 200 and "/p/session/" in response.json["url"]
    assert stripe_api.requests[-1].form == {"customer": "cus_portal", "return_url": "https://app.example.com/account"}


def test_history_lists_are_paginated_and_private(db, payments_env, catalogue, buyer):
    for _ in range(3):
        session = stripe_checkout_session(
            user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd"
        )
        assert send_stripe(stripe_event("checkout.session.completed", session)).json["status"] == "processed"
    page1 = api_call("GET", "/billing/purchases", query="limit=2", as_user=buyer).json
    page2 = api_call("GET", "/billing/purchases", query=f"limit=2&cursor={page1['next_cursor']}", as_user=buyer).json
    assert len(page1["items"]) == 2 and len(page2["items"]) == 1 and page2["next_cursor"] is None
    assert {i["id"] for i in page1["items"]}.isdisjoint({i["id"] for i in page2["items"]})
    assert page1["items"][0]["credits"] == "100.0000" and page1["items"][0]["status"] == "completed"
    with db() as uow:
        other = make_user(uow.session).id
        uow.commit()
    assert api_call("GET", "/billing/purchases", as_user=other).json == {"items": [], "next_cursor": None}
    assert api_call("GET", "/billing/invoices", as_user=buyer).json == {"items": [], "next_cursor": None}
    assert api_call("GET", "/billing/subscription", as_user=buyer).json is None
    garbage = api_call("GET", "/billing/purchases", query="cursor=garbage", as_user=buyer)
    assert (garbage.status, garbage.error_code) == (400, "invalid_cursor")


def test_admin_replay_reapplies_a_stored_event_and_users_may_not(db, payments_env, catalogue, buyer):
    event = stripe_event(
        "checkout.session.completed",
        stripe_checkout_session(user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd"),
    )
    send_stripe(event)
    with db() as uow:
        admin = make_user(uow.session, role="ADMIN").id
        uow.commit()
    denied = api_call("POST", f"/admin/webhooks/{event['id']}/replay", as_user=buyer)
    assert denied.status == 403
    replayed = api_call("POST", f"/admin/webhooks/{event['id']}/replay", as_user=admin, role="ADMIN")
    assert replayed.status == 200 and replayed.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")  # replaying an applied event changes nothing
    missing = api_call("POST", "/admin/webhooks/evt_nope/replay", as_user=admin, role="ADMIN")
    assert (missing.status, missing.error_code) == (404, "webhook_event_not_found")


# --- the CLI ----------------------------------------------------------------------------------------------------
@pytest.fixture
def local_server(database_url):
    from tollgate_local import TEMPLATE_PATH
    from tollgate_local.gateway import make_server, serve_in_thread

    server = make_server(Path(TEMPLATE_PATH), "127.0.0.1", 0)
    serve_in_thread(server)
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_cli_send_signs_and_posts_a_checkout_then_replay_reapplies_it(
    db, payments_env, catalogue, buyer, local_server, capsys
):
    from tollgate_local.cli import main

    with db() as uow:
        email = uow.session.execute(text("SELECT email FROM users WHERE id = :u"), {"u": buyer}).scalar()
    code = main(
        [
            "webhooks",
            "send",
            "stripe",
            "checkout.session.completed",
            "--user",
            email,
            "--pack",
            "Starter pack",
            "--url",
            f"{local_server}/webhooks/stripe",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert balance(db, buyer) == Decimal("100")
    event_id = json.loads(out.split("\n", 1)[1])["event_id"]
    assert main(["webhooks", "replay", event_id]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")
