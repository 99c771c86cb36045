# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""The support desk through the real handlers: customers see only their own tickets and never an internal note
(answers and mail), staff filter, assign and move tickets along the allowed transitions, a customer's reply
reopens a resolved ticket and a closed one takes none, and every staff change is audited atomically."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.credits_support import funded_user
from tests.integration.auth_helpers import AuthEnv, auth_env  # noqa: F401
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.models import User
from tollgate.models.payments import Purchase

SECRET_NOTE = "internal: customer looks like a reseller, do not refund"


def _user(db: Callable[[], UnitOfWork], role: str = "USER") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        return user


def _open(customer: User | uuid.UUID, subject: str = "Charged twice", **extra: Any) -> dict[str, Any]:
    body = {"subject": subject, "description": "I was charged twice for one pack.", **extra}
    response = api_call("POST", "/support/tickets", body=body, as_user=customer)
    assert response.status == 201, response.json
    return response.json


def _patch(staff: User, ticket_id: str, **body: Any) -> Any:
    return api_call("PATCH", f"/admin/support/tickets/{ticket_id}", body=body, as_user=staff)


def _count(db: Callable[[], UnitOfWork], sql: str, **params: Any) -> int:
    with db() as uow:
        return int(uow.session.execute(text(sql), params).scalar_one())


def _audits(db: Callable[[], UnitOfWork], ticket_id: str) -> list[tuple[str, Any, Any]]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT action, old_values, new_values FROM audit_logs WHERE target_id = :t ORDER BY created_at, id"),
            {"t": ticket_id},
        ).all()
    return [(r.action, r.old_values, r.new_values) for r in rows]


def _mail_bodies(env: AuthEnv, recipient: str) -> list[str]:
    with UnitOfWork() as uow:
        ids = (
            uow.session.execute(
                text("SELECT id FROM email_logs WHERE recipient = :r AND status = 'sent' ORDER BY created_at"),
                {"r": recipient},
            )
            .scalars()
            .all()
        )
    return [_decoded(env.mail_dir / f"{log_id}.eml") for log_id in ids]


def _decoded(path: Path) -> str:
    message = message_from_bytes(path.read_bytes())
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return f"{message['Subject']}\n{payload.decode('utf-8')}"


def test_a_customer_sees_only_their_own_tickets(db):
    # Given two customers, one with a ticket
    alice, bob = _user(db), _user(db)
    ticket = _open(alice, priority="HIGH")
    assert (ticket["status"], ticket["priority"], ticket["messages"]) == ("OPEN", "HIGH", [])
    # When each lists and reads it
    mine = api_call("GET", "/support/tickets", as_user=alice).json
    theirs = api_call("GET", "/support/tickets", as_user=bob).json
    # Then only the owner sees it; to the other its id does not exist, for reading or replying
    assert [t["id"] for t in mine["items"]] == [ticket["id"]] and theirs["items"] == []
    assert api_call("GET", f"/support/tickets/{ticket['id']}", as_user=alice).status == 200
    other = api_call("GET", f"/support/tickets/{ticket['id']}", as_user=bob)
    assert (other.status, other.error_code) == (404, "ticket_not_found")
    reply = api_call("POST", f"/support/tickets/{ticket['id']}/messages", body={"content": "me too"}, as_user=bob)
    assert reply.status == 404
    assert _count(db, "SELECT count(*) FROM ticket_messages") == 0


@pytest.mark.parametrize(
    "body",
    [
        {"subject": "", "description": "x"},
        {"subject": "x" * 201, "description": "x"},
        {"subject": "Help", "description": "x", "priority": "CRITICAL"},
        {"subject": "Help", "description": "x", "status": "CLOSED"},
        {"subject": "Help"},
    ],
)
def test_a_bad_ticket_is_refused_and_nothing_is_written(db, body):
    # Given a customer, When they open a ticket with a bad body, Then 422 with a code and no ticket
    response = api_call("POST", "/support/tickets", body=body, as_user=_user(db))
    assert (response.status, response.error_code) == (422, "validation_error")
    assert _count(db, "SELECT count(*) FROM support_tickets") == 0


