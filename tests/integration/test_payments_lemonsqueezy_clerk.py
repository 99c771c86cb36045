"""Lemon Squeezy orders, refunds, subscriptions and invoices; Clerk user sync."""

# ruff: noqa: F403, F405
from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.conftest import PROVIDER_FIXTURES
from tests.payments_support import *
from tollgate_local.webhooks_cli import lemonsqueezy_order


def fixture(name: str) -> dict:
    return json.loads((PROVIDER_FIXTURES / "lemonsqueezy" / f"{name}.json").read_text())


def iso(delta_seconds: int = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def order(catalogue, buyer, **kw) -> dict:
    return lemonsqueezy_order(
        user_id=str(buyer), item_id=str(catalogue.pack_id), variant_id="111", total_minor=500, **kw
    )


# --- orders -----------------------------------------------------------------------------------------------------
def test_an_order_of_the_packs_variant_grants_once(db, payments_env, catalogue, buyer):
    event = order(catalogue, buyer, order_id="9001")
    first, second = send_lemonsqueezy(event), send_lemonsqueezy(event)
    assert first.json["status"] == "processed" and second.json["duplicate"] is True
    assert balance(db, buyer) == Decimal("100")
    with db() as uow:
        assert (
            uow.session.execute(text("SELECT lemonsqueezy_customer_id FROM users WHERE id = :u"), {"u": buyer}).scalar()
            == "1"
        )


def test_the_published_order_fixture_is_parsed(db, payments_env, catalogue, buyer):
    # The fixture is a live-mode order for variant 1 of 58.99 USD: adapt the variant and mark it test mode
    event = fixture("order_created")
    event["meta"]["custom_data"] = {"user_id": str(buyer), "kind": "pack", "item_id": str(catalogue.pack_id)}
    event["data"]["attributes"]["first_order_item"]["variant_id"] = 111
    event["data"]["attributes"]["test_mode"] = True
    response = send_lemonsqueezy(event)
    assert response.json["status"] == "processed"
    assert balance(db, buyer) == Decimal("100")
    with db() as uow:
        assert uow.session.execute(text("SELECT amount, currency FROM purchases")).one() == (Decimal("58.990"), "usd")


def test_an_order_of_another_variant_grants_nothing(db, payments_env, catalogue, buyer):
    event = lemonsqueezy_order(user_id=str(buyer), item_id=str(catalogue.pack_id), variant_id="999", total_minor=500)
    assert send_lemonsqueezy(event).json["status"] == "rejected"
    assert balance(db, buyer) == 0


def test_live_orders_are_ignored_by_a_test_deployment(db, payments_env, catalogue, buyer):
    assert send_lemonsqueezy(order(catalogue, buyer, test_mode=False)).json["status"] == "ignored"
    assert balance(db, buyer) == 0


def test_order_refunded_partial_then_full_uses_the_cumulative_amount(db, payments_env, catalogue, buyer):
    created = order(catalogue, buyer, order_id="9002")
    send_lemonsqueezy(created)
    partial = copy.deepcopy(created)
    partial["meta"]["event_name"] = "order_refunded"
    partial["data"]["attributes"].update(refunded_amount=250, status="partial_refund", updated_at=iso(1))
    send_lemonsqueezy(partial)
    assert balance(db, buyer) == Decimal("50")
    full = copy.deepcopy(partial)
    full["data"]["attributes"].update(refunded_amount=500, status="refunded", updated_at=iso(2))
    send_lemonsqueezy(full)
    send_lemonsqueezy(partial)  # a late, older step changes nothing (a duplicate too: same derived id)
    assert balance(db, buyer) == Decimal("0")
    with db() as uow:
        assert uow.session.execute(text("SELECT status FROM purchases")).scalar() == "refunded"
    assert count(db, "refunds") == 2
    assert ledger_is_consistent(db, buyer)


def test_derived_event_ids_are_stable_across_retries_and_distinct_across_events(payments_env):
    from tollgate.payments.signatures import lemonsqueezy_event_id

    body = fixture("subscription_created")
    again = json.loads(json.dumps(body))
    updated = fixture("subscription_updated")
    assert lemonsqueezy_event_id(body, "") == lemonsqueezy_event_id(again, "x")
    assert lemonsqueezy_event_id(body, "") != lemonsqueezy_event_id(updated, "")


# --- subscriptions ----------------------------------------------------------------------------------------------
def sub_event(name: str, buyer, *, status: str = "active", variant: int = 201, updated: str | None = None) -> dict:
    event = fixture("subscription_created")  # the developer guide's example shape
    event["meta"] = {
        "event_name": name,
        "test_mode": True,
        "custom_data": {"user_id": str(buyer), "kind": "plan", "item_id": "x"},
    }
    attrs = event["data"]["attributes"]
    attrs.update(
        status=status,
        variant_id=variant,
        test_mode=True,
        updated_at=updated or iso(),
        urls={
            "customer_portal": "https://store.lemonsqueezy.com/billing?x=1",
            "update_payment_method": "https://store.lemonsqueezy.com/pm",
        },
    )
    event["data"]["id"] = "777"
    return event


def test_subscription_events_move_status_keep_the_previous_variant_and_never_go_backwards(
    db, payments_env, catalogue, buyer
):
    send_lemonsqueezy(sub_event("subscription_created", buyer, status="on_trial", updated=iso(-100)))
    with db() as uow:
        u = uow.session.execute(text("SELECT tier, trial_used FROM users WHERE id = :u"), {"u": buyer}).one()
    assert (u.tier, u.trial_used) == ("PRO", True)
    send_lemonsqueezy(sub_event("subscription_updated", buyer, variant=301, updated=iso(-50)))  # upgrade to BUSINESS
    send_lemonsqueezy(sub_event("subscription_updated", buyer, status="on_trial", updated=iso(-80)))  # late, older
    with db() as uow:
        s = uow.session.execute(
            text("SELECT status, provider_price_id, previous_price_id, tier FROM subscriptions")
        ).one()
    assert (s.status, s.provider_price_id, s.previous_price_id, s.tier) == ("active", "301", "201", "BUSINESS")
    send_lemonsqueezy(sub_event("subscription_cancelled", buyer, status="cancelled", variant=301, updated=iso(-20)))
    with db() as uow:
        assert uow.session.execute(text("SELECT tier FROM users WHERE id = :u"), {"u": buyer}).scalar() == "BUSINESS"
    send_lemonsqueezy(sub_event("subscription_expired", buyer, status="expired", variant=301, updated=iso(-10)))
    send_lemonsqueezy(sub_event("subscription_resumed", buyer, status="active", variant=301, updated=iso(-5)))
    with db() as uow:
        assert uow.session.execute(text("SELECT status FROM subscriptions")).scalar() == "expired"
        u = uow.session.execute(text("SELECT tier, downgrade_count FROM users WHERE id = :u"), {"u": buyer}).one()
    assert (u.tier, u.downgrade_count) == ("FREE", 1)
    # The customer portal comes from the subscription's URLs
    assert (
        api_call("POST", "/billing/portal", body={"provider": "lemonsqueezy"}, as_user=buyer)
        .json["url"]
        .startswith("https://store.lemonsqueezy.com/billing")
    )


def test_payment_success_grants_the_allowance_per_invoice_even_before_the_subscription(
    db, payments_env, catalogue, buyer
):
    invoice = fixture("subscription_payment_success")
    invoice["meta"] = {
        "event_name": "subscription_payment_success",
        "test_mode": True,
        "custom_data": {"user_id": str(buyer), "kind": "plan", "item_id": str(catalogue.pro_id)},
    }
    invoice["data"]["attributes"]["test_mode"] = True
    # When the invoice arrives before its subscription, twice, and the recovered event for it too
    assert send_lemonsqueezy(invoice).json["status"] == "processed"
    send_lemonsqueezy(invoice)
    recovered = copy.deepcopy(invoice)
    recovered["meta"]["event_name"] = "subscription_payment_recovered"
    send_lemonsqueezy(recovered)
    # Then one month of PRO allowance was granted
    assert balance(db, buyer) == Decimal("1000")
    # And the refund of that invoice claws back the allowance's refunded share
    refunded = fixture("subscription_payment_refunded")
    refunded["meta"] = {"event_name": "subscription_payment_refunded", "test_mode": True}
    refunded["data"]["attributes"]["test_mode"] = True
    send_lemonsqueezy(refunded)
    assert balance(db, buyer) == Decimal("0")


def test_payment_failed_mails_the_user(db, payments_env, catalogue, buyer):
    send_lemonsqueezy(sub_event("subscription_created", buyer, updated=iso(-10)))
    failed = fixture("subscription_payment_success")
    failed["meta"] = {"event_name": "subscription_payment_failed", "test_mode": True}
    failed["data"]["id"] = "55"
    failed["data"]["attributes"].update(subscription_id=777, status="failed", test_mode=True)
    assert send_lemonsqueezy(failed).json["status"] == "processed"
    assert count(db, "email_logs", "type = 'payment_failed'") == 1


# --- Clerk ------------------------------------------------------------------------------------------------------
def clerk_fixture(event_type: str = "user.created", **data) -> dict:
    event = json.loads((PROVIDER_FIXTURES / "clerk" / "user.created.json").read_text())
    event["type"] = event_type
    event["data"].update(data)
    return event


def test_clerk_user_created_makes_the_user_and_grants_the_signup_credits_once(db, payments_env):
    event = clerk_fixture()
    body = json.dumps(event)
    first = send_clerk(body, msg_id="msg_1")
    again = send_clerk(body, msg_id="msg_1")  # a Svix retry: same id
    updated = send_clerk(clerk_fixture("user.updated", first_name="Changed"), msg_id="msg_2")
    assert first.json["status"] == "processed" and again.json["duplicate"] and updated.json["status"] == "processed"
    with db() as uow:
        user = (
            uow.session.execute(text("SELECT * FROM users WHERE clerk_id = 'user_29w83sxmDNGwOuEthce5gg56FcC'"))
            .mappings()
            .one()
        )
    assert user["email"] == "example@example.org" and user["email_verified_at"] is not None
    assert user["name"] == "Changed Example"
    assert len(grants(db, user["id"], "signup")) == 1


def test_clerk_user_deleted_soft_deletes_and_a_late_create_does_not_revive(db, payments_env):
    send_clerk(clerk_fixture(), msg_id="msg_c")
    deleted: dict[str, Any] = {
        "data": {"deleted": True, "id": "user_29w83sxmDNGwOuEthce5gg56FcC", "object": "user"},
        "object": "event",
        "type": "user.deleted",
    }
    send_clerk(deleted, msg_id="msg_d")
    send_clerk(clerk_fixture("user.updated", first_name="Ghost"), msg_id="msg_u")
    with db() as uow:
        user = uow.session.execute(text("SELECT deleted_at, name FROM users")).one()
    assert user.deleted_at is not None and user.name != "Ghost Example"
    # A delete of an unknown Clerk id, then its late create: nothing is created
    send_clerk({**deleted, "data": {**deleted["data"], "id": "user_never"}}, msg_id="msg_d2")
    send_clerk(clerk_fixture(id="user_never", email_addresses=[]), msg_id="msg_c2")
    assert count(db, "users", "clerk_id = 'user_never'") == 0


def test_clerk_never_links_an_unverified_email_to_an_existing_account(db, payments_env):
    from tests.support import make_user

    with db() as uow:
        make_user(uow.session, email="example@example.org")
        uow.commit()
    event = clerk_fixture()
    event["data"]["email_addresses"][0]["verification"]["status"] = "unverified"
    assert send_clerk(event, msg_id="msg_x").json["status"] == "rejected"
    assert count(db, "users", "clerk_id IS NOT NULL") == 0
