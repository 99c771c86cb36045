"""Discount codes cannot be guessed, and a minimum amount keeps its currency.

Unknown codes (asked at `POST /discounts/validate` or at checkout) are counted per user and per source IP in
`auth_throttles`; past the limit inside the window the caller gets 429 `too_many_attempts`, for a valid code too.
Everything goes through the real handlers (the gateway's `sourceIp` is the address), except the window's expiry,
which moves the `now` the service takes instead of sleeping."""

# ruff: noqa: F403, F405
from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.commerce_orders_support import *
from tests.payments_support import *
from tests.support import ApiResponse, project_gateway
from tollgate.config import Settings, get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import RateLimited, TollgateError
from tollgate.services import discounts
from tollgate_local.events import HttpRequest, build_http_event, read_http_result

HOME = "203.0.113.9"
ELSEWHERE = "198.51.100.20"
PER_USER, PER_IP, WINDOW, LOCKOUT = 3, 5, 900, 600
LIMITS = {
    "DISCOUNT_MAX_FAILURES_PER_USER": str(PER_USER),
    "DISCOUNT_MAX_FAILURES_PER_IP": str(PER_IP),
    "DISCOUNT_FAILURE_WINDOW_SECONDS": str(WINDOW),
    "DISCOUNT_LOCKOUT_SECONDS": str(LOCKOUT),
}


@pytest.fixture
def limits(monkeypatch: pytest.MonkeyPatch, payments_env: None) -> Iterator[None]:
    """Small limits, so a test reaches them in a few calls."""
    for name, value in LIMITS.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    for name in LIMITS:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


def _call(
    path: str, body: dict[str, Any], user_id: uuid.UUID, ip: str = HOME, headers: tuple[tuple[str, str], ...] = ()
) -> ApiResponse:
    """A request through the project's gateway and handler, from source address `ip` (as API Gateway sets it)."""
    gateway = project_gateway()
    all_headers = [("content-type", "application/json"), *headers]
    request = HttpRequest("POST", path, "", all_headers, json.dumps(body).encode(), ip)
    route, params, _ = gateway.match("POST", path)
    assert route is not None
    event = build_http_event(request, route.route_key, params)
    event["requestContext"]["authorizer"] = {
        "lambda": {"user_id": str(user_id), "role": "USER", "session_id": "", "tier": ""}
    }
    result = read_http_result(gateway.runner.invoke(route.function_id, event))
    return ApiResponse(result.status, dict(result.headers), result.body)


def _validate(user_id: uuid.UUID, item: Item, code: str, ip: str = HOME, quantity: int = 1) -> ApiResponse:
    body = {"code": code, "items": [{"price_id": str(item.price_id), "quantity": quantity}]}
    return _call("/discounts/validate", body, user_id, ip)


def _checkout(user_id: uuid.UUID, item: Item, code: str, ip: str = HOME, quantity: int = 1) -> ApiResponse:
    body = {"items": [{"price_id": str(item.price_id), "quantity": quantity}], "discount_code": code, **URLS}
    return _call("/orders/checkout", body, user_id, ip)


def _unknown(answer: ApiResponse) -> bool:
    return answer.status == 200 and answer.json == {"valid": False, "discount_amount": "0.00", "reason": "unknown_code"}


def _throttled(answer: ApiResponse) -> bool:
    if answer.status != 429 or answer.error_code != "too_many_attempts":
        return False
    return 0 < answer.json["error"]["details"]["retry_after_seconds"] <= LOCKOUT


def _counters(db: Db) -> dict[tuple[str, str], int]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT scope, key, failures FROM auth_throttles WHERE scope LIKE 'discount%'")
        ).all()
        return {(r[0], r[1]): int(r[2]) for r in rows}


