"""What is recorded, read through the gateway: email logs, subscription events and refunds (filters, cursors,
bad input), the caller's own payment methods (the default is auto top-up's), and the low-balance report (seed
003's query with the notices' burn-rate projection). Admin routes refuse USER and SUPPORT."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest

from tests.credits_support import funded_user
from tests.support import api_call, make_user
from tollgate import ledger
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.jobs.notices import LOW_BALANCE
from tollgate.models.auth import EmailLog
from tollgate.models.payments import PaymentMethod, Refund, Subscription, SubscriptionEvent
from tollgate.models.users import User

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _q(at: datetime) -> str:
    return quote(at.isoformat())


def _admin(db: Callable[[], UnitOfWork]) -> User:
    with db() as uow:
        admin = make_user(uow.session, role="ADMIN")
        uow.commit()
    return admin


def _all_pages(path: str, query: str, admin: Any, limit: int = 2) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(20):
        answer = api_call("GET", path, query=f"{query}&limit={limit}{cursor}", as_user=admin)
        assert answer.status == 200, answer.json
        assert len(answer.json["items"]) <= limit
        items += answer.json["items"]
        if answer.json["next_cursor"] is None:
            return items
        cursor = f"&cursor={answer.json['next_cursor']}"
    raise AssertionError("the pages never ended")


# --- email logs -------------------------------------------------------------------------------------------------
def _logs(db: Callable[[], UnitOfWork]) -> dict[str, uuid.UUID]:
    rows = [
        ("a@example.com", "verify_email", "sent"),
        ("A@Example.com", "low_balance", "delivered"),
        ("a@example.com", "low_balance", "bounced"),
        ("b@example.com", "low_balance", "delivered"),
        ("b@example.com", "password_reset", "complained"),
        ("c@example.com", "low_balance", "failed"),
    ]
    ids: dict[str, uuid.UUID] = {}
    with db() as uow:
        for i, (to, kind, status) in enumerate(rows):
            log = EmailLog(
                recipient=to, type=kind, subject="s", status=status, provider="ses", message_id=f"m-{i}",
                created_at=T0 + timedelta(hours=i),
            )  # fmt: skip
            uow.session.add(log)
            uow.session.flush()
            ids[f"{i}"] = log.id
        uow.commit()
    return ids


def test_email_logs_filter_by_status_type_recipient_and_time_and_page(db: Callable[[], UnitOfWork]) -> None:
    # Given six logs of three recipients, types and statuses
    ids = _logs(db)
    admin = _admin(db)
    expect = {
        "type=low_balance": ["5", "3", "2", "1"],
        "status=delivered": ["3", "1"],
        "recipient=a@EXAMPLE.com": ["2", "1", "0"],  # whole addresses, any case
        "recipient=a@example.com&type=low_balance&status=bounced": ["2"],
        f"since={_q(T0 + timedelta(hours=2))}&until={_q(T0 + timedelta(hours=4))}": ["3", "2"],
        "recipient=a@": [],
    }
    for query, wanted in expect.items():
        # When an admin reads them filtered, two at a time
        items = _all_pages("/admin/email-logs", query, admin)
        # Then exactly the matching ones, newest first, each once
        assert [item["id"] for item in items] == [str(ids[i]) for i in wanted], query
    everything = _all_pages("/admin/email-logs", "x=1", admin, limit=4)
    assert len(everything) == 6 and {i["status"] for i in everything} >= {"bounced", "complained", "delivered"}


def test_email_log_filters_refuse_bad_input(db: Callable[[], UnitOfWork]) -> None:
    admin = _admin(db)
    for query in ("status=opened", "limit=0", "limit=101", "user_id=not-a-uuid", "since=tomorrow"):
        # When an admin sends a bad filter, Then 422 with a code
        answer = api_call("GET", "/admin/email-logs", query=query, as_user=admin)
        assert (answer.status, answer.error_code) == (422, "validation_error"), query
    # And a cursor of another list, or a forged one, is 400 invalid_cursor
    _logs(db)
    first = api_call("GET", "/admin/refunds", query="limit=1", as_user=admin)
    assert first.status == 200
    for cursor in ("abc.def", "x" * 600):
        answer = api_call("GET", "/admin/email-logs", query=f"cursor={cursor}", as_user=admin)
        assert (answer.status, answer.error_code) == (400, "invalid_cursor"), cursor
    # And since must come before until
    answer = api_call("GET", "/admin/email-logs", query=f"since={_q(T0)}&until={_q(T0)}", as_user=admin)
    assert (answer.status, answer.error_code) == (422, "validation_error")


# --- subscription events and refunds -------------------------------------------------------------------------------
def _payments(db: Callable[[], UnitOfWork]) -> tuple[uuid.UUID, uuid.UUID, dict[str, uuid.UUID]]:
    ids: dict[str, uuid.UUID] = {}
    with db() as uow:
        s = uow.session
        alice, bob = make_user(s), make_user(s)
        subs = {
            "stripe": Subscription(provider="stripe", provider_subscription_id="sub_a", user_id=alice.id,
                                   status="active"),
            "lemonsqueezy": Subscription(provider="lemonsqueezy", provider_subscription_id="ls_b", user_id=bob.id,
                                         status="active"),
        }  # fmt: skip
        s.add_all(subs.values())
        s.flush()
        events = [("e0", "stripe", alice.id, 0), ("e1", "lemonsqueezy", bob.id, 1), ("e2", "stripe", alice.id, 2)]
        for name, provider, user_id, hours in events:
            event = SubscriptionEvent(
                subscription_id=subs[provider].id, user_id=user_id, type="status_changed", from_status="trialing",
                to_status="active", applied=True, created_at=T0 + timedelta(hours=hours),
            )  # fmt: skip
            s.add(event)
            s.flush()
            ids[name] = event.id
        refunds = [("r0", "stripe", alice.id, 0), ("r1", "lemonsqueezy", bob.id, 1), ("r2", "stripe", bob.id, 2)]
        for name, provider, user_id, hours in refunds:
            refund = Refund(
                provider=provider, provider_refund_id=f"re_{name}", kind="refund", user_id=user_id,
                amount=Decimal("5.00"), currency="usd", created_at=T0 + timedelta(hours=hours),
            )  # fmt: skip
            s.add(refund)
            s.flush()
            ids[name] = refund.id
        uow.commit()
    return alice.id, bob.id, ids


@pytest.mark.parametrize("path, prefix", [("/admin/subscription-events", "e"), ("/admin/refunds", "r")])
def test_subscription_events_and_refunds_filter_by_user_provider_and_time(
    db: Callable[[], UnitOfWork], path: str, prefix: str
) -> None:
    # Given three events and three refunds of two users and two providers
    alice, bob, ids = _payments(db)
    admin = _admin(db)
    cases = {
        "x=1": [2, 1, 0],
        "provider=stripe": [2, 0],
        f"user_id={alice}": [2, 0] if prefix == "e" else [0],
        f"user_id={bob}&provider=lemonsqueezy": [1],
        f"since={_q(T0 + timedelta(hours=1))}": [2, 1],
        f"until={_q(T0 + timedelta(hours=1))}": [0],
    }
    for query, wanted in cases.items():
        # When an admin reads them one at a time
        items = _all_pages(path, query, admin, limit=1)
        # Then exactly the matching ones, newest first
        assert [item["id"] for item in items] == [str(ids[f"{prefix}{i}"]) for i in wanted], query
    # And a provider Tollgate does not know is a 422
    answer = api_call("GET", path, query="provider=paypal", as_user=admin)
    assert (answer.status, answer.error_code) == (422, "validation_error")


def test_a_refund_reads_as_decimal_strings_and_an_event_names_its_subscription(db: Callable[[], UnitOfWork]) -> None:
    _, _, ids = _payments(db)
    admin = _admin(db)
    refund = api_call("GET", "/admin/refunds", query="limit=1", as_user=admin).json["items"][0]
    assert (refund["id"], refund["amount"], refund["status"]) == (str(ids["r2"]), "5", "SUCCEEDED")
    event = api_call("GET", "/admin/subscription-events", query="limit=1", as_user=admin).json["items"][0]
    assert (event["provider"], event["provider_subscription_id"], event["to_status"]) == ("stripe", "sub_a", "active")


# --- payment methods ----------------------------------------------------------------------------------------------
def test_a_user_sees_their_own_attached_payment_methods_and_the_auto_top_up_default(
    db: Callable[[], UnitOfWork],
) -> None:
    # Given a user with three cards (one detached, one older) and another user's card
    with db() as uow:
        s = uow.session
        owner = make_user(s, stripe_customer_id="cus_owner")
        other = make_user(s, stripe_customer_id="cus_other")
        cards = [
            ("pm_old", owner.id, "cus_owner", False, T0),
            ("pm_new", owner.id, "cus_owner", False, T0 + timedelta(days=1)),
            ("pm_gone", owner.id, "cus_owner", True, T0 + timedelta(days=2)),
            ("pm_theirs", other.id, "cus_other", False, T0),
        ]
        for pm, user_id, customer, detached, at in cards:
            s.add(PaymentMethod(
                provider="stripe", provider_payment_method_id=pm, provider_customer_id=customer, user_id=user_id,
                type="card", brand="visa", last4=pm[-4:], exp_month=12, exp_year=2030, detached=detached,
                created_at=at, updated_at=at,
            ))  # fmt: skip
        uow.commit()
    # When the owner lists their payment methods
    answer = api_call("GET", "/billing/payment-methods", as_user=owner)
    # Then only their attached cards, with brand, last4 and expiry; the default is the newest attached one
    assert answer.status == 200, answer.json
    seen = {(m["last4"], m["default"]) for m in answer.json["items"]}
    assert seen == {("_new", True), ("_old", False)}
    assert {(m["brand"], m["exp_month"], m["exp_year"]) for m in answer.json["items"]} == {("visa", 12, 2030)}
    # And a user without cards sees none
    with db() as uow:
        nobody = make_user(uow.session)
        uow.commit()
    empty = api_call("GET", "/billing/payment-methods", as_user=nobody)
    assert empty.status == 200 and empty.json == {"items": [], "next_cursor": None}


# --- low balances ---------------------------------------------------------------------------------------------------
def test_the_low_balance_report_lists_accounts_under_the_threshold_with_the_notices_projection(
    db: Callable[[], UnitOfWork],
) -> None:
    # Given four accounts: one burning 2 credits a day with 6 left, one idle with 5, one with 50, one with 9.9
    settings = get_settings()
    now = datetime.now(UTC)
    burning = funded_user(db, "20", costs={"chat": "1"})
    idle = funded_user(db, "5")
    rich = funded_user(db, "50")
    edge = funded_user(db, "9.9")
    with db() as uow:
        ledger.charge(uow.session, burning, operation="chat", quantity=Decimal(2 * settings.burn_rate_days),
                      now=now - timedelta(hours=1))  # fmt: skip
        uow.commit()
    admin = _admin(db)
    # When an admin asks for the report (default threshold 10), one row per page
    items = _all_pages("/admin/reports/low-balance", "x=1", admin, limit=1)
    # Then the accounts under 10, by user id, each with its pace and projection
    rows = {uuid.UUID(item["user_id"]): item for item in items}
    assert list(rows) == sorted([burning, idle, edge])
    assert rich not in rows
    assert (rows[burning]["spendable"], rows[burning]["burn_per_day"], rows[burning]["days_left"]) == ("6", "2", "3")
    assert rows[burning]["notice_due"] is (settings.low_balance_notice_days >= 3)
    assert datetime.fromisoformat(rows[burning]["runs_out_at"]) > now + timedelta(days=2)
    assert (rows[idle]["burn_per_day"], rows[idle]["days_left"], rows[idle]["notice_due"]) == ("0", None, False)
    # And the notice rule is the job's own: the report says due exactly where BalanceNotices would mail
    with db() as uow:
        due = {
            r.user_id
            for r in uow.session.execute(
                LOW_BALANCE,
                {
                    "ids": [burning, idle, edge],
                    "since": now - timedelta(days=settings.burn_rate_days),
                    "burn_days": settings.burn_rate_days,
                    "notice_days": settings.low_balance_notice_days,
                },
            )
        }
    assert due == {u for u, row in rows.items() if row["notice_due"]}
    # And a threshold of the admin's choosing
    answer = api_call("GET", "/admin/reports/low-balance", query="threshold=6", as_user=admin)
    assert [uuid.UUID(i["user_id"]) for i in answer.json["items"]] == [idle]
    assert answer.json["threshold"] == "6"
    for bad in ("threshold=-1", "threshold=abc", "threshold=NaN"):
        refused = api_call("GET", "/admin/reports/low-balance", query=bad, as_user=admin)
        assert (refused.status, refused.error_code) == (422, "validation_error"), bad


def test_the_admin_report_routes_refuse_users_and_support(db: Callable[[], UnitOfWork]) -> None:
    with db() as uow:
        callers = {role: make_user(uow.session, role=role) for role in ("USER", "SUPPORT")}
        uow.commit()
    for path in ("/admin/email-logs", "/admin/subscription-events", "/admin/refunds", "/admin/reports/low-balance"):
        for role, caller in callers.items():
            answer = api_call("GET", path, as_user=caller)
            assert (answer.status, answer.error_code) == (403, "forbidden"), (path, role)
