"""Attacks on the discount-code throttle (issue 13): crafted codes, address forms, races at the limit, checkouts
that fail after the count, the answers that tell codes apart, and the minimum amount's currency.

Everything goes through the real gateway and handler where a route is involved (the gateway's `sourceIp` is the
address); a race runs the racing request as another container would, on an engine of its own."""

# ruff: noqa: F403, F405, RUF001
from __future__ import annotations

import json
import threading
import time
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
from tollgate.auth import throttle
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.db.engine import build_engine, build_session_factory
from tollgate.errors import RateLimited, TollgateError
from tollgate.services import discounts, orders
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
    """Small limits, so a probe reaches them in a few calls."""
    for name, value in LIMITS.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    for name in LIMITS:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()


def _call(path: str, body: Any, user_id: uuid.UUID, ip: str = HOME, raw: bytes | None = None) -> ApiResponse:
    """A request through the project's gateway and handler, from source address `ip` (as API Gateway sets it)."""
    gateway = project_gateway()
    payload = raw if raw is not None else json.dumps(body).encode()
    request = HttpRequest("POST", path, "", [("content-type", "application/json")], payload, ip)
    route, params, _ = gateway.match("POST", path)
    assert route is not None
    event = build_http_event(request, route.route_key, params)
    event["requestContext"]["authorizer"] = {
        "lambda": {"user_id": str(user_id), "role": "USER", "session_id": "", "tier": ""}
    }
    result = read_http_result(gateway.runner.invoke(route.function_id, event))
    return ApiResponse(result.status, dict(result.headers), result.body)


def _validate(user_id: uuid.UUID, item: Item, code: Any, ip: str = HOME) -> ApiResponse:
    return _call(
        "/discounts/validate", {"code": code, "items": [{"price_id": str(item.price_id), "quantity": 1}]}, user_id, ip
    )


def _checkout(user_id: uuid.UUID, item: Item, code: Any, ip: str = HOME, quantity: int = 1) -> ApiResponse:
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


def _guess_up_to(user_id: uuid.UUID, item: Item, n: int, ip: str = HOME) -> None:
    for i in range(n):
        assert _unknown(_validate(user_id, item, f"GUESS{uuid.uuid4().hex[:8]}{i}", ip))


# --- a lookup racing the guess that reaches the limit ----------------------------------------------------------
def _waiting_on_a_row_lock(session: Any) -> int:
    # pg_locks is live (pg_stat_activity would be a snapshot for the whole transaction).
    return int(session.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")).scalar_one())


@pytest.mark.parametrize("route", ["validate", "checkout"])
def test_a_valid_code_asked_while_a_guess_reaches_the_limit_waits_for_that_guess(
    db: Db, limits: None, stripe_api: Any, route: str
) -> None:
    """A burst of guesses must not be an oracle: every guess past the limit is refused, so a valid code asked in
    the same burst must be refused too once the limit is reached, or 'answered' would still mean 'exists'."""
    # Given a real code and a guesser one short of the limit
    item = product(db)
    discount(db, "REAL10")
    guesser = user(db)
    _guess_up_to(guesser, item, PER_USER - 1)
    # And, in another container, the guess that reaches the limit, counted but not yet committed
    container = build_engine(get_settings())
    answers: list[ApiResponse] = []
    try:
        with UnitOfWork(build_session_factory(container)) as racing:
            assert throttle.record_failure(racing.session, "discount_user", str(guesser), utcnow())
            # When the guesser asks for the real code in that moment
            ask = _validate if route == "validate" else _checkout
            asker = threading.Thread(target=lambda: answers.append(ask(guesser, item, "REAL10")))
            asker.start()
            deadline = time.monotonic() + 10
            while asker.is_alive() and not _waiting_on_a_row_lock(racing.session) and time.monotonic() < deadline:
                time.sleep(0.01)
            # Then the lookup waits for the racing guess (on its counter row) instead of answering past it
            assert asker.is_alive(), f"answered while the limit was being reached: {answers[0].json}"
            assert _waiting_on_a_row_lock(racing.session) > 0
            racing.commit()
        asker.join(20)
    finally:
        container.dispose()
    # And once that guess is in, the real code is refused like every other request of the burst
    assert len(answers) == 1 and _throttled(answers[0]), answers[0].json
    assert (count(db, "orders"), count(db, "discount_usages")) == (0, 0)


def test_racing_guesses_and_valid_codes_from_many_containers_never_deadlock(
    db: Db, limits: None, stripe_api: Any
) -> None:
    # Given a real code, a guesser and a neighbour behind one address, and eight containers (each its own pool, as
    # Lambda's are) asking at validate and at checkout, known and unknown codes mixed
    item = product(db)
    discount(db, "REAL10")
    guesser, neighbour = user(db), user(db)
    engines = [build_engine(get_settings()) for _ in range(8)]
    results: list[object] = [None] * len(engines)
    start = threading.Barrier(len(engines))

    def run(i: int) -> None:
        who = neighbour if i % 4 == 0 else guesser
        code = "REAL10" if i % 2 else f"RACE{i}"
        uow = UnitOfWork(build_session_factory(engines[i]))
        start.wait()
        try:
            if i % 3 == 0:
                orders.checkout(uow, who, items=[(item.price_id, 1)], discount_code=code, ip=HOME, **URLS)
                results[i] = "ordered"
            else:
                verdict = discounts.validate(uow, who, code=code, items=[(item.price_id, 1)], ip=HOME)
                results[i] = verdict.reason or "valid"
        except TollgateError as exc:
            results[i] = (
                exc.details.get("reason") if isinstance(exc.details, dict) and exc.details.get("reason") else exc.code
            )
        except Exception as exc:  # a deadlock or a lock timeout lands here
            results[i] = repr(exc)

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(engines))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for engine in engines:
            engine.dispose()
    # When they race, then each gets an answer of the API (no deadlock, no lock timeout)
    assert set(results) <= {"valid", "ordered", "unknown_code", "too_many_attempts"}, results
    # And never more unknown_code answers than a limit allows: the guesser's, and the shared address's
    guessers = [r for i, r in enumerate(results) if i % 4]
    assert guessers.count("unknown_code") <= PER_USER and results.count("unknown_code") <= PER_IP, results


