"""Pure pieces of payments: money units, the refund share, Lemon Squeezy event ids, signature checks."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from decimal import Decimal

import pytest

from tollgate.errors import ConfigurationError, InvalidSignature
from tollgate.payments.money import to_major, to_minor
from tollgate.payments.signatures import (
    lemonsqueezy_event_id,
    parse_time,
    verify_clerk,
    verify_lemonsqueezy,
    verify_stripe,
)
from tollgate.services.payment_events.handling import reversal_target
from tollgate_local.webhooks_cli import clerk_headers, stripe_signature


@pytest.mark.parametrize(
    ("minor", "currency", "major"),
    [
        (500, "usd", Decimal("5.000")),
        (500, "JPY", Decimal("500.000")),
        (1234, "kwd", Decimal("1.234")),
        (None, "usd", 0),
    ],
)
def test_minor_units_convert_exactly(minor, currency, major):
    assert to_major(minor, currency) == major
    if minor is not None:
        assert to_minor(major, currency) == minor


def test_an_amount_finer_than_the_currency_is_refused():
    with pytest.raises(ValueError, match="finer"):
        to_minor(Decimal("5.001"), "usd")


@pytest.mark.parametrize(
    ("reversed_money", "expected"),
    [
        (Decimal("0"), Decimal("0")),
        (Decimal("1.00"), Decimal("20.0000")),
        (Decimal("3.00"), Decimal("60.0000")),
        (Decimal("5.00"), Decimal("100")),
        (Decimal("9.00"), Decimal("100")),  # refund + dispute beyond the total: never more than granted
    ],
)
def test_the_refunded_share_is_computed_on_cumulative_amounts(reversed_money, expected):
    assert reversal_target(Decimal("100"), Decimal("5.00"), reversed_money) == expected


def test_thirds_add_up_to_the_whole_grant():
    # Three refunds of a third each ask back, cumulatively, exactly the grant (no rounding drift)
    total, credits = Decimal("3.00"), Decimal("100")
    steps = [reversal_target(credits, total, Decimal(n)) for n in ("1.00", "2.00", "3.00")]
    assert steps[-1] == credits
    assert steps == sorted(steps)


def test_a_free_purchase_has_nothing_to_reverse():
    assert reversal_target(Decimal("100"), Decimal("0"), Decimal("0")) == 0


def test_lemonsqueezy_ids_are_stable_and_distinguish_events():
    body = {
        "meta": {"event_name": "order_refunded"},
        "data": {"type": "orders", "id": "1", "attributes": {"updated_at": "A"}},
    }
    same = json.loads(json.dumps(body))
    later = json.loads(json.dumps(body))
    later["data"]["attributes"]["updated_at"] = "B"
    assert lemonsqueezy_event_id(body, "x") == lemonsqueezy_event_id(same, "y")
    assert lemonsqueezy_event_id(body, "") != lemonsqueezy_event_id(later, "")
    assert lemonsqueezy_event_id({"meta": {}}, "raw-1") != lemonsqueezy_event_id({"meta": {}}, "raw-2")


def test_provider_times_parse():
    epoch, stamped = parse_time(0), parse_time("2023-01-17T12:26:23.000000Z")
    assert epoch is not None and epoch.year == 1970
    assert stamped is not None and stamped.tzinfo is not None
    assert parse_time("not a time") is None and parse_time(None) is None and parse_time(True) is None


def test_stripe_verification():
    body = json.dumps({"id": "evt_1", "type": "x", "created": 1, "livemode": True})
    event = verify_stripe(body.encode(), {"Stripe-Signature": stripe_signature(body, "whsec_a")}, "whsec_a")
    assert (event.event_id, event.type, event.livemode) == ("evt_1", "x", True)
    with pytest.raises(InvalidSignature):
        verify_stripe(body.encode(), {"Stripe-Signature": stripe_signature(body, "whsec_b")}, "whsec_a")
    with pytest.raises(InvalidSignature):
        future = stripe_signature(body, "whsec_a", int(time.time()) + 600)
        verify_stripe(body.encode(), {"Stripe-Signature": future}, "whsec_a")
    with pytest.raises(InvalidSignature):  # a valid signature over a body that is not an event
        verify_stripe(b"[]", {"Stripe-Signature": stripe_signature("[]", "whsec_a")}, "whsec_a")
    with pytest.raises(ConfigurationError):
        verify_stripe(body.encode(), {"Stripe-Signature": "t=1,v1=00"}, None)


def test_lemonsqueezy_verification_compares_hex_hmac():
    body = json.dumps(
        {"meta": {"event_name": "order_created", "test_mode": True}, "data": {"id": "1", "type": "orders"}}
    )
    good = hmac.new(b"s3cret", body.encode(), hashlib.sha256).hexdigest()
    event = verify_lemonsqueezy(body.encode(), {"X-Signature": good.upper()}, "s3cret")
    assert event.type == "order_created" and event.livemode is False and event.event_id.startswith("ls_")
    with pytest.raises(InvalidSignature):
        verify_lemonsqueezy(body.encode(), {"X-Signature": good[:-1] + ("0" if good[-1] != "0" else "1")}, "s3cret")


def test_clerk_verification_uses_the_svix_scheme():
    secret = "whsec_" + base64.b64encode(b"clerk-secret").decode()
    body = json.dumps({"type": "user.created", "data": {"id": "user_1"}, "timestamp": 1654012591835})
    headers = clerk_headers(body, secret, msg_id="msg_1")
    event = verify_clerk(body.encode(), headers, secret)
    assert (event.event_id, event.type, event.livemode) == ("msg_1", "user.created", None)
    with pytest.raises(InvalidSignature):
        verify_clerk(body.encode(), {**headers, "svix-id": "msg_2"}, secret)  # the id is signed too
