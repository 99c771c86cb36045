# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""Attacks on the support desk, goodwill credits and system config (issue 14), through the real gateway and
authorizer where a route is involved: internal notes on every path out, other customers' tickets, keys and
demoted staff on the desk, assignment to people who are not active staff, racing staff changes, header injection
through a subject or a setting, goodwill amounts and caps (a cap changed elsewhere, the daily bound, reused keys),
and settings of the wrong type, form or number."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from email import message_from_bytes
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tests.credits_support import assert_consistent, balance, funded_user
from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer, clear_caches  # noqa: F401
from tests.support import api_call, make_user
from tollgate import system_config
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.models import User
from tollgate.models.support import TicketMessage

Db = Callable[[], UnitOfWork]
SECRET_NOTE = "internal: chargeback risk, do not refund"
RACERS = 6


def _user(db: Db, role: str = "USER", **fields: Any) -> User:
    with db() as uow:
        user = make_user(uow.session, role=role, **fields)
        uow.commit()
        uow.session.expunge(user)
        return user


def _signed_in(db: Db, auth_env: AuthEnv, role: str = "USER") -> tuple[User, dict[str, str]]:
    """A registered, verified user of `role` and the bearer header of a fresh sign-in."""
    email = auth_env.register_verified()
    with db() as uow:
        user = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        user.role = role
        uow.commit()
        uow.session.expunge(user)
    return user, bearer(auth_env.login(email)["access_token"])


def _gw(method: str, path: str, headers: dict[str, str], body: Any = None, query: str = "") -> Any:
    return api_call(method, path, body=body, query=query, headers=headers, through_authorizer=True)


def _count(db: Db, sql: str, **params: Any) -> int:
    with db() as uow:
        return int(uow.session.execute(text(sql), params).scalar_one())


def _set_user(db: Db, user_id: uuid.UUID, **fields: Any) -> None:
    with db() as uow:
        user = uow.session.get(User, user_id)
        assert user is not None
        for name, value in fields.items():
            setattr(user, name, value)
        uow.commit()


def _open(customer: User, subject: str = "Charged twice", **extra: Any) -> Any:
    body = {"subject": subject, "description": "I was charged twice for one pack.", **extra}
    return api_call("POST", "/support/tickets", body=body, as_user=customer)


def _ticket(customer: User) -> str:
    response = _open(customer)
    assert response.status == 201, response.json
    return str(response.json["id"])


def _mails(auth_env: AuthEnv, recipient: str) -> list[str]:
    """Every support mail sent to `recipient`, headers and decoded body."""
    with UnitOfWork() as uow:
        ids = (
            uow.session.execute(
                text(
                    "SELECT id FROM email_logs WHERE lower(recipient) = lower(:r) AND status = 'sent'"
                    " AND type LIKE 'support%' ORDER BY created_at"
                ),
                {"r": recipient},
            )
            .scalars()
            .all()
        )
    out = []
    for log_id in ids:
        message = message_from_bytes((auth_env.mail_dir / f"{log_id}.eml").read_bytes())
        payload = message.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append(f"{message.as_string()}\n{payload.decode()}")
    return out


def _goodwill(staff: User, customer: uuid.UUID, amount: Any, key: str | None = None, **extra: Any) -> Any:
    headers = {"idempotency-key": key} if key else None
    body = {"amount": amount, "reason": "sorry for the outage", **extra}
    return api_call("POST", f"/support/users/{customer}/goodwill", body=body, headers=headers, as_user=staff)


def _put(admin: User, key: str, value: Any, type_: str) -> Any:
    return api_call("PUT", f"/admin/system-config/{key}", body={"value": value, "type": type_}, as_user=admin)