# --- crafted codes ---------------------------------------------------------------------------------------------
CRAFTED = [
    "REAL10\x00",  # a NUL byte (Postgres text cannot hold one)
    "REAL\x0010",
    "R" * 65,  # one past the longest code
    "R" * 200_000,  # a huge one
    "ＲＥＡＬ１０",  # fullwidth letters and digits (NFKC would make REAL10)
    "ſ",  # LATIN SMALL LETTER LONG S: Python's upper() makes it S
    "REAL10\u200b",  # a zero-width space inside
    "REAL 10",
    "",
    "   ",
    "REAL10' OR '1'='1",
    "%",
    12,
    ["REAL10"],
]


@pytest.mark.parametrize("code", CRAFTED, ids=range(len(CRAFTED)))
def test_a_crafted_code_is_refused_as_input_the_same_way_for_a_real_code_and_counts_nothing(
    db: Db, limits: None, code: Any
) -> None:
    # Given a real code REAL10 (and a one-letter code S a case-folding quirk could reach)
    item = product(db)
    discount(db, "REAL10")
    discount(db, "S")
    guesser = user(db)
    # When a crafted code is asked at validate and at checkout
    answers = [_validate(guesser, item, code), _checkout(guesser, item, code)]
    # Then each is refused as input, 422 validation_error (400 invalid_text for a NUL): never a 500, never an
    # answer about REAL10 or S
    for answer in answers:
        refused = (answer.status, answer.error_code)
        assert refused in {(422, "validation_error"), (400, "invalid_text")}, answer.json
    # And nothing was counted, ordered or reserved
    assert _counters(db) == {}
    assert (count(db, "orders"), count(db, "discount_usages")) == (0, 0)


def test_a_code_the_route_would_refuse_is_just_unknown_to_the_service(db: Db, limits: None) -> None:
    # Given a real code and a service caller that skips the route's input checks
    item = product(db)
    discount(db, "REAL10")
    guesser = user(db)
    # When the service is asked a 100 000-character code and one of regex-like characters
    for code in ("Q" * 100_000, "REAL1_", "%"):
        verdict = discounts.validate(UnitOfWork(), guesser, code=code, items=[(item.price_id, 1)], ip=ELSEWHERE)
        # Then it is an unknown code like any other (counted; matched by equality, no pattern), not an error
        assert verdict.reason == "unknown_code"
    assert _counters(db)[("discount_user", str(guesser))] == 3


def test_case_and_surrounding_blanks_name_the_same_code_and_count_nothing(
    db: Db, limits: None, stripe_api: Any
) -> None:
    # Given a real code and a buyer
    item = product(db)
    discount(db, "Real10")
    buyer = user(db)
    # When it is asked in other cases and with surrounding blanks, many more times than the limit
    for _ in range(PER_USER + 1):
        for variant in ("REAL10", "real10", "rEaL10", "  REAL10 ", "\tReal10\n"):
            # Then each is the same valid code, at 10 %
            assert _validate(buyer, item, variant).json == {"valid": True, "discount_amount": "1.00", "reason": None}
    # And none of it counted
    assert _counters(db) == {}
    # And a checkout with a variant records the code as the admin wrote it
    made = _checkout(buyer, item, " real10 ")
    assert made.status == 201, made.json
    assert order_row(db, made.json["order_id"])["discount_code"] == "Real10"


