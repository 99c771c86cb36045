# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""The report routes attacked from outside (issue 14 review), through the real gateway and authorizer where the
caller matters: users, support staff, narrow and demoted admin keys on the admin routes; another user's payment
methods asked for by id; cursors carried between filters, lists and routes; since/until at and past their
edges; metric, dimension and threshold values a form would never send; limits far past the bound; and what an
admin may read of a sign-in code in the email logs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select

from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer, clear_caches  # noqa: F401
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.mail import messages as mails
from tollgate.models.auth import EmailLog
from tollgate.models.jobs import AnalyticsMetric
from tollgate.models.payments import PaymentMethod
from tollgate.models.users import User

Db = Callable[[], UnitOfWork]
ADMIN_ROUTES = (
    "/admin/analytics?metric=mrr",
    "/admin/email-logs",
    "/admin/subscription-events",
    "/admin/refunds",
    "/admin/reports/low-balance",
)
T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _gw(path_and_query: str, headers: dict[str, str]) -> Any:
    path, _, query = path_and_query.partition("?")
    return api_call("GET", path, query=query, headers=headers, through_authorizer=True)


def _get(path_and_query: str, caller: User) -> Any:
    path, _, query = path_and_query.partition("?")
    return api_call("GET", path, query=query, as_user=caller)


def _signed_in(db: Db, auth_env: AuthEnv, role: str) -> tuple[User, dict[str, str]]:
    email = auth_env.register_verified()
    with db() as uow:
        user = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        user.role = role
        uow.commit()
        uow.session.expunge(user)
    return user, bearer(auth_env.login(email)["access_token"])


def _set_role(db: Db, user_id: uuid.UUID, role: str) -> None:
    with db() as uow:
        user = uow.session.get(User, user_id)
        assert user is not None
        user.role = role
        uow.commit()
    clear_caches()  # past the authorizer's few-second verdict cache, which its own tests bound


def _staff(db: Db, role: str = "ADMIN") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
    return user


# --- who may read ---------------------------------------------------------------------------------------------------
def test_users_support_and_demoted_admins_are_refused_every_admin_report(db: Db, auth_env: AuthEnv) -> None:
    # Given a user, a support agent and an admin, each signed in
    _, user = _signed_in(db, auth_env, "USER")
    _, support = _signed_in(db, auth_env, "SUPPORT")
    admin, admin_headers = _signed_in(db, auth_env, "ADMIN")
    for route in ADMIN_ROUTES:
        # When each calls every admin report, Then only the admin is answered
        assert (_gw(route, user).status, _gw(route, support).status) == (403, 403), route
        assert _gw(route, admin_headers).status == 200, route
    # When the admin is demoted, Then the still-valid access token reads nothing more
    _set_role(db, admin.id, "USER")
    for route in ADMIN_ROUTES:
        answer = _gw(route, admin_headers)
        assert (answer.status, answer.error_code) == (403, "forbidden"), route


def test_api_keys_reach_admin_reports_only_with_the_admin_scope_and_an_admin_behind_them(
    db: Db, auth_env: AuthEnv
) -> None:
    # Given an admin with a billing key and an admin key, and a support agent with an admin key
    admin, _ = _signed_in(db, auth_env, "ADMIN")
    support, _ = _signed_in(db, auth_env, "SUPPORT")
    billing = {"x-api-key": api_key_for(admin.id, ("billing:read",))}
    admin_key = {"x-api-key": api_key_for(admin.id, ("admin",))}
    support_key = {"x-api-key": api_key_for(support.id, ("admin",))}
    for route in ADMIN_ROUTES:
        # Then a key without the admin scope, or an admin key of a non-admin, is refused; the admin's admin key reads
        assert _gw(route, billing).status == 403, route
        assert _gw(route, support_key).status == 403, route
        assert _gw(route, admin_key).status == 200, route
    # And a billing key reads its own payment methods, while an admin key does not carry billing:read
    assert _gw("/billing/payment-methods", billing).status == 200
    assert _gw("/billing/payment-methods", admin_key).status == 403
    # When the admin is demoted, Then the admin key reads no report any more
    _set_role(db, admin.id, "USER")
    assert {_gw(route, admin_key).status for route in ADMIN_ROUTES} == {403}