# --- internal notes, on every path out ---------------------------------------------------------------------------
def test_an_internal_note_reaches_the_customer_by_no_path(db: Db, auth_env: AuthEnv) -> None:
    # Given a signed-in customer's ticket with an internal note and a public reply
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    customer, session = _signed_in(db, auth_env)
    agent = _user(db, "SUPPORT")
    opened = _gw("POST", "/support/tickets", session, {"subject": "Refund?", "description": "Please refund."})
    assert opened.status == 201, opened.json
    ticket_id = opened.json["id"]
    path = f"/admin/support/tickets/{ticket_id}/messages"
    note = api_call("POST", path, body={"content": SECRET_NOTE, "internal": True}, as_user=agent)
    public = api_call("POST", path, body={"content": "We are looking into it."}, as_user=agent)
    assert (note.status, public.status) == (201, 201)
    # When the customer lists, reads, replies (the answer to a reply), and reads their mail and their export
    answers = [
        _gw("GET", "/support/tickets", session),
        _gw("GET", f"/support/tickets/{ticket_id}", session),
        _gw("POST", f"/support/tickets/{ticket_id}/messages", session, {"content": "Thanks"}),
        api_call("POST", f"/admin/users/{customer.id}/export", as_user=_user(db, "ADMIN")),
    ]
    # Then the note is in none of them (and the public reply is where it belongs)
    for answer in answers:
        assert answer.status in (200, 201), answer.json
        assert SECRET_NOTE not in answer.body.decode()
    assert [m["content"] for m in answers[1].json["messages"]] == ["We are looking into it."]
    mails = _mails(auth_env, customer.email)
    assert len(mails) == 1 and "We are looking into it." in mails[0]
    assert all(SECRET_NOTE not in m for m in mails)
    # And the staff view does hold it (it was written)
    staff = api_call("GET", f"/admin/support/tickets/{ticket_id}", as_user=agent).json
    assert [m["is_internal"] for m in staff["messages"]] == [True, False, False]


def test_a_customers_api_key_reads_no_ticket(db: Db, auth_env: AuthEnv) -> None:
    # Given a customer with a ticket and a key holding every scope a customer may hold
    customer, _ = _signed_in(db, auth_env)
    ticket_id = _ticket(customer)
    key = {"x-api-key": api_key_for(customer.id, scopes=("profile:read", "credits:read", "orders:read"))}
    # When the key calls the customer's own ticket routes, Then none admits it (a session only) and nothing is
    # written
    for method, path, body in [
        ("GET", "/support/tickets", None),
        ("GET", f"/support/tickets/{ticket_id}", None),
        ("POST", "/support/tickets", {"subject": "x", "description": "y"}),
        ("POST", f"/support/tickets/{ticket_id}/messages", {"content": "z"}),
    ]:
        assert _gw(method, path, key, body).status in (401, 403), path
    assert _count(db, "SELECT count(*) FROM support_tickets") == 1
    assert _count(db, "SELECT count(*) FROM ticket_messages") == 0


STAFF_ROUTES = [
    ("GET", "/admin/support/tickets", None),
    ("GET", "/admin/support/tickets/{t}", None),
    ("PATCH", "/admin/support/tickets/{t}", {"status": "CLOSED"}),
    ("POST", "/admin/support/tickets/{t}/messages", {"content": "hello", "internal": True}),
    ("POST", "/support/users/{u}/goodwill", {"amount": "5", "reason": "x"}),
    ("GET", "/admin/system-config", None),
    ("PUT", "/admin/system-config/support_goodwill_cap", {"value": "1000000", "type": "number"}),
]


def test_users_and_demoted_staff_reach_no_staff_route_with_a_session_or_a_key(db: Db, auth_env: AuthEnv) -> None:
    # Given a customer's ticket, a plain user's session and key, and an agent who made an admin-scoped key and
    # was then demoted to USER
    customer = funded_user(db, "0")
    owner = _user(db)
    ticket_id = _ticket(owner)
    plain, plain_session = _signed_in(db, auth_env)
    plain_key = {"x-api-key": api_key_for(plain.id, scopes=("profile:read", "credits:read", "credits:write"))}
    agent, agent_session = _signed_in(db, auth_env, role="SUPPORT")
    agent_key = {"x-api-key": api_key_for(agent.id, scopes=("admin",))}
    assert _gw("GET", "/admin/support/tickets", agent_key).status == 200  # the key works while they are staff
    _set_user(db, agent.id, role="USER")
    clear_caches()  # past the authorizer's verdict cache
    # When each calls every staff route
    for headers in (plain_session, plain_key, agent_session, agent_key):
        for method, template, body in STAFF_ROUTES:
            path = template.format(t=ticket_id, u=customer)
            response = _gw(method, path, headers, body)
            # Then each is refused, and nothing of the ticket leaks into the refusal
            assert response.status in (401, 403), (method, path, response.json)
            assert "Charged twice" not in response.body.decode()
    # And nothing changed
    assert _count(db, "SELECT count(*) FROM ticket_messages") == 0
    assert _count(db, "SELECT count(*) FROM support_tickets WHERE status = 'OPEN'") == 1
    assert balance(db, customer) == Decimal(0) and _count(db, "SELECT count(*) FROM system_config") == 0