def test_a_near_miss_of_a_real_code_is_an_unknown_code_like_any_other(db: Db, limits: None) -> None:
    # Given a real code and a guesser who tries codes one character off it, and codes nowhere near it
    item = product(db)
    discount(db, "REAL10")
    guesser = user(db)
    near = [_validate(guesser, item, code) for code in ("REAL1", "REAL100", "REAL1O")]
    far = _validate(user(db), item, "ZZZZZZZZ", ip=ELSEWHERE)
    # Then each answer is exactly the far one's: nothing says "close"
    assert all(a.status == far.status and a.json == far.json for a in near), [a.json for a in near]
    # And every near miss counted
    assert _counters(db)[("discount_user", str(guesser))] == 3


# --- addresses ------------------------------------------------------------------------------------------------
def test_one_account_walking_many_addresses_is_held_by_its_own_limit(db: Db, limits: None) -> None:
    # Given a real code and a guesser who asks each guess from a new address
    item = product(db)
    discount(db, "REAL10")
    guesser = user(db)
    for n in range(PER_USER):
        assert _unknown(_validate(guesser, item, f"WALK{n}", ip=f"192.0.2.{n + 1}"))
    # Then from any further address, and at checkout too, the account is refused, the real code included
    assert _throttled(_validate(guesser, item, "REAL10", ip="192.0.2.200"))
    assert _throttled(_checkout(guesser, item, "REAL10", ip="2001:db8:9::1"))
    # And no address is near its own limit
    assert all(n == 1 for (scope, _), n in _counters(db).items() if scope == "discount_ip")


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("2001:DB8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:0db8:0001:0002:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:0:0:0:7", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:203.0.113.9", HOME),
        ("0:0:0:0:0:ffff:cb00:7109", HOME),
        ("::FFFF:CB00:7109", HOME),
        ("203.0.113.9", HOME),
    ],
)
def test_address_spellings_count_on_one_key(written: str, key: str) -> None:
    # Given an address as a gateway may write it, then it counts on its canonical key
    assert discounts._ip_key(written) == key


def test_an_ipv4_caller_seen_as_ipv6_shares_its_ipv4_count(db: Db, limits: None) -> None:
    # Given a real code and accounts behind one IPv4 address, some seen as IPv4-mapped IPv6
    item = product(db)
    discount(db, "REAL10")
    for n in range(PER_IP):
        ip = HOME if n % 2 else "::ffff:203.0.113.9"
        assert _unknown(_validate(user(db), item, f"MAPPED{n}", ip=ip))
    # Then the one address is past its limit in either spelling
    assert _counters(db)[("discount_ip", HOME)] == PER_IP
    assert _throttled(_validate(user(db), item, "REAL10", ip="::ffff:cb00:7109"))
    assert _throttled(_validate(user(db), item, "REAL10", ip=HOME))


def test_accounts_behind_one_address_reach_its_limit_through_checkout_too(
    db: Db, limits: None, stripe_api: Any
) -> None:
    # Given a real code and accounts behind one address, each guessing once at checkout
    item = product(db, stock=3)
    discount(db, "REAL10")
    for n in range(PER_IP):
        answer = _checkout(user(db), item, f"SHOP{n}")
        assert answer.status == 422 and answer.json["error"]["details"]["reason"] == "unknown_code"
    # Then a fresh account there is refused at validate and checkout, with nothing ordered or taken from stock
    fresh = user(db)
    assert _throttled(_validate(fresh, item, "REAL10"))
    assert _throttled(_checkout(fresh, item, "REAL10"))
    assert (count(db, "orders"), stock(db, item), stripe_api.sessions) == (0, 3, {})


