"""Goodwill credits through the real handler: staff only, at most the `support_goodwill_cap` setting per grant,
through the ledger (it still reconciles), idempotent by Idempotency-Key even when the same request races itself,
and audited with the balance before and after."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.credits_support import assert_consistent, balance, funded_user
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.models import User

RACERS = 8


def _user(db: Callable[[], UnitOfWork], role: str = "USER") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        return user


def _goodwill(staff: User, customer: uuid.UUID, amount: str, key: str | None = None, **extra: Any) -> Any:
    headers = {"idempotency-key": key} if key else None
    body = {"amount": amount, "reason": "sorry for the outage", **extra}
    return api_call("POST", f"/support/users/{customer}/goodwill", body=body, headers=headers, as_user=staff)


def _audit_rows(db: Callable[[], UnitOfWork], action: str) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT actor_id, target_id, old_values, new_values, details FROM audit_logs WHERE action = :a"),
                {"a": action},
            ).all()
        )


def test_support_grants_goodwill_up_to_the_cap(db):
    # Given a customer with 10 credits, a support agent, and the default cap (100)
    customer = funded_user(db, "10")
    agent = _user(db, "SUPPORT")
    # When the agent grants 25
    granted = _goodwill(agent, customer, "25")
    # Then the customer has 35, through an adjustment grant, audited with the balance before and after
    assert granted.status == 201, granted.json
    assert (granted.json["amount"], granted.json["balance"]) == ("25.0000", "35.0000")
    assert balance(db, customer) == Decimal(35)
    [row] = _audit_rows(db, "support.goodwill")
    assert (row.actor_id, row.target_id) == (agent.id, str(customer))
    assert (row.old_values, row.new_values) == ({"balance": "10.0000"}, {"balance": "35.0000", "granted": "25.0000"})
    assert row.details["cap"] == "100" and row.details["reason"] == "sorry for the outage"
    # When the agent grants more than the cap, Then 403 over_goodwill_cap with the cap, and nothing moves
    over = _goodwill(agent, customer, "100.0001")
    assert (over.status, over.error_code, over.json["error"]["details"]) == (403, "over_goodwill_cap", {"cap": "100"})
    assert balance(db, customer) == Decimal(35) and len(_audit_rows(db, "support.goodwill")) == 1
    assert_consistent(db, customer)


def test_the_cap_is_the_system_setting(db):
    # Given an admin who lowers the cap to 5
    customer = funded_user(db, "0")
    admin, agent = _user(db, "ADMIN"), _user(db, "SUPPORT")
    put = api_call(
        "PUT", "/admin/system-config/support_goodwill_cap", body={"value": "5", "type": "number"}, as_user=admin
    )
    assert put.status == 200, put.json
    # When the agent (in this same container) grants 6, then 5, Then the new cap holds at once
    assert _goodwill(agent, customer, "6").json["error"]["details"] == {"cap": "5"}
    assert _goodwill(agent, customer, "5").status == 201
    # And admins are held to the same cap on this route (their own adjustment route has none)
    assert _goodwill(admin, customer, "6").status == 403


@pytest.mark.parametrize(
    ("amount", "extra", "status", "code"),
    [
        ("0", {}, 422, "validation_error"),
        ("-5", {}, 422, "validation_error"),
        ("1.00001", {}, 422, "validation_error"),
        ("5", {"reason": "   "}, 422, "validation_error"),
        ("5", {"expires_at": "2030-01-01T00:00:00Z"}, 422, "validation_error"),
    ],
)
def test_bad_goodwill_is_refused_and_nothing_moves(db, amount, extra, status, code):
    # Given a customer and an agent, When the agent sends a bad grant, Then 4xx with a code and no credits
    customer = funded_user(db, "1")
    response = _goodwill(_user(db, "SUPPORT"), customer, amount, **extra)
    assert (response.status, response.error_code) == (status, code)
    assert balance(db, customer) == Decimal(1) and _audit_rows(db, "support.goodwill") == []


def test_only_staff_grant_and_never_to_themselves(db):
    # Given a customer, a plain user and an agent
    customer = funded_user(db, "1")
    plain, agent = _user(db), _user(db, "SUPPORT")
    # When a plain user grants, or the agent grants to themselves or to nobody
    refused = _goodwill(plain, customer, "5")
    own = _goodwill(agent, agent.id, "5")
    nobody = _goodwill(agent, uuid.uuid4(), "5")
    # Then 403, 403 own_goodwill, 404; nothing moved
    assert (refused.status, own.status, own.error_code, nobody.status) == (403, 403, "own_goodwill", 404)
    assert balance(db, customer) == Decimal(1) and balance(db, agent.id) == Decimal(0)


def test_a_race_of_one_keyed_grant_grants_once(db):
    # Given a customer and an agent
    customer = funded_user(db, "0")
    agent = _user(db, "SUPPORT")
    barrier = threading.Barrier(RACERS)

    def post(_: int) -> Any:
        barrier.wait()
        return _goodwill(agent, customer, "7", key="goodwill-race-1")

    # When the same keyed grant is posted by several callers at once
    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        answers = list(pool.map(post, range(RACERS)))
    # Then every caller gets the same grant, the customer got it once, and it was audited once
    assert {a.status for a in answers} == {201}, [a.json for a in answers]
    assert len({a.json["transaction_id"] for a in answers}) == 1
    assert balance(db, customer) == Decimal(7)
    assert len(_audit_rows(db, "support.goodwill")) == 1
    # And the same key with another amount is a conflict, not a second grant
    assert _goodwill(agent, customer, "8", key="goodwill-race-1").status == 409
    assert balance(db, customer) == Decimal(7)
    assert_consistent(db, customer)