def test_another_customers_ticket_does_not_exist_on_any_customer_route(db: Db, auth_env: AuthEnv) -> None:
    # Given Alice's ticket, and Bob signed in
    alice = _user(db)
    ticket_id = _ticket(alice)
    _, bob = _signed_in(db, auth_env)
    # When Bob reads it, replies on it, or asks for a made-up or malformed id
    answers = [
        _gw("GET", f"/support/tickets/{ticket_id}", bob),
        _gw("POST", f"/support/tickets/{ticket_id}/messages", bob, {"content": "mine now"}),
        _gw("GET", f"/support/tickets/{uuid.uuid4()}", bob),
    ]
    # Then it is "not found", exactly as a ticket that does not exist
    assert [(a.status, a.error_code) for a in answers] == [(404, "ticket_not_found")] * 3
    assert "Charged twice" not in "".join(a.body.decode() for a in answers)
    assert _gw("GET", "/support/tickets/not-a-uuid", bob).status in (400, 404, 422)
    # And Bob's list filtered by any status shows nothing of Alice's
    for status in ("OPEN", "IN_PROGRESS", "RESOLVED", "CLOSED"):
        assert _gw("GET", "/support/tickets", bob, query=f"status={status}").json["items"] == []
    assert _count(db, "SELECT count(*) FROM ticket_messages") == 0


# --- assignment ---------------------------------------------------------------------------------------------------
def test_only_an_active_staff_member_is_ever_assigned(db: Db) -> None:
    # Given a ticket, an agent, and people who are not active staff
    ticket_id = _ticket(_user(db))
    agent = _user(db, "SUPPORT")
    others = [
        _user(db),
        _user(db, "SUPPORT", status="SUSPENDED"),
        _user(db, "ADMIN", status="LOCKED"),
        _user(db, "SUPPORT", deleted_at=utcnow()),
        _user(db, "SUPPORT", status="DELETED"),
    ]
    # When the agent assigns each of them (or an id that is nobody)
    for target in [*(o.id for o in others), uuid.uuid4()]:
        response = api_call(
            "PATCH", f"/admin/support/tickets/{ticket_id}", body={"assignee_id": str(target)}, as_user=agent
        )
        # Then 422 invalid_assignee, the ticket unassigned, nothing audited
        assert (response.status, response.error_code) == (422, "invalid_assignee"), target
    assert _count(db, "SELECT count(*) FROM support_tickets WHERE assignee_id IS NOT NULL") == 0
    assert _count(db, "SELECT count(*) FROM audit_logs WHERE target_id = :t", t=ticket_id) == 0


def test_an_assignee_who_is_no_longer_staff_hears_nothing_more_of_the_ticket(db: Db, auth_env: AuthEnv) -> None:
    # Given a ticket assigned to an agent, and a support inbox
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    admin = _user(db, "ADMIN")
    assert _put(admin, "support_inbox_email", "desk@example.com", "string").status == 200
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    patched = api_call(
        "PATCH", f"/admin/support/tickets/{ticket_id}", body={"assignee_id": str(agent.id)}, as_user=admin
    )
    assert patched.status == 200, patched.json
    reply_path = f"/support/tickets/{ticket_id}/messages"
    assert api_call("POST", reply_path, body={"content": "first words"}, as_user=customer).status == 201
    assert len(_mails(auth_env, agent.email)) == 1
    # When the agent is demoted to a plain user, and the customer writes again; then suspended while staff
    _set_user(db, agent.id, role="USER")
    assert api_call("POST", reply_path, body={"content": "my card number is ..."}, as_user=customer).status == 201
    _set_user(db, agent.id, role="SUPPORT", status="SUSPENDED")
    assert api_call("POST", reply_path, body={"content": "and my address is ..."}, as_user=customer).status == 201
    # Then the former agent got neither message; the support inbox did
    mails = _mails(auth_env, agent.email)
    assert len(mails) == 1 and "first words" in mails[0]
    inbox = "\n".join(_mails(auth_env, "desk@example.com"))
    assert "my card number" in inbox and "and my address" in inbox