def test_internal_notes_never_reach_the_customer(db, auth_env: AuthEnv):
    # Given a customer's ticket and an agent
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket = _open(customer)
    path = f"/admin/support/tickets/{ticket['id']}/messages"
    # When the agent writes an internal note and a public reply
    note = api_call("POST", path, body={"content": SECRET_NOTE, "internal": True}, as_user=agent)
    public = api_call("POST", path, body={"content": "We refunded the second charge."}, as_user=agent)
    assert note.status == 201 and note.json["is_internal"] is True
    assert public.status == 201 and public.json["is_internal"] is False
    # Then the customer's ticket shows only the reply, with no trace of the note
    seen = api_call("GET", f"/support/tickets/{ticket['id']}", as_user=customer)
    assert [m["content"] for m in seen.json["messages"]] == ["We refunded the second charge."]
    assert SECRET_NOTE not in seen.body.decode() and "is_internal" not in seen.json["messages"][0]
    listed = api_call("GET", "/support/tickets", as_user=customer)
    assert SECRET_NOTE not in listed.body.decode()
    # And the customer was mailed the reply only; nobody was mailed the note
    [mailed] = _mail_bodies(auth_env, customer.email)
    assert "We refunded the second charge." in mailed
    every_mail = [_decoded(path) for path in auth_env.mail_dir.glob("*.eml")]
    assert every_mail and not any(SECRET_NOTE in m for m in every_mail)
    # And staff see both, the note marked internal
    desk = api_call("GET", f"/admin/support/tickets/{ticket['id']}", as_user=agent).json
    assert [(m["content"], m["is_internal"]) for m in desk["messages"]] == [
        (SECRET_NOTE, True),
        ("We refunded the second charge.", False),
    ]


def test_status_moves_only_along_the_allowed_transitions(db):
    # Given a ticket and an admin
    staff = _user(db, "ADMIN")
    ticket = _open(_user(db))["id"]
    # When it is taken, Then it cannot go back to OPEN
    assert _patch(staff, ticket, status="IN_PROGRESS").json["status"] == "IN_PROGRESS"
    back = _patch(staff, ticket, status="OPEN")
    assert (back.status, back.error_code) == (409, "invalid_ticket_transition")
    assert back.json["error"]["details"] == {"from": "IN_PROGRESS", "to": "OPEN", "allowed": ["CLOSED", "RESOLVED"]}
    # When it is resolved (resolved_at set), taken back, resolved again and closed
    resolved = _patch(staff, ticket, status="RESOLVED").json
    assert resolved["resolved_at"] is not None
    assert _patch(staff, ticket, status="IN_PROGRESS").json["resolved_at"] is None
    assert _patch(staff, ticket, status="RESOLVED").status == 200
    closed = _patch(staff, ticket, status="CLOSED").json
    assert closed["status"] == "CLOSED" and closed["closed_at"] is not None
    # Then CLOSED is final
    for status in ("OPEN", "IN_PROGRESS", "RESOLVED"):
        assert _patch(staff, ticket, status=status).status == 409
    # And each change was audited with the old and new status, none for the refused ones
    assert [(old, new) for action, old, new in _audits(db, ticket) if action == "support.ticket_update"] == [
        ({"status": "OPEN"}, {"status": "IN_PROGRESS"}),
        ({"status": "IN_PROGRESS"}, {"status": "RESOLVED"}),
        ({"status": "RESOLVED"}, {"status": "IN_PROGRESS"}),
        ({"status": "IN_PROGRESS"}, {"status": "RESOLVED"}),
        ({"status": "RESOLVED"}, {"status": "CLOSED"}),
    ]