# --- payment methods ------------------------------------------------------------------------------------------------
def _cards(db: Db) -> tuple[User, User]:
    with db() as uow:
        s = uow.session
        owner = make_user(s, stripe_customer_id="cus_own")
        other = make_user(s, stripe_customer_id="cus_theirs")
        for i, (user, customer, detached) in enumerate(
            [(owner, "cus_own", False), (owner, "cus_own", True), (other, "cus_theirs", False)] * 2
        ):
            s.add(PaymentMethod(
                provider="stripe", provider_payment_method_id=f"pm_{i}", provider_customer_id=customer,
                user_id=user.id, type="card", brand="visa", last4=f"{i:04d}", exp_month=1, exp_year=2031,
                detached=detached, created_at=T0 + timedelta(hours=i), updated_at=T0 + timedelta(hours=i),
            ))  # fmt: skip
        uow.commit()
        s.expunge_all()
    return owner, other


def test_payment_methods_are_the_callers_own_whatever_the_query_says(db: Db) -> None:
    # Given two users with cards (some of the owner's detached)
    owner, other = _cards(db)
    theirs = _get("/billing/payment-methods", other).json["items"]
    assert {m["last4"] for m in theirs} == {"0002", "0005"}
    # When the owner names the other user, their card ids or a huge page in the query
    for query in (f"user_id={other.id}", f"id={theirs[0]['id']}", f"owner={other.id}&customer=cus_theirs"):
        answer = _get(f"/billing/payment-methods?{query}", owner)
        # Then only the owner's attached cards come back
        assert answer.status == 200, query
        assert {m["last4"] for m in answer.json["items"]} == {"0000", "0003"}, query
    # And the other user's cursor, used by the owner, pages through the owner's rows only
    first = _get("/billing/payment-methods?limit=1", other).json
    page = _get(f"/billing/payment-methods?limit=5&cursor={first['next_cursor']}", owner).json
    assert {m["last4"] for m in page["items"]} <= {"0000", "0003"}
    # And a cursor of another list is refused
    refunds = _get("/admin/refunds?limit=1", _staff(db)).json
    low = _get("/admin/reports/low-balance?limit=1&threshold=1000000", _staff(db)).json
    for cursor in (refunds["next_cursor"], low["next_cursor"]):
        if cursor is not None:
            answer = _get(f"/billing/payment-methods?cursor={cursor}", owner)
            assert (answer.status, answer.error_code) == (400, "invalid_cursor")


# --- cursors --------------------------------------------------------------------------------------------------------
def _logs(db: Db, n: int = 6) -> list[uuid.UUID]:
    ids = []
    with db() as uow:
        for i in range(n):
            log = EmailLog(
                recipient=f"r{i % 2}@example.com", type="low_balance", subject="s",
                status="delivered" if i % 2 else "bounced", provider="ses", message_id=f"c-{i}",
                created_at=T0 + timedelta(hours=i),
            )  # fmt: skip
            uow.session.add(log)
            uow.session.flush()
            ids.append(log.id)
        uow.commit()
    return ids