# --- races --------------------------------------------------------------------------------------------------------
def test_racing_staff_changes_and_replies_leave_one_consistent_history(db: Db) -> None:
    # Given a ticket in progress, two agents and its customer
    customer = _user(db)
    ticket_id = _ticket(customer)
    first, second = _user(db, "SUPPORT"), _user(db, "SUPPORT")
    path = f"/admin/support/tickets/{ticket_id}"
    assert api_call("PATCH", path, body={"status": "IN_PROGRESS"}, as_user=first).status == 200
    barrier = threading.Barrier(RACERS * 3)

    def act(i: int) -> Any:
        barrier.wait()
        if i % 3 == 0:
            return api_call("PATCH", path, body={"status": "CLOSED"}, as_user=first)
        if i % 3 == 1:
            return api_call("PATCH", path, body={"status": "RESOLVED"}, as_user=second)
        return api_call("POST", f"/support/tickets/{ticket_id}/messages", body={"content": f"r{i}"}, as_user=customer)

    # When two agents close and resolve it while the customer keeps replying
    with ThreadPoolExecutor(max_workers=RACERS * 3) as pool:
        answers = list(pool.map(act, range(RACERS * 3)))
    # Then every answer is a success or a named refusal, never a server error
    assert {a.status for a in answers} <= {200, 201, 409}, [a.json for a in answers]
    # And the audited status changes form one chain ending where the ticket is, closed exactly once
    with db() as uow:
        rows = uow.session.execute(
            text(
                "SELECT old_values, new_values FROM audit_logs WHERE target_id = :t"
                " AND action = 'support.ticket_update' ORDER BY created_at, id"
            ),
            {"t": ticket_id},
        ).all()
        ticket = uow.session.execute(
            text("SELECT status, closed_at FROM support_tickets WHERE id = :t"), {"t": ticket_id}
        ).one()
        last_reply = uow.session.execute(
            select(func.max(TicketMessage.created_at)).where(TicketMessage.ticket_id == uuid.UUID(ticket_id))
        ).scalar_one()
    chain = [("OPEN", "IN_PROGRESS")] + [
        (r.old_values["status"], r.new_values["status"]) for r in rows[1:] if "status" in r.new_values
    ]
    # (a customer's reply reopening a RESOLVED ticket is the one unaudited link: it is not a staff change)
    assert all(a[1] == b[0] or (a[1], b[0]) == ("RESOLVED", "OPEN") for a, b in itertools.pairwise(chain)), chain
    assert ticket.status == "CLOSED" and chain[-1][1] == "CLOSED"
    assert [c for c in chain if c[1] == "CLOSED"] == [chain[-1]]
    # And no customer reply was taken after the close
    assert last_reply is None or last_reply <= ticket.closed_at


# --- mail headers, content ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "subject",
    ["Help\r\nBcc: victim@example.com", "Help\nX-Injected: 1", "Help\rthere", "Help\u2028there", "Help\x85there",
     "Help\x0bthere", "Help\x1cthere"],
)  # fmt: skip
def test_a_subject_that_would_break_a_mail_header_is_refused(db: Db, subject: str) -> None:
    # Given a customer, When they open a ticket whose subject holds a line break or control character
    response = _open(_user(db), subject=subject)
    # Then 422 with a code and no ticket (a stored one would fail every mail that names it)
    assert (response.status, response.error_code) == (422, "validation_error"), response.json
    assert _count(db, "SELECT count(*) FROM support_tickets") == 0


def test_content_with_line_breaks_and_html_stays_in_the_plain_text_body(db: Db, auth_env: AuthEnv) -> None:
    # Given a ticket whose customer is mailed staff replies
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    content = "Hi\r\nBcc: victim@example.com\r\n\r\n<script>alert(1)</script><a href='x'>click</a>"
    # When an agent replies with header-looking lines and HTML
    reply = api_call("POST", f"/admin/support/tickets/{ticket_id}/messages", body={"content": content}, as_user=agent)
    assert reply.status == 201, reply.json
    # Then the mail went to the customer only, as text/plain, with the HTML as text in its body
    [log] = _logs(db, customer.email)
    message = message_from_bytes((auth_env.mail_dir / f"{log}.eml").read_bytes())
    assert message["Bcc"] is None and message["To"] == customer.email
    assert message.get_content_type() == "text/plain"
    assert "<script>alert(1)</script>" in message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert _count(db, "SELECT count(*) FROM email_logs WHERE recipient = 'victim@example.com'") == 0