# --- checkouts that fail --------------------------------------------------------------------------------------
def test_an_unknown_code_with_a_cart_that_cannot_be_bought_still_counts(db: Db, limits: None) -> None:
    # Given a product with 1 left, and a buyer who asks for 5 with an unknown code
    item = product(db, stock=1)
    discount(db, "REAL10")
    buyer = user(db)
    answer = _checkout(buyer, item, "NOSUCH", quantity=5)
    # Then the answer is about the code (asked first), it counted, and the stock is untouched
    assert answer.status == 422 and answer.json["error"]["details"]["reason"] == "unknown_code", answer.json
    assert _counters(db)[("discount_user", str(buyer))] == 1
    assert stock(db, item) == 1
    # And with the real code the same cart is out_of_stock, which counts nothing
    real = _checkout(buyer, item, "REAL10", quantity=5)
    assert real.status == 409 and real.error_code == "out_of_stock"
    assert _counters(db)[("discount_user", str(buyer))] == 1


def test_an_idempotent_retry_of_a_checkout_with_an_unknown_code_counts_each_time(
    db: Db, limits: None, stripe_api: Any
) -> None:
    # Given a buyer who retries one unknown-code checkout with one Idempotency-Key
    item = product(db)
    discount(db, "REAL10")
    buyer = user(db)
    body = {"items": [{"price_id": str(item.price_id), "quantity": 1}], "discount_code": "NOSUCH", **URLS}
    answers = [
        api_call("POST", "/orders/checkout", body=body, as_user=buyer, headers={"idempotency-key": "k-1"})
        for _ in range(PER_USER + 1)
    ]
    # Then no retry is free: the limit's worth are unknown_code, the next is 429, and no order was made
    assert [a.json["error"]["details"].get("reason") for a in answers[:PER_USER]] == ["unknown_code"] * PER_USER
    assert _throttled(answers[PER_USER])
    assert (count(db, "orders"), stripe_api.sessions) == (0, {})


def test_a_valid_code_at_a_checkout_stripe_refuses_counts_nothing_and_releases_the_use(
    db: Db, limits: None, stripe_api: Any
) -> None:
    # Given a real limited code and Stripe failing
    item = product(db, stock=2)
    code_id = discount(db, "REAL10", max_uses=1)
    buyer = user(db)
    stripe_api.order_checkout_failures = 2  # the adapter retries once
    answer = _checkout(buyer, item, "REAL10")
    # Then the checkout fails, its use and stock come back, and nothing was counted as a guess
    assert answer.status == 503 and answer.error_code == "payment_provider_error", answer.json
    assert uses(db, code_id) == (0, 0) and stock(db, item) == 2
    assert _counters(db) == {}


def test_an_idempotency_key_replay_tells_a_throttled_buyer_nothing_new(db: Db, limits: None, stripe_api: Any) -> None:
    # Given a buyer who checked out with the real code under one Idempotency-Key, then guessed up to the limit
    item = product(db)
    discount(db, "REAL10")
    buyer = user(db)

    def shop(code: str, key: str) -> ApiResponse:
        body = {"items": [{"price_id": str(item.price_id), "quantity": 1}], "discount_code": code, **URLS}
        return api_call("POST", "/orders/checkout", body=body, as_user=buyer, headers={"idempotency-key": key})

    first = shop("REAL10", "k-real")
    assert first.status == 201, first.json
    _guess_up_to(buyer, item, PER_USER)
    # When the same request is replayed, then it answers the order made before the lockout (nothing new learnt)
    again = shop("REAL10", "k-real")
    assert again.status == 201 and again.json == first.json
    # And that key with any other code is the same 409, real-looking or not, and counts nothing
    answers = [shop(code, "k-real") for code in ("real10x", "NOSUCH", "OTHER")]
    assert all(a.status == 409 and a.error_code == "idempotency_conflict" for a in answers), [a.json for a in answers]
    assert len({json.dumps(a.json, sort_keys=True) for a in answers}) == 1
    assert _counters(db)[("discount_user", str(buyer))] == PER_USER
    # And a new key is refused like every other request of the locked-out buyer
    assert _throttled(shop("REAL10", "k-new"))
    assert count(db, "orders") == 1


# --- the answers that tell known codes apart -------------------------------------------------------------------
def test_a_refused_known_code_is_told_apart_but_never_counts_and_is_429_past_the_limit(db: Db, limits: None) -> None:
    """Documented: a known code refused for another reason answers that reason (the buyer needs it), so finding
    one costs a counted guess like any other code, and past the limit it is 429 like the rest."""
    item = product(db)
    now = utcnow()
    discount(db, "OLD", valid_until=now - timedelta(days=1))
    discount(db, "SOON", valid_from=now + timedelta(days=1))
    discount(db, "OFF", active=False)
    guesser = user(db)
    # When the refused codes are asked many times, then each says why, and none counts
    for _ in range(PER_USER + 1):
        reasons = [_validate(guesser, item, code).json["reason"] for code in ("OLD", "SOON", "OFF")]
        assert reasons == ["expired", "not_started", "inactive"]
    assert _counters(db) == {}
    # And past the limit they are refused with the same 429 as an unknown code
    _guess_up_to(guesser, item, PER_USER)
    answers = [_validate(guesser, item, code) for code in ("OLD", "SOON", "OFF", "NOSUCH")]
    assert all(_throttled(a) for a in answers)
    assert len({json.dumps(a.json, sort_keys=True) for a in answers}) == 1