def test_a_cursor_carried_to_another_filter_or_route_shows_nothing_outside_that_filter(db: Db) -> None:
    # Given delivered and bounced logs, and a cursor issued for the delivered ones
    ids = _logs(db)
    admin = _staff(db)
    delivered = _get("/admin/email-logs?status=delivered&limit=1", admin).json
    assert delivered["next_cursor"] is not None
    # When it is used with the bounced filter, Then only bounced rows come back (the cursor is a position only)
    swapped = _get(f"/admin/email-logs?status=bounced&cursor={delivered['next_cursor']}", admin)
    assert swapped.status == 200
    assert {i["status"] for i in swapped.json["items"]} <= {"bounced"}
    assert {uuid.UUID(i["id"]) for i in swapped.json["items"]} <= set(ids)
    # And on any other list it is refused before a statement runs
    for route in ("/admin/refunds", "/admin/subscription-events", "/admin/reports/low-balance"):
        answer = _get(f"{route}?cursor={delivered['next_cursor']}", admin)
        assert (answer.status, answer.error_code) == (400, "invalid_cursor"), route
    # And an altered one is refused too
    payload, _, mac = delivered["next_cursor"].partition(".")
    forged = _get(f"/admin/email-logs?cursor={payload[:-2]}AA.{mac}", admin)
    assert (forged.status, forged.error_code) == (400, "invalid_cursor")


# --- edge values ----------------------------------------------------------------------------------------------------
LISTS = ("/admin/email-logs", "/admin/subscription-events", "/admin/refunds")


@pytest.mark.parametrize("route", LISTS)
def test_since_and_until_at_and_past_their_bounds(db: Db, route: str) -> None:
    admin = _staff(db)
    q = quote
    refused = [
        "since=0001-01-01T00:00:00Z", f"until={q('9999-12-31T23:59:59+00:00')}", f"since={q('1969-12-31T23:59:59Z')}",
        f"since={q(T0.isoformat())}&until={q(T0.isoformat())}",
        f"since={q((T0 + timedelta(seconds=1)).isoformat())}&until={q(T0.isoformat())}",
        "since=yesterday", "since=1e9", "until=NaN", f"since={q('2026-11-01T00:00:00-25:00')}",
    ]  # fmt: skip
    for query in refused:
        # When a bound lies outside the documented range or after the other, Then 422 with a code
        answer = _get(f"{route}?{query}", admin)
        assert (answer.status, answer.error_code) == (422, "validation_error"), query
    accepted = [
        f"since={q('1970-01-01T00:00:00Z')}&until={q('9999-01-01T00:00:00Z')}",
        f"since={q('2026-11-01T00:00:00')}",  # no offset: UTC
        f"until={q('2026-11-01T09:00:00+14:00')}",
    ]
    for query in accepted:
        assert _get(f"{route}?{query}", admin).status == 200, query


@pytest.mark.parametrize("route", [*LISTS, "/admin/reports/low-balance", "/billing/payment-methods"])
def test_limits_past_the_bound_are_refused(db: Db, route: str) -> None:
    admin = _staff(db)
    for limit in ("0", "-1", "101", "10000000000000000000000", "1e2", "ten", "20.5"):
        answer = _get(f"{route}?limit={limit}", admin)
        assert (answer.status, answer.error_code) == (422, "validation_error"), limit