def _logs(db: Db, recipient: str) -> list[uuid.UUID]:
    with db() as uow:
        return list(
            uow.session.execute(
                text("SELECT id FROM email_logs WHERE recipient = :r AND status = 'sent'"), {"r": recipient}
            ).scalars()
        )


def test_oversized_content_is_refused_and_a_long_thread_answers_its_latest_messages(db: Db) -> None:
    # Given a ticket, When its customer replies with 10,001 characters, Then 422 and nothing written
    customer = _user(db)
    ticket_id = _ticket(customer)
    path = f"/support/tickets/{ticket_id}/messages"
    assert api_call("POST", path, body={"content": "x" * 10_001}, as_user=customer).status == 422
    assert api_call("POST", path, body={"content": "x" * 10_000}, as_user=customer).status == 201
    # Given 1,000 more messages on it, When the customer reads it, Then the answer carries the latest 200
    with db() as uow:
        now = utcnow()
        uow.session.add_all(
            TicketMessage(
                ticket_id=uuid.UUID(ticket_id),
                user_id=customer.id,
                content=f"m{i}",
                is_internal=False,
                from_staff=False,
                created_at=now + timedelta(microseconds=i),
            )
            for i in range(1000)
        )
        uow.commit()
    answer = api_call("GET", f"/support/tickets/{ticket_id}", as_user=customer)
    assert answer.status == 200
    contents = [m["content"] for m in answer.json["messages"]]
    assert len(contents) == 200 and "x" * 10_000 not in contents  # the older long reply is not among them


# --- goodwill -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "amount", ["NaN", "Infinity", "-Infinity", "1e30", 1e30, "0.00001", "0", "-0", -1, "", "1,5", True, None]
)
def test_goodwill_amounts_that_are_not_credits_are_refused(db: Db, amount: Any) -> None:
    # Given a customer and an agent, When the agent grants an amount that is not a positive credit amount
    customer = funded_user(db, "1")
    response = _goodwill(_user(db, "SUPPORT"), customer, amount)
    # Then 4xx with a code, and nothing moved
    assert 400 <= response.status < 500 and response.error_code, response.json
    assert balance(db, customer) == Decimal(1)
    assert _count(db, "SELECT count(*) FROM audit_logs WHERE action = 'support.goodwill'") == 0


def test_goodwill_exactly_at_the_cap_is_granted(db: Db) -> None:
    # Given the default cap (100), When an agent grants exactly 100 (as 1e2 too), Then both are granted
    customer = funded_user(db, "0")
    agent = _user(db, "SUPPORT")
    assert _goodwill(agent, customer, "100.0000").status == 201
    assert _goodwill(agent, customer, "1e2").status == 201
    assert balance(db, customer) == Decimal(200)
    assert_consistent(db, customer)


def test_a_cap_lowered_in_another_container_binds_the_next_grant(db: Db) -> None:
    # Given this container has just read the default cap (100) for a grant
    customer = funded_user(db, "0")
    agent = _user(db, "SUPPORT")
    assert _goodwill(agent, customer, "50").status == 201
    # When another container lowers the cap to 10 (its write does not reach this container's cache)
    with db() as uow:
        uow.session.execute(
            text("INSERT INTO system_config (id, key, value, type) VALUES (:i, :k, '10', 'number')"),
            {"i": uuid.uuid4(), "k": system_config.SUPPORT_GOODWILL_CAP},
        )
        uow.commit()
    # Then a grant over the new cap, made at once here, is refused: the cap gating a grant is read fresh
    over = _goodwill(agent, customer, "50")
    assert (over.status, over.error_code, over.json["error"]["details"]) == (403, "over_goodwill_cap", {"cap": "10"})
    assert balance(db, customer) == Decimal(50)


def test_goodwill_to_an_erased_person_is_not_found_and_to_a_suspended_one_is_granted(db: Db) -> None:
    # Given an erased customer (either mark) and a suspended one
    agent = _user(db, "SUPPORT")
    erased = [_user(db, deleted_at=utcnow()), _user(db, status="DELETED")]
    suspended = _user(db, status="SUSPENDED")
    # When an agent grants each, Then the erased are not found; the suspended one is granted (an apology may
    # well precede lifting a suspension)
    for person in erased:
        response = _goodwill(agent, person.id, "5")
        assert (response.status, response.error_code) == (404, "not_found"), response.json
        assert balance(db, person.id) == Decimal(0)
    assert _goodwill(agent, suspended.id, "5").status == 201
    assert balance(db, suspended.id) == Decimal(5)


