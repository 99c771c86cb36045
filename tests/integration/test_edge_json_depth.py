"""A body nested past 64 levels is 400 `malformed_json` on every route that takes a body, webhooks and sign-in
included, decided by the edge before validation, signatures or the database."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.credits_support import balance, funded_user, ledger_rows
from tests.edge_support import recorded_statements
from tests.payments_support import count, send_clerk, send_lemonsqueezy, send_stripe
from tests.support import api_call, project_gateway
from tollgate.db import UnitOfWork
from tollgate.input_bounds import MAX_JSON_DEPTH

DEEP = ("[" * 500 + "]" * 500).encode()  # ~1 KB, the report's body
DEEPER = json.dumps({"a": json.loads("[" * 900 + "]" * 900)}).encode()
CALLER = {"user_id": str(uuid.uuid4()), "role": "ADMIN", "session_id": "", "tier": ""}


def body_routes() -> list[tuple[str, str]]:
    """Every route of the template that takes a body, with its path parameters filled in."""
    routes = []
    for route in project_gateway().template.routes:
        if route.method in {"POST", "PUT", "PATCH", "DELETE", "ANY"}:
            method = "POST" if route.method == "ANY" else route.method
            routes.append((method, re.sub(r"\{[^}]+\}", str(uuid.UUID(int=1)), route.path)))
    return routes


@pytest.fixture
def statements(db: Callable[[], UnitOfWork]) -> Iterator[list[str]]:
    """Every SQL statement sent to the database while the test runs (on the test database)."""
    with recorded_statements() as seen:
        yield seen


def test_every_body_route_refuses_a_deep_body_with_400(statements: list[str]) -> None:
    routes = body_routes()
    assert ("POST", "/auth/login") in routes and ("POST", "/webhooks/stripe") in routes
    for method, path in routes:
        for body in (DEEP, DEEPER):
            # When a deeply nested body reaches the route
            response = api_call(method, path, raw_body=body, authorizer_context=CALLER)
            # Then the edge refuses it with the reason, and nothing reached the database
            assert (response.status, response.error_code) == (400, "malformed_json"), (method, path, response.json)
            assert response.json["error"]["details"] == {"reason": "too_deep", "max_depth": MAX_JSON_DEPTH}
    assert statements == []


def test_signed_deep_webhooks_are_refused_and_store_nothing(db: Callable[[], UnitOfWork]) -> None:
    # Given a deep body signed with each provider's scheme
    body = json.dumps({"id": "evt_deep", "type": "invoice.paid", "data": json.loads("[" * 200 + "]" * 200)})
    # When each webhook receives it, Then it is refused by the depth guard, not by a 500
    for response in (send_stripe(body), send_lemonsqueezy(body), send_clerk(body)):
        assert (response.status, response.error_code) == (400, "malformed_json"), response.json
    assert count(db, "webhook_events") == 0


def test_the_depth_limit_is_exact_and_strings_do_not_count(db: Callable[[], UnitOfWork]) -> None:
    # Given a funded user
    user_id = funded_user(db, "10", costs={"chat": "1"})

    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = {"x": value}
        return value

    # When the metadata nests to exactly the limit (the body object is one level), Then the charge goes through
    ok = api_call("POST", "/credits/usage", body={"operation": "chat", "metadata": nested(MAX_JSON_DEPTH - 1)},
                  as_user=user_id)  # fmt: skip
    assert ok.status == 201, ok.json
    # And one level more is refused
    deep = api_call("POST", "/credits/usage", body={"operation": "chat", "metadata": nested(MAX_JSON_DEPTH)},
                    as_user=user_id)  # fmt: skip
    assert (deep.status, deep.error_code) == (400, "malformed_json")
    # And brackets inside strings (escaped quotes included) are text, not nesting
    text = 'say \\"' + "[" * 300 + '{"'
    inside = api_call("POST", "/credits/usage", body={"operation": "chat", "metadata": {"note": text}}, as_user=user_id)
    assert inside.status == 201, inside.json
    assert balance(db, user_id) == 8 and len(ledger_rows(db, user_id)) == 3


def test_text_checks_still_run_on_deep_but_allowed_bodies(db: Callable[[], UnitOfWork]) -> None:
    user_id = funded_user(db, "10", costs={"chat": "1"})
    value: Any = "a\u0000b"
    for _ in range(40):
        value = [value]
    response = api_call("POST", "/credits/usage", body={"operation": "chat", "metadata": {"v": value}}, as_user=user_id)
    assert (response.status, response.error_code) == (400, "invalid_text")
    assert balance(db, user_id) == 10
