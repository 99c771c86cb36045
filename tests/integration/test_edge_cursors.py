"""Crafted cursors on every list: 400 `invalid_cursor`, decided before any statement reaches the database."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal

import pytest

from tests.edge_support import recorded_statements
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate.models.credits import Plan

ADMIN = {"user_id": str(uuid.uuid4()), "role": "ADMIN", "session_id": "", "tier": ""}
USER = {"user_id": str(uuid.uuid4()), "role": "USER", "session_id": "", "tier": ""}

# Every list route, with the caller it needs (None: public).
LISTS: list[tuple[str, dict[str, str] | None]] = [
    ("/plans", None),
    ("/credit-packs", None),
    ("/credits/transactions", USER),
    ("/admin/plans", ADMIN),
    ("/admin/credit-packs", ADMIN),
    ("/billing/purchases", USER),
    ("/billing/invoices", USER),
    ("/auth/sessions", USER),
    ("/auth/api-keys", USER),
    ("/admin/rag/chunks", ADMIN),
    ("/rag/conversations", USER),
]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# The reported payloads, raw and base64-wrapped as the old cursors were, and other shapes a client may invent.
CRAFTED = [
    "[1,2]",
    '["a","b"]',
    "[null,null]",
    _b64(b"[1,2]"),
    _b64(b'["a","b"]'),
    _b64(b"[null,null]"),
    _b64(b'[{"t":"9999-12-31T23:59:59-14:00"},{"u":"00000000-0000-0000-0000-000000000000"}]'),
    _b64(uuid.UUID(int=7).bytes),  # the knowledge base's old cursor
    str(uuid.UUID(int=7)),  # the sessions' old cursor
    "A" * 600,
]


@pytest.fixture
def statements(db: Callable[[], UnitOfWork]) -> Iterator[list[str]]:
    """Every SQL statement sent to the database while the test runs (on the test database)."""
    with recorded_statements() as seen:
        yield seen


@pytest.mark.parametrize(("path", "caller"), LISTS)
def test_crafted_cursors_are_400_invalid_cursor_before_any_statement(
    path: str, caller: dict[str, str] | None, statements: list[str]
) -> None:
    for cursor in CRAFTED:
        # Given a cursor the server never issued, When a list is asked for the page after it
        response = api_call("GET", path, query=f"cursor={cursor}", authorizer_context=caller)
        # Then it is refused as a bad request, and nothing was sent to the database
        assert (response.status, response.error_code) == (400, "invalid_cursor"), (path, cursor, response.json)
        assert statements == [], (path, cursor, statements)


def test_a_cursor_from_one_list_is_refused_by_another(db: Callable[[], UnitOfWork]) -> None:
    # Given two active plans and two packs, and the first page of plans
    with db() as uow:
        for n in range(2):
            uow.session.add(Plan(tier=f"T{n}", name=f"Plan {n}", monthly_credits=Decimal(n), sort_order=n))
        uow.commit()
    plans = api_call("GET", "/plans", query="limit=1")
    assert plans.status == 200 and plans.json["next_cursor"]
    cursor = plans.json["next_cursor"]
    # When the plan cursor is used on its own list, on the credit packs and on the caller's ledger
    same = api_call("GET", "/plans", query=f"limit=1&cursor={cursor}")
    packs = api_call("GET", "/credit-packs", query=f"cursor={cursor}")
    ledger = api_call("GET", "/credits/transactions", query=f"cursor={cursor}", authorizer_context=USER)
    # Then only its own list accepts it
    assert same.status == 200 and [p["name"] for p in same.json["items"]] == ["Plan 1"]
    assert (packs.status, packs.error_code) == (400, "invalid_cursor")
    assert (ledger.status, ledger.error_code) == (400, "invalid_cursor")


def test_a_tampered_cursor_is_refused(db: Callable[[], UnitOfWork]) -> None:
    # Given a real next-page cursor of the admin plan list
    with db() as uow:
        for n in range(3):
            uow.session.add(Plan(tier=f"T{n}", name=f"Plan {n}", monthly_credits=Decimal(n), sort_order=n))
        uow.commit()
    page = api_call("GET", "/admin/plans", query="limit=1", authorizer_context=ADMIN)
    cursor = page.json["next_cursor"]
    payload, mac = cursor.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    # When a client rewrites the key it carries (to skip ahead) and keeps the signature
    decoded["v"][0] = -1000
    forged = f"{_b64(json.dumps(decoded, separators=(',', ':')).encode())}.{mac}"
    response = api_call("GET", "/admin/plans", query=f"limit=1&cursor={forged}", authorizer_context=ADMIN)
    # Then it is refused, while the real cursor still pages on
    assert (response.status, response.error_code) == (400, "invalid_cursor")
    real = api_call("GET", "/admin/plans", query=f"limit=1&cursor={cursor}", authorizer_context=ADMIN)
    assert real.status == 200 and [p["name"] for p in real.json["items"]] == ["Plan 1"]