def test_a_reused_idempotency_key_never_answers_for_another_request(db: Db) -> None:
    # Given a keyed grant of 7 to Alice
    alice, bob = funded_user(db, "0"), funded_user(db, "0")
    agent, colleague = _user(db, "SUPPORT"), _user(db, "SUPPORT")
    first = _goodwill(agent, alice, "7", key="gw-1")
    assert first.status == 201
    # When the key comes back with another amount or reason for Alice, Then 409 and nothing moves
    assert _goodwill(agent, alice, "8", key="gw-1").status == 409
    assert _goodwill(agent, alice, "7", key="gw-1", reason="another reason").status == 409
    # When the same request comes from a colleague (a retry through another desk), Then the same grant
    again = _goodwill(colleague, alice, "7", key="gw-1")
    assert again.status == 201 and again.json["transaction_id"] == first.json["transaction_id"]
    # When the key is used for Bob, Then that is Bob's own grant (keys are per customer, as on every credit
    # route), never Alice's answer
    for_bob = _goodwill(agent, bob, "7", key="gw-1")
    assert for_bob.status == 201 and for_bob.json["transaction_id"] != first.json["transaction_id"]
    assert (balance(db, alice), balance(db, bob)) == (Decimal(7), Decimal(7))
    assert _count(db, "SELECT count(*) FROM audit_logs WHERE action = 'support.goodwill'") == 2


def test_one_agent_grants_at_most_the_daily_bound_even_in_parallel(db: Db) -> None:
    # Given a daily bound of 100 per staff member and a cap of 30 per grant
    admin = _user(db, "ADMIN")
    assert _put(admin, "support_goodwill_cap", "30", "number").status == 200
    assert _put(admin, "support_goodwill_daily_cap", "100", "number").status == 200
    customers = [funded_user(db, "0") for _ in range(RACERS)]
    agent = _user(db, "SUPPORT")
    barrier = threading.Barrier(RACERS)

    def grant(i: int) -> Any:
        barrier.wait()
        return _goodwill(agent, customers[i], "30", key=f"gw-par-{i}")

    # When the agent posts six grants of 30 with distinct keys at once
    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        answers = list(pool.map(grant, range(RACERS)))
    # Then three are granted (90) and the rest refused with the bound, never a server error
    assert sorted(a.status for a in answers) == [201] * 3 + [403] * 3, [a.json for a in answers]
    refused = [a for a in answers if a.status == 403]
    assert {a.error_code for a in refused} == {"over_goodwill_cap"}
    assert refused[0].json["error"]["details"] == {"daily_cap": "100", "granted_in_24h": "90.0000"}
    assert sum((balance(db, c) for c in customers), Decimal(0)) == Decimal(90)
    # And another agent has their own bound
    assert _goodwill(_user(db, "SUPPORT"), customers[0], "30").status == 201


# --- system config ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "type_"),
    [
        ("allow_bonus_auto_use_toggle", "true", "boolean"),
        ("allow_bonus_auto_use_toggle", 1, "boolean"),
        ("allow_bonus_auto_use_toggle", True, "string"),
        ("support_goodwill_cap", "1e400", "number"),
        ("support_goodwill_cap", "1e3", "number"),
        ("support_goodwill_cap", True, "number"),
        ("support_goodwill_cap", "-1", "number"),
        ("support_goodwill_cap", "1000000.0001", "number"),
        ("support_goodwill_cap", 100, "json"),
        ("support_goodwill_daily_cap", "-5", "number"),
        ("support_inbox_email", "desk@example.com\n", "string"),
        ("support_inbox_email", "desk@example.com\r\nBcc: victim@example.com", "string"),
        ("support_inbox_email", "desk@example.com,victim@example.com", "string"),
        ("support_inbox_email", "Desk <desk@example.com>", "string"),
        ("custom.flag", "yes", "boolean"),
        ("custom.number", "12abc", "number"),
    ],
)
def test_a_setting_of_the_wrong_type_or_form_is_refused_and_nothing_is_written(
    db: Db, key: str, value: Any, type_: str
) -> None:
    # Given an admin, When they set a value not of its type, or outside its key's bounds or form
    admin = _user(db, "ADMIN")
    response = _put(admin, key, value, type_)
    # Then 422 with a code; nothing stored, nothing audited
    assert (response.status, response.error_code) == (422, "invalid_config_value"), response.json
    assert _count(db, "SELECT count(*) FROM system_config") == 0
    assert _count(db, "SELECT count(*) FROM audit_logs WHERE action = 'system_config.update'") == 0