def test_a_customer_reply_reopens_a_resolved_ticket_and_a_closed_one_takes_no_replies(db):
    # Given a resolved ticket
    customer, staff = _user(db), _user(db, "SUPPORT")
    ticket = _open(customer)["id"]
    assert _patch(staff, ticket, status="RESOLVED").status == 200
    # When the customer replies, Then it is open again
    path = f"/support/tickets/{ticket}/messages"
    assert api_call("POST", path, body={"content": "Still broken"}, as_user=customer).status == 201
    reopened = api_call("GET", f"/support/tickets/{ticket}", as_user=customer).json
    assert (reopened["status"], reopened["resolved_at"]) == ("OPEN", None)
    # When it is closed, Then neither side may reply (staff may still keep a note)
    assert _patch(staff, ticket, status="CLOSED").status == 200
    refused = api_call("POST", path, body={"content": "Hello?"}, as_user=customer)
    assert (refused.status, refused.error_code) == (409, "ticket_closed")
    staff_path = f"/admin/support/tickets/{ticket}/messages"
    assert api_call("POST", staff_path, body={"content": "Sorry"}, as_user=staff).status == 409
    assert (
        api_call("POST", staff_path, body={"content": "closed as duplicate", "internal": True}, as_user=staff).status
        == 201
    )
    assert api_call("GET", f"/support/tickets/{ticket}", as_user=customer).json["status"] == "CLOSED"


def test_only_active_staff_may_be_assigned_and_customer_replies_mail_the_assignee(db, auth_env: AuthEnv):
    # Given a ticket, an admin, a support agent and a plain user
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    customer, admin, agent, plain = _user(db), _user(db, "ADMIN"), _user(db, "SUPPORT"), _user(db)
    ticket = _open(customer)["id"]
    # When a plain user or an unknown id is assigned, Then 422 and nothing changes or is audited
    for wrong in (plain.id, uuid.uuid4()):
        refused = _patch(admin, ticket, assignee_id=str(wrong))
        assert (refused.status, refused.error_code) == (422, "invalid_assignee")
    assert _audits(db, ticket) == []
    # When the agent is assigned
    assigned = _patch(admin, ticket, assignee_id=str(agent.id), priority="URGENT").json
    assert (assigned["assignee_id"], assigned["priority"]) == (str(agent.id), "URGENT")
    # Then the customer's reply is mailed to the agent
    api_call("POST", f"/support/tickets/{ticket}/messages", body={"content": "Any news?"}, as_user=customer)
    assert any("Any news?" in body for body in _mail_bodies(auth_env, agent.email))
    # When unassigned (null) with no support inbox configured, Then the next reply mails nobody
    assert _patch(admin, ticket, assignee_id=None).json["assignee_id"] is None
    before = _count(db, "SELECT count(*) FROM email_logs")
    api_call("POST", f"/support/tickets/{ticket}/messages", body={"content": "Hello?"}, as_user=customer)
    assert _count(db, "SELECT count(*) FROM email_logs") == before
    # When the support inbox is set, Then unassigned replies go there
    inbox = "desk@example.com"
    put = api_call(
        "PUT", "/admin/system-config/support_inbox_email", body={"value": inbox, "type": "string"}, as_user=admin
    )
    assert put.status == 200, put.json
    api_call("POST", f"/support/tickets/{ticket}/messages", body={"content": "Anyone?"}, as_user=customer)
    assert any("Anyone?" in body for body in _mail_bodies(auth_env, inbox))
    # And the assignment changes were audited with old and new values
    updates = [(old, new) for action, old, new in _audits(db, ticket) if action == "support.ticket_update"]
    assert updates == [
        ({"assignee_id": None, "priority": "MEDIUM"}, {"assignee_id": str(agent.id), "priority": "URGENT"}),
        ({"assignee_id": str(agent.id)}, {"assignee_id": None}),
    ]


def test_staff_filter_every_ticket_with_a_cursor(db):
    # Given tickets of two customers, one assigned and urgent, one resolved
    admin, agent = _user(db, "ADMIN"), _user(db, "SUPPORT")
    first, second = _user(db), _user(db)
    ids = [_open(first, f"Ticket {n}")["id"] for n in range(3)] + [_open(second, "Other")["id"]]
    _patch(admin, ids[0], assignee_id=str(agent.id), priority="URGENT")
    _patch(admin, ids[1], status="RESOLVED")

    def listed(query: str) -> list[str]:
        return [t["id"] for t in api_call("GET", "/admin/support/tickets", query=query, as_user=agent).json["items"]]

    # When staff filter, Then each filter narrows the newest-first list
    assert listed("") == ids[::-1]
    assert listed("priority=URGENT") == [ids[0]] == listed(f"assignee_id={agent.id}")
    assert listed("status=RESOLVED") == [ids[1]]
    assert listed("status=OPEN") == [ids[3], ids[2], ids[0]]
    assert listed(f"customer_id={second.id}") == [ids[3]]
    assert api_call("GET", "/admin/support/tickets", query="status=DONE", as_user=agent).status == 422
    # When they page two at a time, Then the pages cover every ticket once
    page = api_call("GET", "/admin/support/tickets", query="limit=2", as_user=agent).json
    rest = api_call("GET", "/admin/support/tickets", query=f"limit=2&cursor={page['next_cursor']}", as_user=agent).json
    assert [t["id"] for t in page["items"] + rest["items"]] == ids[::-1] and rest["next_cursor"] is None


