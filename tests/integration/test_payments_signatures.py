"""The signature battery: every forged, altered or stale delivery answers 4xx and stores nothing."""

# ruff: noqa: F403, F405
from __future__ import annotations

import base64
import json

import pytest

from tests.payments_support import *
from tollgate_local.webhooks_cli import (
    clerk_headers,
    lemonsqueezy_order,
    lemonsqueezy_signature,
    stripe_checkout_session,
    stripe_event,
    stripe_signature,
)


@pytest.fixture
def stripe_body(catalogue, buyer) -> str:
    session = stripe_checkout_session(
        user_id=str(buyer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd"
    )
    return json.dumps(stripe_event("checkout.session.completed", session))


def refused(response, db) -> None:
    assert 400 <= response.status < 500, response.body
    assert response.error_code in {"invalid_signature", "malformed_json"}
    assert count(db, "webhook_events") == 0
    assert count(db, "purchases") == 0
    assert count(db, "credit_grants") == 0


def flip(body: str) -> str:
    # one byte changed inside a value (the JSON stays valid)
    i = body.index('"usd"') + 1
    return body[:i] + ("U" if body[i] == "u" else "u") + body[i + 1 :]


# --- Stripe -----------------------------------------------------------------------------------------------------
def test_stripe_one_flipped_byte(db, payments_env, stripe_body):
    refused(send_stripe(flip(stripe_body), header=stripe_signature(stripe_body, STRIPE_SECRET)), db)


def test_stripe_reserialised_json(db, payments_env, stripe_body):
    # Same data, other bytes (indentation): the signature is over the raw body, so it fails
    reserialised = json.dumps(json.loads(stripe_body), indent=2)
    refused(send_stripe(reserialised, header=stripe_signature(stripe_body, STRIPE_SECRET)), db)


def test_stripe_missing_header(db, payments_env, stripe_body):
    refused(send_stripe(stripe_body, header=""), db)


def test_stripe_old_timestamp(db, payments_env, stripe_body):
    refused(send_stripe(stripe_body, timestamp=now() - 301), db)


def test_stripe_future_timestamp(db, payments_env, stripe_body):
    # More than the 5-minute tolerance ahead is refused (6 minutes: clear of the seconds the call itself takes)
    refused(send_stripe(stripe_body, timestamp=now() + 360), db)


def test_stripe_slightly_future_timestamp_within_tolerance_is_accepted(db, payments_env, stripe_body):
    # A sender's clock a few minutes fast is within the tolerance
    assert send_stripe(stripe_body, timestamp=now() + 240).status == 200


def test_stripe_wrong_secret(db, payments_env, stripe_body):
    refused(send_stripe(stripe_body, secret="whsec_not_the_one"), db)


def test_stripe_two_signatures_during_rotation_are_accepted(db, payments_env, stripe_body):
    # Stripe signs with the old and the new secret while both are active: one v1 matching is enough
    t = now()
    ours = stripe_signature(stripe_body, STRIPE_SECRET, t).split(",v1=")[1]
    other = stripe_signature(stripe_body, "whsec_rolled_secret", t).split(",v1=")[1]
    response = send_stripe(stripe_body, header=f"t={t},v1={other},v1={ours}")
    assert response.status == 200 and response.json["status"] == "processed"


def test_stripe_rotation_on_our_side_accepts_either_configured_secret(db, payments_env, stripe_body, monkeypatch):
    from tollgate.config import get_settings

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", f"whsec_new_secret,{STRIPE_SECRET}")
    get_settings.cache_clear()
    assert send_stripe(stripe_body).status == 200


def test_stripe_base64_encoded_bodies_are_verified_on_their_decoded_bytes(db, payments_env, stripe_body):
    from tests.support import project_gateway
    from tollgate_local.events import HttpRequest, build_http_event, read_http_result

    gateway = project_gateway()
    route, params, _ = gateway.match("POST", "/webhooks/stripe")
    assert route is not None
    headers = [("content-type", "application/json"), ("stripe-signature", stripe_signature(stripe_body, STRIPE_SECRET))]
    event = build_http_event(
        HttpRequest("POST", "/webhooks/stripe", "", headers, stripe_body.encode(), "1.2.3.4"), route.route_key, params
    )
    event["body"] = base64.b64encode(stripe_body.encode()).decode()
    event["isBase64Encoded"] = True
    result = read_http_result(gateway.runner.invoke(route.function_id, event))
    assert result.status == 200


# --- Lemon Squeezy ----------------------------------------------------------------------------------------------
@pytest.fixture
def ls_body(catalogue, buyer) -> str:
    return json.dumps(
        lemonsqueezy_order(user_id=str(buyer), item_id=str(catalogue.pack_id), variant_id="111", total_minor=500)
    )


def test_lemonsqueezy_one_flipped_byte(db, payments_env, ls_body):
    refused(
        send_lemonsqueezy(
            flip(ls_body.replace('"USD"', '"usd"')), signature=lemonsqueezy_signature(ls_body.encode(), LS_SECRET)
        ),
        db,
    )


def test_lemonsqueezy_reserialised_json(db, payments_env, ls_body):
    refused(
        send_lemonsqueezy(
            json.dumps(json.loads(ls_body), indent=1), signature=lemonsqueezy_signature(ls_body.encode(), LS_SECRET)
        ),
        db,
    )


def test_lemonsqueezy_missing_and_wrong_signatures(db, payments_env, ls_body):
    refused(send_lemonsqueezy(ls_body, signature=""), db)
    refused(send_lemonsqueezy(ls_body, secret="not-the-secret"), db)


def test_lemonsqueezy_valid_signature_is_accepted(db, payments_env, ls_body):
    assert send_lemonsqueezy(ls_body).status == 200


# --- Clerk (Svix) -----------------------------------------------------------------------------------------------
@pytest.fixture
def clerk_body() -> str:
    return (PROVIDER_FIXTURES / "clerk" / "user.created.json").read_text()


from tests.conftest import PROVIDER_FIXTURES  # noqa: E402


def clerk_send(body: str, headers: dict[str, str]):
    from tests.support import api_call

    return api_call("POST", "/webhooks/clerk", raw_body=body.encode(), headers=headers)


def test_clerk_one_flipped_byte(db, payments_env, clerk_body):
    headers = clerk_headers(clerk_body, CLERK_SECRET)
    refused(clerk_send(clerk_body.replace("Example", "Exbmple", 1), headers), db)


def test_clerk_old_and_future_timestamps(db, payments_env, clerk_body):
    refused(clerk_send(clerk_body, clerk_headers(clerk_body, CLERK_SECRET, timestamp=now() - 400)), db)
    refused(clerk_send(clerk_body, clerk_headers(clerk_body, CLERK_SECRET, timestamp=now() + 400)), db)


def test_clerk_missing_headers_and_wrong_secret(db, payments_env, clerk_body):
    headers = clerk_headers(clerk_body, CLERK_SECRET)
    refused(clerk_send(clerk_body, {k: v for k, v in headers.items() if k != "svix-signature"}), db)
    refused(clerk_send(clerk_body, clerk_headers(clerk_body, "whsec_" + base64.b64encode(b"another").decode())), db)
    refused(clerk_send(clerk_body, {**headers, "svix-signature": "garbage-without-version"}), db)


def test_clerk_two_signatures_during_rotation_are_accepted(db, payments_env, clerk_body):
    headers = clerk_headers(clerk_body, CLERK_SECRET, msg_id="msg_rot")
    other = clerk_headers(
        clerk_body,
        "whsec_" + base64.b64encode(b"old-secret").decode(),
        msg_id="msg_rot",
        timestamp=int(headers["svix-timestamp"]),
    )
    headers["svix-signature"] = other["svix-signature"] + " " + headers["svix-signature"]
    assert clerk_send(clerk_body, headers).status == 200


def test_a_missing_secret_is_a_configuration_error_not_a_pass(db, payments_env, stripe_body, monkeypatch):
    from tollgate.config import get_settings

    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET")
    get_settings.cache_clear()
    response = send_stripe(stripe_body)
    assert response.status == 500 and response.error_code == "configuration_error"
    assert count(db, "webhook_events") == 0