@pytest.mark.parametrize(
    "raw",
    [
        b'{"value": 1e400, "type": "number"}',
        b'{"value": NaN, "type": "number"}',
        b'{"value": {"a": [1e400]}, "type": "json"}',
        b'{"value": [Infinity], "type": "json"}',
    ],
)
def test_non_finite_numbers_stop_at_the_edge(db: Db, raw: bytes) -> None:
    # Given an admin, When the body holds a number JSON cannot carry (as a number or inside a JSON value)
    response = api_call("PUT", "/admin/system-config/custom.n", raw_body=raw, as_user=_user(db, "ADMIN"))
    # Then 4xx with a code before any handler sees it, and nothing is written
    assert response.status in (400, 422) and response.error_code, response.json
    assert _count(db, "SELECT count(*) FROM system_config") == 0


def test_deep_json_settings_are_refused_at_the_edge_and_the_deepest_allowed_one_lists(db: Db) -> None:
    # Given an admin
    admin = _user(db, "ADMIN")
    # When they store JSON 1,000 deep, Then 400 (the edge's depth bound), nothing written
    raw = b'{"type": "json", "value": ' + b"[" * 1000 + b"1" + b"]" * 1000 + b"}"
    deep = api_call("PUT", "/admin/system-config/custom.deep", raw_body=raw, as_user=admin)
    assert deep.status == 400 and deep.error_code, deep.json
    assert _count(db, "SELECT count(*) FROM system_config") == 0
    # When they store JSON as deep as the edge allows, Then it is kept and the list still answers with it
    nested: Any = {"n": "1.5"}
    for _ in range(60):
        nested = {"a": nested}
    assert _put(admin, "custom.nested", nested, "json").status == 200
    listed = api_call("GET", "/admin/system-config", query="limit=100", as_user=admin)
    assert listed.status == 200 and "custom.nested" in {e["key"] for e in listed.json["items"]}


@pytest.mark.parametrize("key", ["custom%0A", "custom%0D%0Ax", "Custom", "1custom", "a" * 65, "custom%20x"])
def test_a_key_outside_its_form_is_refused(db: Db, key: str) -> None:
    # Given an admin, When they set a key with a line break, a capital, a leading digit or too long
    response = _put(_user(db, "ADMIN"), key, "x", "string")
    # Then 4xx and nothing is stored
    assert 400 <= response.status < 500, response.json
    assert _count(db, "SELECT count(*) FROM system_config") == 0


def test_unknown_keys_are_bounded_in_number(db: Db) -> None:
    # Given an admin and the store filled up to its bound of unknown keys
    admin = _user(db, "ADMIN")
    with db() as uow:
        uow.session.execute(
            text("INSERT INTO system_config (id, key, value, type) SELECT gen_random_uuid(), 'k' || g, 'x', 'string'"
                 " FROM generate_series(1, :n) g"),
            {"n": system_config.MAX_STORED_KEYS},
        )  # fmt: skip
        uow.commit()
    # When they create one more, Then 422 and nothing is written; changing one that exists, or a known key, works
    refused = _put(admin, "one.more", "x", "string")
    assert (refused.status, refused.error_code) == (422, "invalid_config_value")
    assert _put(admin, "k1", "y", "string").status == 200
    assert _put(admin, "support_goodwill_cap", "50", "number").status == 200
    assert _count(db, "SELECT count(*) FROM system_config WHERE key = 'one.more'") == 0


def test_a_cached_json_value_cannot_be_changed_by_a_reader(db: Db) -> None:
    # Given a JSON setting read once through the accessor
    admin = _user(db, "ADMIN")
    assert _put(admin, "custom.list", {"a": [1, 2]}, "json").status == 200
    with db() as uow:
        first = system_config.get(uow.session, "custom.list")
        first["a"].append(3)
        first["b"] = "poisoned"
        # When another reader in this container reads it from the cache, Then it is what was stored
        assert system_config.get(uow.session, "custom.list") == {"a": [1, 2]}