# --- per user ----------------------------------------------------------------------------------------------------
def test_a_user_past_the_limit_is_refused_even_a_valid_code_from_any_address(db: Db, limits: None) -> None:
    # Given a real 10 % code and a guesser
    item = product(db)
    discount(db, "REAL10")
    guesser, neighbour = user(db), user(db)
    # When the guesser tries as many unknown codes as the limit allows
    answers = [_validate(guesser, item, f"GUESS{n}") for n in range(PER_USER)]
    # Then each is answered (unknown_code), and counted against the user and the address
    assert all(_unknown(a) for a in answers), [a.json for a in answers]
    assert _counters(db) == {("discount_user", str(guesser)): PER_USER, ("discount_ip", HOME): PER_USER}
    # When the guesser asks again: another guess, the real code, or the real code from another address
    # Then every one is 429 with the seconds to wait: the answer no longer tells codes apart
    assert _throttled(_validate(guesser, item, "GUESSMORE"))
    assert _throttled(_validate(guesser, item, "REAL10"))
    assert _throttled(_validate(guesser, item, "real10", ip=ELSEWHERE))
    # And a refused guess did not reach the code lookup (nothing more was counted for the user)
    assert _counters(db)[("discount_user", str(guesser))] == PER_USER
    # And another user behind the same address is not held up (the address is under its own limit)
    assert _validate(neighbour, item, "REAL10").json == {"valid": True, "discount_amount": "1.00", "reason": None}


def test_a_valid_code_is_not_counted_and_does_not_reset_the_count(db: Db, limits: None) -> None:
    # Given a real code, one real code whose minimum the cart misses, and a guesser who knows them
    item = product(db, amount="10.00")
    discount(db, "REAL10")
    discount(db, "BIG", minimum_amount=Decimal("100"), currency="usd")
    guesser = user(db)
    # When valid codes (applicable or not) are asked many times between the guesses
    for _ in range(PER_USER + 2):
        assert _validate(guesser, item, "REAL10").json["valid"] is True
        assert _validate(guesser, item, "BIG").json["reason"] == "minimum_amount"
    assert _counters(db) == {}
    # Then guesses interleaved with valid codes still add up: the limit-th guess is answered, the next is 429
    for n in range(PER_USER - 1):
        assert _unknown(_validate(guesser, item, f"GUESS{n}"))
        assert _validate(guesser, item, "REAL10").json["valid"] is True
    assert _unknown(_validate(guesser, item, "LASTGUESS"))
    assert _counters(db)[("discount_user", str(guesser))] == PER_USER
    assert _throttled(_validate(guesser, item, "REAL10"))


# --- per source IP -------------------------------------------------------------------------------------------------
def test_many_accounts_behind_one_address_share_its_limit(db: Db, limits: None) -> None:
    # Given a real code and more accounts than the per-IP limit, all behind one address
    item = product(db)
    discount(db, "REAL10")
    accounts = [user(db) for _ in range(PER_IP + 1)]
    # When each account guesses once (no account comes near its own limit)
    answers = [_validate(account, item, f"GUESS{n}") for n, account in enumerate(accounts[:PER_IP])]
    # Then the address's limit is reached after PER_IP guesses, each answered
    assert all(_unknown(a) for a in answers)
    assert _counters(db)[("discount_ip", HOME)] == PER_IP
    # And a fresh account behind that address is refused, even for the real code, at validate and at checkout
    fresh = accounts[PER_IP]
    assert _throttled(_validate(fresh, item, "REAL10"))
    assert _throttled(_checkout(fresh, item, "REAL10"))
    assert count(db, "orders") == 0
    # And the same fresh account from another address is served
    assert _validate(fresh, item, "REAL10", ip=ELSEWHERE).json["valid"] is True