def test_analytics_metric_dimension_and_range_injections(db: Db) -> None:
    # Given one rolled-up figure
    with db() as uow:
        uow.session.add(AnalyticsMetric(day=date(2026, 10, 1), metric="mrr", dimension="usd", value=Decimal("29"),
                                        computed_at=T0))  # fmt: skip
        uow.commit()
    admin = _staff(db)
    for query in (
        f"metric={quote(chr(39) + ' OR 1=1--')}", "metric=MRR", "metric=", f"metric={'m' * 65}",
        f"metric=mrr&dimension={'d' * 65}", "metric=mrr&since=2026-10-01T05:00:00Z", "metric=mrr&since=2026-13-01",
        "metric=mrr&since=9999-12-31", "metric=mrr&since=2026-10-02&until=2026-10-01",
    ):  # fmt: skip
        # When a metric, dimension or day no form would send is asked for, Then 422 with a code
        answer = _get(f"/admin/analytics?{query}", admin)
        assert (answer.status, answer.error_code) == (422, "validation_error"), query
    nul = _get("/admin/analytics?metric=mrr%00", admin)  # the edge refuses control characters in any text
    assert (nul.status, nul.error_code) == (400, "invalid_text")
    too_long = _get("/admin/analytics?metric=mrr&since=0001-01-01&until=9999-12-31", admin)
    assert (too_long.status, too_long.error_code) == (422, "range_too_long")
    # And a dimension spelled as SQL is only a value that matches nothing
    day = "since=2026-10-01&until=2026-10-01"
    injected = _get(f"/admin/analytics?metric=mrr&{day}&dimension={quote(chr(39) + ' OR 1=1--')}", admin)
    assert (injected.status, injected.json["series"]) == (200, [])
    exact = _get("/admin/analytics?metric=mrr&since=2026-10-01&until=2026-10-01&dimension=usd", admin).json
    assert exact["series"] == [{"dimension": "usd", "points": [{"day": "2026-10-01", "value": "29"}]}]
    # And the first and last days there are answer (the default start stops at the first day, not at an error)
    for query in ("until=0001-01-05", "since=0001-01-01&until=0001-01-01", "until=9999-12-31"):
        answer = _get(f"/admin/analytics?metric=mrr&{query}", admin)
        assert (answer.status, answer.json["series"]) == (200, []), query
    first_days = _get("/admin/analytics?metric=mrr&until=0001-01-05", admin).json
    assert (first_days["since"], first_days["until"]) == ("0001-01-01", "0001-01-05")


def test_low_balance_thresholds_a_form_would_never_send(db: Db) -> None:
    admin = _staff(db)
    for threshold in (
        "NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf", "-0.0001", "-1", "1e30", "1000000000000.0001",
        "0.00001", "ten", "",
    ):  # fmt: skip
        # When a threshold that is not a bounded non-negative amount is asked for, Then 422 with a code
        answer = _get(f"/admin/reports/low-balance?threshold={quote(threshold)}", admin)
        assert (answer.status, answer.error_code) == (422, "validation_error"), threshold
    for threshold, shown in (("0", "0"), ("1e3", "1000"), ("1000000000000", "1000000000000"), ("2.5000", "2.5"),
                             ("0E-10", "0"), ("1_000", "1000")):  # fmt: skip
        answer = _get(f"/admin/reports/low-balance?threshold={threshold}", admin)
        assert (answer.status, answer.json["threshold"]) == (200, shown), threshold


# --- what the email logs show -------------------------------------------------------------------------------------
def test_an_admin_reading_the_email_logs_never_sees_a_sign_in_code(db: Db) -> None:
    # Given the log of a mailed sign-in code (its subject carries the code, as the mail does)
    with db() as uow:
        user = make_user(uow.session)
        mail = mails.two_factor_code(user.email, user.id, "482913", uuid.uuid4())
        uow.session.add(EmailLog(user_id=user.id, recipient=mail.to, type=mail.type, subject=mail.subject,
                                 status="sent", provider="ses", message_id="code-1",
                                 metadata_=mail.metadata))  # fmt: skip
        reset = mails.password_reset(user.email, user.id, "secret-token")
        uow.session.add(EmailLog(user_id=user.id, recipient=reset.to, type=reset.type, subject=reset.subject,
                                 status="sent", provider="ses", message_id="reset-1"))  # fmt: skip
        uow.commit()
    # When an admin reads that user's logs
    items = _get(f"/admin/email-logs?user_id={user.id}", _staff(db)).json["items"]
    # Then the code is masked, and no log carries a token or code anywhere
    by_type = {i["type"]: i for i in items}
    assert by_type["two_factor_code"]["subject"] == "Your sign-in code: ******"
    assert by_type["password_reset"]["subject"] == "Reset your password"
    assert "482913" not in str(items) and "secret-token" not in str(items)
    # And a recipient filter is a whole address, never a pattern
    assert _get(f"/admin/email-logs?recipient={quote('%@example.com')}", _staff(db)).json["items"] == []