def test_a_replayed_grant_still_answers_after_the_cap_is_lowered(db: Db) -> None:
    # Given a keyed grant of 50, and the cap lowered to 10 afterwards
    customer = funded_user(db, "0")
    agent, admin = _user(db, "SUPPORT"), _user(db, "ADMIN")
    first = _goodwill(agent, customer, "50", key="gw-replay")
    assert first.status == 201
    assert _put(admin, "support_goodwill_cap", "10", "number").status == 200
    # When the same request is retried, Then it answers the grant already made (no second grant, no refusal)
    again = _goodwill(agent, customer, "50", key="gw-replay")
    assert again.status == 201 and again.json["transaction_id"] == first.json["transaction_id"]
    # And a new grant of 50 is refused by the new cap
    assert _goodwill(agent, customer, "50", key="gw-new").status == 403
    assert balance(db, customer) == Decimal(50)
    assert_consistent(db, customer)


def test_a_staff_cursor_shows_a_customer_nothing_of_others(db: Db) -> None:
    # Given three customers' tickets, and a cursor from the staff desk's first page
    owners = [_user(db) for _ in range(3)]
    for owner in owners:
        _ticket(owner)
    agent = _user(db, "SUPPORT")
    cursor = api_call("GET", "/admin/support/tickets", query="limit=1", as_user=agent).json["next_cursor"]
    assert cursor
    # When the first customer pages their own list with it, Then they see only their own ticket (or none)
    page = api_call("GET", "/support/tickets", query=f"cursor={cursor}", as_user=owners[0])
    assert page.status in (200, 400), page.json
    if page.status == 200:
        assert {t["customer_id"] for t in page.json["items"]} <= {str(owners[0].id)}


def test_an_agent_who_is_the_customer_reads_no_note_through_the_customer_routes(db: Db, auth_env: AuthEnv) -> None:
    # Given an agent who opened a ticket of their own, is assigned to it, and a colleague's note on it
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    agent, colleague = _user(db, "SUPPORT"), _user(db, "SUPPORT")
    ticket_id = _ticket(agent)
    path = f"/admin/support/tickets/{ticket_id}"
    assert api_call("PATCH", path, body={"assignee_id": str(agent.id)}, as_user=colleague).status == 200
    note = api_call("POST", path + "/messages", body={"content": SECRET_NOTE, "internal": True}, as_user=colleague)
    assert note.status == 201
    # When they read it and reply as its customer (the reply mails the assignee: themselves)
    read = api_call("GET", f"/support/tickets/{ticket_id}", as_user=agent)
    reply = api_call("POST", f"/support/tickets/{ticket_id}/messages", body={"content": "any news?"}, as_user=agent)
    # Then the customer side shows no note, and the mail to them carries only their own words
    assert read.status == 200 and read.json["messages"] == [] and reply.status == 201
    assert SECRET_NOTE not in read.body.decode() + reply.body.decode()
    mails = _mails(auth_env, agent.email)
    assert mails and all(SECRET_NOTE not in m for m in mails)


@pytest.mark.parametrize(
    "body", [{"is_internal": False}, {"internal": False}, {"messages": []}, {"customer_id": str(uuid.uuid4())}]
)
def test_nothing_but_status_priority_and_assignee_can_be_patched(db: Db, body: dict[str, Any]) -> None:
    # Given a ticket with a note, When staff PATCH any other field (a note's flag, the owner), Then 422, unchanged
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    path = f"/admin/support/tickets/{ticket_id}"
    assert (
        api_call("POST", path + "/messages", body={"content": SECRET_NOTE, "internal": True}, as_user=agent).status
        == 201
    )
    response = api_call("PATCH", path, body=body, as_user=agent)
    assert (response.status, response.error_code) == (422, "validation_error"), response.json
    assert _count(db, "SELECT count(*) FROM ticket_messages WHERE is_internal") == 1
    assert _count(db, "SELECT count(*) FROM support_tickets WHERE customer_id = :c", c=customer.id) == 1
    assert api_call("GET", f"/support/tickets/{ticket_id}", as_user=customer).json["messages"] == []