def test_an_ipv6_guesser_counts_by_its_64_prefix(db: Db, limits: None) -> None:
    # Given a real code and a guesser who walks the addresses of one IPv6 /64, one account per guess
    item = product(db)
    discount(db, "REAL10")
    prefix = "2001:db8:1:2:"
    for n in range(PER_IP):
        assert _unknown(_validate(user(db), item, f"GUESS{n}", ip=f"{prefix}{n:x}::{n + 1:x}"))
    # Then every address of that /64 is past the limit, and one of another /64 is not
    assert _counters(db)[("discount_ip", "2001:db8:1:2::/64")] == PER_IP
    assert _throttled(_validate(user(db), item, "REAL10", ip=f"{prefix}ffff:ffff:ffff:ffff"))
    assert _validate(user(db), item, "REAL10", ip="2001:db8:1:3::1").json["valid"] is True
    # And an IPv4 address written as IPv6 counts as the IPv4 address
    assert discounts._ip_key("::ffff:203.0.113.9") == HOME


def test_a_forwarded_for_header_does_not_change_the_counted_address(db: Db, limits: None) -> None:
    # Given a guesser behind one address who names other addresses in forwarding headers
    item = product(db)
    body = {"items": [{"price_id": str(item.price_id), "quantity": 1}]}
    for n in range(PER_IP):
        spoof = (("x-forwarded-for", f"192.0.2.{n}"), ("x-real-ip", f"192.0.2.{n}"))
        assert _unknown(_call("/discounts/validate", {**body, "code": f"GUESS{n}"}, user(db), HOME, spoof))
    # Then every guess counted against the connection's address, none against a header's
    assert {key for scope, key in _counters(db) if scope == "discount_ip"} == {HOME}
    assert _counters(db)[("discount_ip", HOME)] == PER_IP


# --- the window ----------------------------------------------------------------------------------------------------
def test_the_window_and_the_lockout_end(db: Db, limits: None) -> None:
    # Given a real code and a guesser asking through the service with a clock of its own
    item = product(db)
    discount(db, "REAL10")
    guesser = user(db)
    start = utcnow()

    def ask(code: str, at: timedelta) -> discounts.Verdict:
        return discounts.validate(
            UnitOfWork(), guesser, code=code, items=[(item.price_id, 1)], ip=ELSEWHERE, now=start + at
        )

    # When the guesser stays one short of the limit, then waits out the window
    for n in range(PER_USER - 1):
        assert ask(f"GUESS{n}", timedelta(seconds=n)).reason == "unknown_code"
    after_window = timedelta(seconds=WINDOW + 1)
    # Then the count starts again: the limit's worth of guesses are answered after the window
    for n in range(PER_USER):
        assert ask(f"LATER{n}", after_window + timedelta(seconds=n)).reason == "unknown_code"
    assert _counters(db)[("discount_user", str(guesser))] == PER_USER
    # And the next one is refused until the lockout ends (the last second of it included)
    reached = after_window + timedelta(seconds=PER_USER - 1)
    with pytest.raises(RateLimited) as refused:
        ask("REAL10", reached + timedelta(seconds=1))
    assert refused.value.details["retry_after_seconds"] == LOCKOUT - 1
    with pytest.raises(RateLimited):
        ask("REAL10", reached + timedelta(seconds=LOCKOUT - 1))
    # And once it has passed, the real code is answered and a new guess starts a new count
    assert ask("REAL10", reached + timedelta(seconds=LOCKOUT)).valid is True
    assert ask("GUESSAGAIN", reached + timedelta(seconds=LOCKOUT + 1)).reason == "unknown_code"
    assert _counters(db)[("discount_user", str(guesser))] == 1