def test_staff_see_the_customers_context(db):
    # Given a customer with credits, a charge and a purchase, and a ticket
    customer_id = funded_user(db, "20")
    with db() as uow:
        uow.session.add(
            Purchase(
                provider="stripe", provider_order_id="cs_ctx", user_id=customer_id, package_name="Starter",
                credits=Decimal(100), amount=Decimal("5.00"), currency="usd", status="completed",
            )
        )  # fmt: skip
        uow.commit()
    ticket = _open(customer_id)["id"]
    # When an agent opens the ticket
    desk = api_call("GET", f"/admin/support/tickets/{ticket}", as_user=_user(db, "SUPPORT"))
    # Then it carries the customer, their balance, purchases and last ledger entries (orders: none yet)
    assert desk.status == 200, desk.json
    context = desk.json["context"]
    assert context["customer"]["id"] == str(customer_id) and context["balance"] == "20.0000"
    assert [(p["package_name"], p["amount"]) for p in context["recent_purchases"]] == [("Starter", "5.000")]
    assert [(e["amount"], e["balance_after"]) for e in context["recent_ledger_entries"]] == [("20.0000", "20.0000")]
    assert context["recent_orders"] == []


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/admin/support/tickets", None),
        ("GET", "/admin/support/tickets/{t}", None),
        ("PATCH", "/admin/support/tickets/{t}", {"status": "IN_PROGRESS"}),
        ("POST", "/admin/support/tickets/{t}/messages", {"content": "hi"}),
    ],
)
def test_customers_may_not_use_the_staff_desk(db, method, path, body):
    # Given a customer's own ticket, When the customer calls a staff route on it, Then 403 and nothing changes
    customer = _user(db)
    ticket = _open(customer)["id"]
    response = api_call(method, path.format(t=ticket), body=body, as_user=customer)
    assert (response.status, response.error_code) == (403, "forbidden")
    assert _count(db, "SELECT count(*) FROM ticket_messages") == 0
    assert api_call("GET", f"/support/tickets/{ticket}", as_user=customer).json["status"] == "OPEN"


def test_a_failed_change_leaves_no_audit_row(db):
    # Given a ticket, and a database that refuses the ticket's update only when the transaction commits
    staff = _user(db, "ADMIN")
    ticket = _open(_user(db))["id"]
    with db() as uow:
        uow.session.execute(
            text(
                "CREATE FUNCTION test_refuse_ticket() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused at commit'; END $$"
            )
        )
        uow.session.execute(
            text(
                "CREATE CONSTRAINT TRIGGER test_refuse_ticket AFTER UPDATE ON support_tickets "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_refuse_ticket()"
            )
        )
        uow.commit()
    try:
        # When staff change it (the audit row is written before the commit fails)
        response = _patch(staff, ticket, status="IN_PROGRESS", priority="HIGH")
    finally:
        with db() as uow:
            uow.session.execute(text("DROP TRIGGER test_refuse_ticket ON support_tickets"))
            uow.session.execute(text("DROP FUNCTION test_refuse_ticket()"))
            uow.commit()
    # Then the change failed, the ticket is as it was, and no audit row survived
    assert response.status == 500
    desk = api_call("GET", f"/admin/support/tickets/{ticket}", as_user=staff).json
    assert (desk["status"], desk["priority"]) == ("OPEN", "MEDIUM")
    assert _audits(db, ticket) == []
