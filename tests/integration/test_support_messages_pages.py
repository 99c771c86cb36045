"""Paging over a ticket's messages through the real gateway: the customer's list and the staff desk's, newest first
by id, each message once; internal notes only on the staff side (not in the customer's pages, their sizes or their
cursors); the ticket answers keep their latest 200 and hand over to the list with `messages_next_cursor`; a cursor
pages only the ticket and side that issued it; another customer's ticket is not found; limits are bounded."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from tests.gateway_support import api_key_for
from tests.support import api_call, edited, make_user
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.models import User
from tollgate.models.support import TicketMessage
from tollgate.pagination import encode_cursor

Db = Callable[[], UnitOfWork]
NOTE_EVERY = 10  # every tenth message of a thread is an internal note


def _user(db: Db, role: str = "USER") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
        return user


def _ticket(customer: User) -> str:
    body = {"subject": "Charged twice", "description": "I was charged twice for one pack."}
    opened = api_call("POST", "/support/tickets", body=body, as_user=customer)
    assert opened.status == 201, opened.json
    assert opened.json["messages_next_cursor"] is None
    return str(opened.json["id"])


def _thread(db: Db, ticket_id: str, customer: User, agent: User, count: int) -> list[tuple[str, bool]]:
    """`count` messages on the ticket, oldest first: customer replies, staff replies and every NOTE_EVERY-th an
    internal note. Returns (id, internal) of each, in the order written (ids are UUIDv7: increasing)."""
    now = utcnow()
    rows = []
    for i in range(count):
        internal = i % NOTE_EVERY == NOTE_EVERY - 1
        staff = internal or i % 2 == 1
        rows.append(
            TicketMessage(
                ticket_id=uuid.UUID(ticket_id),
                user_id=(agent if staff else customer).id,
                content=f"m{i}",
                is_internal=internal,
                from_staff=staff,
                created_at=now + timedelta(microseconds=i),
            )
        )
    with db() as uow:
        uow.session.add_all(rows)
        uow.session.flush()
        written = [(str(m.id), m.is_internal) for m in rows]
        uow.commit()
    return written


def _customer_path(ticket_id: str) -> str:
    return f"/support/tickets/{ticket_id}/messages"


def _staff_path(ticket_id: str) -> str:
    return f"/admin/support/tickets/{ticket_id}/messages"


def _all_pages(path: str, reader: User, *, limit: int, cursor: str | None = None) -> list[list[dict[str, Any]]]:
    pages = []
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = api_call("GET", path, query=query, as_user=reader)
        assert page.status == 200, page.json
        pages.append(page.json["items"])
        cursor = page.json["next_cursor"]
        if cursor is None:
            return pages


def test_250_messages_page_20_at_a_time_newest_first_each_once_notes_only_for_staff(db: Db) -> None:
    # Given a ticket with 250 messages, 25 of them internal notes
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    written = _thread(db, ticket_id, customer, agent, 250)
    public = [m for m, internal in written if not internal]
    notes = {m for m, internal in written if internal}
    assert (len(public), len(notes)) == (225, 25)
    # When the agent pages the staff list 20 at a time
    staff_pages = _all_pages(_staff_path(ticket_id), agent, limit=20)
    # Then every message comes once, newest first, each page full but the last, the notes marked
    staff_items = [m for page in staff_pages for m in page]
    assert [m["id"] for m in staff_items] == [m for m, _ in reversed(written)]
    assert [len(page) for page in staff_pages] == [20] * 12 + [10]
    assert {m["id"] for m in staff_items if m["is_internal"]} == notes
    # When the customer pages their list 20 at a time
    customer_pages = _all_pages(_customer_path(ticket_id), customer, limit=20)
    # Then every public message comes once, newest first, in full pages (the notes left no gaps), and no note
    customer_items = [m for page in customer_pages for m in page]
    assert [m["id"] for m in customer_items] == public[::-1]
    assert [len(page) for page in customer_pages] == [20] * 11 + [5]
    assert all("is_internal" not in m for m in customer_items)
    assert {m["content"] for m in customer_items}.isdisjoint({f"m{i}" for i in range(9, 250, NOTE_EVERY)})
    # And the messages carry who wrote them
    first = customer_items[-1]
    assert (first["content"], first["from_staff"], first["user_id"]) == ("m0", False, str(customer.id))


def test_the_ticket_answers_keep_their_latest_200_and_hand_over_to_the_list(db: Db) -> None:
    # Given a ticket with 250 messages, 25 of them internal notes
    customer, agent = _user(db), _user(db, "ADMIN")
    ticket_id = _ticket(customer)
    written = _thread(db, ticket_id, customer, agent, 250)
    public = [m for m, internal in written if not internal]
    # When the customer reads the ticket
    answer = api_call("GET", f"/support/tickets/{ticket_id}", as_user=customer)
    # Then it carries the latest 200 public messages oldest first, and a cursor for the older ones
    assert answer.status == 200, answer.json
    assert [m["id"] for m in answer.json["messages"]] == public[-200:]
    older = answer.json["messages_next_cursor"]
    assert older
    # When they page on from it, Then they get the 25 older public messages, newest first, each once
    rest = [m["id"] for page in _all_pages(_customer_path(ticket_id), customer, limit=20, cursor=older) for m in page]
    assert rest == public[:25][::-1]
    # When the agent reads the ticket, Then the latest 200 of all messages, and their cursor pages on to the rest
    desk = api_call("GET", f"/admin/support/tickets/{ticket_id}", as_user=agent)
    assert desk.status == 200, desk.json
    assert [m["id"] for m in desk.json["messages"]] == [m for m, _ in written[-200:]]
    staff_rest = _all_pages(_staff_path(ticket_id), agent, limit=100, cursor=desk.json["messages_next_cursor"])
    assert [m["id"] for page in staff_rest for m in page] == [m for m, _ in written[:50]][::-1]


def test_older_internal_notes_give_the_customer_no_cursor_and_no_short_page(db: Db) -> None:
    # Given a ticket whose 200 latest public messages are all its public ones, with notes among and before them
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    notes_first = [
        api_call("POST", _staff_path(ticket_id), body={"content": f"note {i}", "internal": True}, as_user=agent)
        for i in range(3)
    ]
    assert all(n.status == 201 for n in notes_first)
    written = _thread(db, ticket_id, customer, agent, 220)
    public = [m for m, internal in written if not internal]
    assert len(public) == 198
    for i in range(2):
        assert api_call("POST", _customer_path(ticket_id), body={"content": f"r{i}"}, as_user=customer).status == 201
    # When the customer reads the ticket, Then all 200 public messages and no cursor (only notes are older)
    answer = api_call("GET", f"/support/tickets/{ticket_id}", as_user=customer).json
    assert len(answer["messages"]) == 200 and answer["messages_next_cursor"] is None
    # When they list 100 at a time, Then two full pages and no cursor after the last public message
    page = api_call("GET", _customer_path(ticket_id), query="limit=100", as_user=customer).json
    last = api_call("GET", _customer_path(ticket_id), query=f"limit=100&cursor={page['next_cursor']}", as_user=customer)
    assert len(page["items"]) == 100 and len(last.json["items"]) == 100 and last.json["next_cursor"] is None
    # While the agent's view of the same ticket has older messages to page to
    desk = api_call("GET", f"/admin/support/tickets/{ticket_id}", as_user=agent).json
    assert desk["messages_next_cursor"] is not None


def test_a_cursor_pages_only_the_ticket_and_side_that_issued_it(db: Db) -> None:
    # Given a customer with two tickets of 30 messages each, and an agent
    customer, agent = _user(db), _user(db, "SUPPORT")
    first, second = _ticket(customer), _ticket(customer)
    _thread(db, first, customer, agent, 30)
    _thread(db, second, customer, agent, 30)
    own = api_call("GET", _customer_path(first), query="limit=5", as_user=customer).json["next_cursor"]
    desk = api_call("GET", _staff_path(first), query="limit=5", as_user=agent).json["next_cursor"]
    ticket_list = api_call("GET", "/support/tickets", query="limit=1", as_user=customer).json["next_cursor"]
    assert own and desk and ticket_list
    payload, _, mac = own.partition(".")
    unbound = encode_cursor("ticket_messages.id:desc", [uuid.uuid4()])
    # When the customer pages the second ticket with the first's cursor, the staff side's, the ticket list's, an
    # edited one, one without its MAC, one signed for the table's order alone, or no cursor at all
    for cursor in (own, desk, ticket_list, edited(own), payload, f"{payload}.{mac[::-1]}", unbound, "x" * 600):
        refused = api_call("GET", _customer_path(second), query=f"cursor={cursor}", as_user=customer)
        # Then 400 invalid_cursor
        assert (refused.status, refused.error_code) == (400, "invalid_cursor"), cursor
    # And on the staff side: the customer's cursor and another ticket's are refused too
    for cursor in (own, api_call("GET", _staff_path(second), query="limit=5", as_user=agent).json["next_cursor"]):
        refused = api_call("GET", _staff_path(first), query=f"cursor={cursor}", as_user=agent)
        assert (refused.status, refused.error_code) == (400, "invalid_cursor")
    # While each cursor still pages its own list
    assert api_call("GET", _customer_path(first), query=f"cursor={own}", as_user=customer).status == 200
    assert api_call("GET", _staff_path(first), query=f"cursor={desk}", as_user=agent).status == 200


def test_another_customers_ticket_is_not_found_as_an_unknown_one(db: Db) -> None:
    # Given Alice's ticket with messages, and Bob
    alice, bob, agent = _user(db), _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(alice)
    _thread(db, ticket_id, alice, agent, 30)
    # When Bob lists its messages, and a ticket id nobody has
    theirs = api_call("GET", _customer_path(ticket_id), as_user=bob)
    unknown = api_call("GET", _customer_path(str(uuid.uuid4())), as_user=bob)
    # Then both answer the same 404 ticket_not_found as the ticket read, with no message
    assert (theirs.status, theirs.error_code) == (unknown.status, unknown.error_code) == (404, "ticket_not_found")
    assert api_call("GET", f"/support/tickets/{ticket_id}", as_user=bob).error_code == "ticket_not_found"
    assert "m0" not in theirs.body.decode()
    # And the staff desk answers an unknown ticket the same way
    missing = api_call("GET", _staff_path(str(uuid.uuid4())), as_user=agent)
    assert (missing.status, missing.error_code) == (404, "ticket_not_found")


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=101", "limit=-1", "limit=ten", "limit=1.5", "limit=100000000000000000000000", "limit=",
     "limit=%20", "limit=1e2", "limit=0x10", "limit=true"],
)  # fmt: skip
def test_a_limit_outside_1_to_100_is_refused(db: Db, query: str) -> None:
    # Given a ticket, When either side asks for a page size that is no integer in 1-100, Then 422 validation_error
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    for path, reader in ((_customer_path(ticket_id), customer), (_staff_path(ticket_id), agent)):
        refused = api_call("GET", path, query=query, as_user=reader)
        assert (refused.status, refused.error_code) == (422, "validation_error"), (path, query)


def test_the_bounds_themselves_are_served(db: Db) -> None:
    # Given a ticket with 120 messages, When the customer asks for 1 and for 100, Then so many come
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    _thread(db, ticket_id, customer, agent, 120)
    one = api_call("GET", _customer_path(ticket_id), query="limit=1", as_user=customer).json
    hundred = api_call("GET", _customer_path(ticket_id), query="limit=100", as_user=customer).json
    default = api_call("GET", _customer_path(ticket_id), as_user=customer).json
    assert (len(one["items"]), len(hundred["items"]), len(default["items"])) == (1, 100, 20)
    assert one["items"][0] == hundred["items"][0] == default["items"][0]


def test_only_staff_read_the_staff_list_and_keys_follow_the_ticket_routes(db: Db) -> None:
    # Given a customer's ticket with a note, and an admin-scoped key of a SUPPORT agent
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    note = api_call("POST", _staff_path(ticket_id), body={"content": "note", "internal": True}, as_user=agent)
    assert note.status == 201
    # When the customer calls the staff list, Then 403 forbidden
    refused = api_call("GET", _staff_path(ticket_id), as_user=customer)
    assert (refused.status, refused.error_code) == (403, "forbidden")
    # When the agent's admin key reads it through the authorizer, Then the note is there, marked
    headers = {"x-api-key": api_key_for(agent.id, scopes=("admin",))}
    read = api_call("GET", _staff_path(ticket_id), headers=headers, through_authorizer=True)
    assert read.status == 200 and [m["is_internal"] for m in read.json["items"]] == [True]
    # When the customer's key (any scope) reads the customer list, Then it is refused as the ticket read is
    key = {"x-api-key": api_key_for(customer.id, scopes=("profile:read", "orders:read"))}
    assert api_call("GET", _customer_path(ticket_id), headers=key, through_authorizer=True).status == 403
    assert api_call("GET", f"/support/tickets/{ticket_id}", headers=key, through_authorizer=True).status == 403