# --- checkout ------------------------------------------------------------------------------------------------------
def test_a_wrong_code_at_checkout_counts_and_leaves_nothing_behind(db: Db, limits: None, stripe_api: Any) -> None:
    # Given a product with tracked stock, a limited code, and a buyer
    item = product(db, stock=5)
    code_id = discount(db, "REAL10", max_uses=5)
    buyer = user(db)
    # When the buyer checks out with unknown codes up to the limit
    for n in range(PER_USER):
        answer = _checkout(buyer, item, f"GUESS{n}")
        # Then each is 422 unknown_code, and leaves no order, no stock taken, no use reserved, no Stripe session
        assert answer.status == 422 and answer.json["error"]["details"]["reason"] == "unknown_code", answer.json
    assert (count(db, "orders"), count(db, "order_items"), count(db, "discount_usages")) == (0, 0, 0)
    assert stock(db, item) == 5 and uses(db, code_id) == (0, 0) and stripe_api.sessions == {}
    # And they counted like guesses at validate: the real code is now refused at checkout and at validate
    assert _counters(db)[("discount_user", str(buyer))] == PER_USER
    assert _throttled(_checkout(buyer, item, "REAL10"))
    assert _throttled(_validate(buyer, item, "REAL10"))
    assert (count(db, "orders"), count(db, "discount_usages"), stock(db, item)) == (0, 0, 5)
    # And a checkout with no code at all is not held up
    plain = checkout(buyer, [(item, 1)])
    assert plain.status == 201, plain.json
    assert stock(db, item) == 4


def test_validate_and_checkout_guesses_add_up(db: Db, limits: None, stripe_api: Any) -> None:
    # Given a buyer who spreads guesses over validate and checkout
    item = product(db)
    discount(db, "REAL10")
    buyer = user(db)
    assert _unknown(_validate(buyer, item, "GUESSA"))
    assert _checkout(buyer, item, "GUESSB").status == 422
    assert _unknown(_validate(buyer, item, "GUESSC", ip=ELSEWHERE))
    # Then the third guess reached the user's limit, whichever route and address carried it
    assert _throttled(_checkout(buyer, item, "REAL10", ip=ELSEWHERE))
    assert count(db, "orders") == 0
    # And a valid code at checkout below the limit neither counts nor opens anything it should not
    other = user(db)
    made = _checkout(other, item, "REAL10")
    assert made.status == 201 and ("discount_user", str(other)) not in _counters(db)


# --- races ---------------------------------------------------------------------------------------------------------
def _race(n: int, fn: Any) -> list[object]:
    results: list[object] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = fn(i)
        except TollgateError as exc:
            results[i] = exc.code

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_guesses_get_no_more_answers_than_the_limit(db: Db, limits: None) -> None:
    # Given one guesser firing many unknown codes at once, each from a different address
    item = product(db)
    guesser = user(db)
    n = 12
    results = _race(
        n,
        lambda i: (
            discounts.validate(
                UnitOfWork(), guesser, code=f"RACE{i}", items=[(item.price_id, 1)], ip=f"192.0.2.{i + 1}"
            ).reason
        ),
    )
    # Then exactly the limit's worth were answered, the rest refused, and the count is every guess that ran
    assert results.count("unknown_code") == PER_USER, results
    assert results.count("too_many_attempts") == n - PER_USER, results
    assert PER_USER <= _counters(db)[("discount_user", str(guesser))] <= n


# --- a minimum amount is in the discount's currency --------------------------------------------------------------
def test_a_percentage_minimum_refuses_a_cart_in_another_currency(db: Db, limits: None, stripe_api: Any) -> None:
    # Given a 10 % code with a minimum of 50 USD, and carts of 60 in USD, EUR and JPY
    usd, eur = product(db, amount="60.00"), product(db, amount="60.00", currency="eur")
    jpy = product(db, amount="6000", currency="jpy")
    discount(db, "MIN50USD", minimum_amount=Decimal("50"), currency="usd")
    buyer = user(db)
    # When each cart asks for the code
    # Then the USD cart gets it, the others are refused as currency_mismatch (not compared as if in dollars)
    assert _validate(buyer, usd, "MIN50USD").json == {"valid": True, "discount_amount": "6.00", "reason": None}
    for item in (eur, jpy):
        assert _validate(buyer, item, "MIN50USD").json["reason"] == "currency_mismatch"
        refused = _checkout(buyer, item, "MIN50USD")
        assert refused.status == 422 and refused.json["error"]["details"] == {
            "reason": "currency_mismatch", "currency": "usd",
        }  # fmt: skip
    # And a USD cart under the minimum is still minimum_amount; at it, the code applies at checkout
    assert _validate(buyer, product(db, amount="49.99"), "MIN50USD").json["reason"] == "minimum_amount"
    assert _checkout(buyer, usd, "MIN50USD").status == 201
    # And none of it counted as a guess (the code exists)
    assert _counters(db) == {}
    assert count(db, "orders") == 1


