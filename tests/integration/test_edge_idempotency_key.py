"""One bound for the Idempotency-Key, the same on every route that takes one, and one the ledger can store
under each service's prefix."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

from sqlalchemy import String

from tests.credits_support import admin, balance, funded_user
from tests.support import api_call
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.input_bounds import IDEMPOTENCY_KEY_MAX_LENGTH, LEDGER_KEY_MAX_LENGTH
from tollgate.models.credits import CreditTransaction
from tollgate.models.rag import AiUsage

COSTS = {"chat": "1"}
LONGEST = "k" * IDEMPOTENCY_KEY_MAX_LENGTH
TOO_LONG = "k" * (IDEMPOTENCY_KEY_MAX_LENGTH + 1)
CALLER = {"user_id": str(uuid.uuid4()), "role": "USER", "session_id": "", "tier": ""}


def test_the_stored_key_columns_match_the_bounds():
    # The client's key is stored as sent in ai_usage, and under a prefix in the ledger
    client, ledger_key = AiUsage.__table__.c.idempotency_key.type, CreditTransaction.__table__.c.idempotency_key.type
    assert isinstance(client, String) and client.length == IDEMPOTENCY_KEY_MAX_LENGTH
    assert isinstance(ledger_key, String) and ledger_key.length == LEDGER_KEY_MAX_LENGTH


def test_the_longest_key_charges_and_replays(db: Callable[[], UnitOfWork]) -> None:
    # Given a funded user and a key of the longest allowed length
    user_id = funded_user(db, "10", costs=COSTS)
    headers = {"Idempotency-Key": LONGEST}
    # When they charge twice with it
    first = api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id, headers=headers)
    again = api_call("POST", "/credits/usage", body={"operation": "chat"}, as_user=user_id, headers=headers)
    # Then it is charged once and replayed
    assert first.status == 201 and again.json == first.json
    assert balance(db, user_id) == 9


def test_a_key_one_longer_is_422_on_every_route_that_takes_one(db: Callable[[], UnitOfWork]) -> None:
    boss = admin(db)
    user_id = funded_user(db, "10", costs=COSTS)
    calls = [
        ("POST", "/credits/usage", {"operation": "chat"}, {"as_user": user_id}),
        ("POST", "/credits/holds", {"amount": "1"}, {"as_user": user_id}),
        ("POST", f"/credits/holds/{uuid.uuid4()}/capture", {"amount": "1"}, {"as_user": user_id}),
        ("POST", f"/admin/users/{user_id}/credits/usage", {"operation": "chat"}, {"as_user": boss}),
        ("POST", f"/admin/users/{user_id}/credits/adjustments", {"amount": "1", "reason": "r"}, {"as_user": boss}),
        ("POST", "/admin/credits/refunds", {"transaction_id": str(uuid.uuid4()), "reason": "r"}, {"as_user": boss}),
        ("POST", "/rag/search", {"query": "hello"}, {"authorizer_context": CALLER}),
        ("POST", "/rag/ask", {"question": "hello"}, {"authorizer_context": CALLER}),
        (
            "POST", "/billing/checkout",
            {"provider": "stripe", "kind": "pack", "item_id": str(uuid.uuid4()), "success_url": "https://a.example/s",
             "cancel_url": "https://a.example/c"},
            {"authorizer_context": CALLER},
        ),
    ]  # fmt: skip
    for method, path, body, who in calls:
        response = api_call(method, path, body=body, headers={"Idempotency-Key": TOO_LONG}, **who)  # type: ignore[arg-type]
        assert (response.status, response.error_code) == (422, "validation_error"), (path, response.json)
        assert response.json["error"]["details"] == {"header": "Idempotency-Key"}
    assert balance(db, user_id) == 10


def test_the_ledger_stores_the_longest_client_key_under_a_service_prefix(db: Callable[[], UnitOfWork]) -> None:
    # Given the longest key a client may send, prefixed as the knowledge-base search does
    user_id = funded_user(db, "10", costs=COSTS)
    key = f"rag-search:{LONGEST}"
    # When the ledger charges with it
    with db() as uow:
        result = ledger.charge(uow.session, user_id, operation="chat", quantity=Decimal(1), idempotency_key=key)
        uow.commit()
    # Then the charge is recorded under that key
    assert result.charged == 1 and balance(db, user_id) == 9