def test_the_refusal_at_the_lockout_boundary(db: Db, limits: None) -> None:
    # Given a guesser who reaches the limit at a known instant (the service takes the clock)
    item = product(db)
    discount(db, "REAL10")
    guesser = user(db)
    start = utcnow()

    def ask(code: str, at: timedelta) -> discounts.Verdict:
        return discounts.validate(UnitOfWork(), guesser, code=code, items=[(item.price_id, 1)], ip=None, now=start + at)

    for n in range(PER_USER):
        assert ask(f"EDGE{n}", timedelta(0)).reason == "unknown_code"
    # When it asks half a second before the lockout ends, then it is refused, told to wait at least a second
    with pytest.raises(RateLimited) as refused:
        ask("REAL10", timedelta(seconds=LOCKOUT) - timedelta(milliseconds=500))
    assert refused.value.details["retry_after_seconds"] == 1
    # And at the instant it ends the real code is answered, and a guess there starts a fresh count of one
    assert ask("REAL10", timedelta(seconds=LOCKOUT)).valid is True
    assert ask("EDGEAFTER", timedelta(seconds=LOCKOUT)).reason == "unknown_code"
    assert _counters(db) == {("discount_user", str(guesser)): 1}
    # And with no source address at all (outside the gateway) only the user is counted
    assert not any(scope == "discount_ip" for scope, _ in _counters(db))


# --- the minimum amount's currency ------------------------------------------------------------------------------
def test_currency_case_does_not_split_a_currency(db: Db, limits: None) -> None:
    # Given codes whose rows spell the currency in capitals (written before the admin API lower-cased it)
    discount(db, "MINUSD", minimum_amount=Decimal("5"), currency="USD")
    discount(db, "FIVEUSD", type="FIXED_AMOUNT", value=5, currency="USD")
    buyer = user(db)
    usd, eur = product(db, amount="10.00"), product(db, amount="10.00", currency="eur")
    # Then a USD cart gets them, and a EUR cart is refused as currency_mismatch
    assert _validate(buyer, usd, "MINUSD").json == {"valid": True, "discount_amount": "1.00", "reason": None}
    assert _validate(buyer, usd, "FIVEUSD").json == {"valid": True, "discount_amount": "5.00", "reason": None}
    assert _validate(buyer, eur, "MINUSD").json["reason"] == "currency_mismatch"
    assert _validate(buyer, eur, "FIVEUSD").json["reason"] == "currency_mismatch"


def test_the_admin_api_lower_cases_the_currency_and_refuses_a_bad_one(db: Db, payments_env: None) -> None:
    admin = user(db, "ADMIN")
    body = {"code": "MINCAP", "name": "m", "type": "percentage", "value": "10", "minimum_amount": "0"}
    # When a minimum is given with a capitalised currency, then it is stored lower-case
    made = api_call("POST", "/admin/discounts", body={**body, "currency": "USD"}, as_user=admin, role="ADMIN")
    assert made.status == 201 and made.json["currency"] == "usd", made.json
    # And a currency that is no currency code, or a negative minimum, is refused
    for bad in ({"currency": "US"}, {"currency": "U$D"}, {"currency": "usd", "minimum_amount": "-1"}):
        answer = api_call("POST", "/admin/discounts", body={**body, "code": "BAD", **bad}, as_user=admin, role="ADMIN")
        assert answer.status == 422, (bad, answer.json)
    # And a zero minimum with no currency is a minimum too (refused)
    answer = api_call("POST", "/admin/discounts", body={**body, "code": "ZERO"}, as_user=admin, role="ADMIN")
    assert answer.status == 422 and answer.json["error"]["details"] == {"field": "currency"}


def test_a_zero_minimum_bounds_nothing_in_its_currency(db: Db, limits: None) -> None:
    # Given a 10 % code with a minimum of 0 USD
    discount(db, "ZEROMIN", minimum_amount=Decimal("0"), currency="usd")
    buyer = user(db)
    # Then the smallest USD cart gets it
    answer = _validate(buyer, product(db, amount="0.10"), "ZEROMIN").json
    assert answer == {"valid": True, "discount_amount": "0.01", "reason": None}