def test_a_percentage_code_without_a_minimum_applies_in_any_currency(db: Db, limits: None) -> None:
    # Given a 10 % code with no minimum (its currency, if any, bounds nothing)
    discount(db, "ANY10")
    discount(db, "ANY10USD", currency="usd")
    buyer = user(db)
    # When carts in EUR and JPY ask for it, then it applies to each in the cart's own currency
    eur = _validate(buyer, product(db, amount="20.00", currency="eur"), "ANY10").json
    jpy = _validate(buyer, product(db, amount="2000", currency="jpy"), "ANY10USD").json
    assert (eur["valid"], eur["discount_amount"]) == (True, "2.00")
    assert (jpy["valid"], jpy["discount_amount"]) == (True, "200.00")


def test_fixed_amount_codes_keep_their_currency_rule(db: Db, limits: None) -> None:
    # Given 5 USD off with a minimum of 30 USD
    discount(db, "FIVE", type="FIXED_AMOUNT", value=5, currency="usd", minimum_amount=Decimal("30"))
    buyer = user(db)
    # Then a EUR cart is refused as currency_mismatch, a small USD cart as minimum_amount, a big one gets 5.00
    assert _validate(buyer, product(db, amount="40.00", currency="eur"), "FIVE").json["reason"] == "currency_mismatch"
    assert _validate(buyer, product(db, amount="20.00"), "FIVE").json["reason"] == "minimum_amount"
    assert _validate(buyer, product(db, amount="40.00"), "FIVE").json["discount_amount"] == "5.00"


def test_admins_cannot_set_a_minimum_without_its_currency(db: Db, payments_env: None) -> None:
    # Given an admin
    admin = user(db, "ADMIN")
    body = {"code": "MINNOCUR", "name": "m", "type": "percentage", "value": "10", "minimum_amount": "50"}
    # When a percentage code with a minimum but no currency is created, then 422 naming the field, nothing written
    refused = api_call("POST", "/admin/discounts", body=body, as_user=admin, role="ADMIN")
    assert refused.status == 422 and refused.json["error"]["details"] == {"field": "currency"}, refused.json
    assert count(db, "discounts") == 0
    # When it names its currency, then it is created
    made = api_call("POST", "/admin/discounts", body={**body, "currency": "EUR"}, as_user=admin, role="ADMIN")
    assert made.status == 201 and made.json["currency"] == "eur"
    # And its currency cannot be taken away while it has a minimum
    cleared = api_call(
        "PATCH", f"/admin/discounts/{made.json['id']}", body={"currency": None}, as_user=admin, role="ADMIN"
    )
    assert cleared.status == 422 and cleared.json["error"]["details"] == {"field": "currency"}
    # And a row from before the rule (a minimum, no currency) can still be switched off, but not given a new minimum
    legacy = discount(db, "LEGACY", minimum_amount=Decimal("50"))
    off = api_call("PATCH", f"/admin/discounts/{legacy}", body={"active": False}, as_user=admin, role="ADMIN")
    assert off.status == 200 and off.json["active"] is False
    raised = api_call("PATCH", f"/admin/discounts/{legacy}", body={"minimum_amount": "60"}, as_user=admin, role="ADMIN")
    assert raised.status == 422


def test_the_defaults_are_ten_per_user_and_thirty_per_address_in_fifteen_minutes() -> None:
    defaults = Settings.model_fields
    assert defaults["discount_max_failures_per_user"].default == 10
    assert defaults["discount_max_failures_per_ip"].default == 30
    assert defaults["discount_failure_window_seconds"].default == 900
    assert defaults["discount_lockout_seconds"].default == 900
