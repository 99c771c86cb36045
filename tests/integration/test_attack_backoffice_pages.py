# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""The back office's message pages, suppression keys, registration spellings and staff verdicts as an attacker
tries them, through the real gateway (and authorizer where a credential matters): a customer's cursor never
lands on an internal note nor pages another list; replies written while paging neither repeat nor hide an older
message; a demoted agent's key, a suspended customer's session and an erased customer lose the pages; a
look-alike letter (the Kelvin sign lowers to `k`) neither suppresses nor claims the plain address's mailbox."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import func, select, update

from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.integration.test_mail_events_sns import invoke, sent_mail, signed, signer, sns  # noqa: F401
from tests.support import api_call, make_user, project_gateway
from tollgate.auth import passwords
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.mail.service import suppression_key
from tollgate.models import User
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import EmailSuppression
from tollgate.pagination import decode_cursor
from tollgate.services import mail_events

Db = Callable[[], UnitOfWork]
KELVIN = "\u212a"  # KELVIN SIGN: lower() makes it the ASCII "k"
SUPPRESSIONS = "/admin/email-suppressions"


def _user(db: Db, role: str = "USER", **fields: Any) -> User:
    with db() as uow:
        user = make_user(uow.session, role=role, **fields)
        uow.commit()
        uow.session.expunge(user)
        return user


def _ticket(customer: User) -> str:
    body = {"subject": "Charged twice", "description": "I was charged twice for one pack."}
    opened = api_call("POST", "/support/tickets", body=body, as_user=customer)
    assert opened.status == 201, opened.json
    return str(opened.json["id"])


def _customer_path(ticket_id: str) -> str:
    return f"/support/tickets/{ticket_id}/messages"


def _staff_path(ticket_id: str) -> str:
    return f"/admin/support/tickets/{ticket_id}/messages"


def _reply(ticket_id: str, writer: User, content: str, *, staff: bool = False, internal: bool = False) -> str:
    path = _staff_path(ticket_id) if staff else _customer_path(ticket_id)
    body: dict[str, Any] = {"content": content} | ({"internal": internal} if staff else {})
    written = api_call("POST", path, body=body, as_user=writer)
    assert written.status == 201, written.json
    return str(written.json["id"])


def _page(path: str, reader: User, *, limit: int, cursor: str | None = None) -> dict[str, Any]:
    query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
    page = api_call("GET", path, query=query, as_user=reader)
    assert page.status == 200, page.json
    data: dict[str, Any] = page.json
    return data


def _cold_authorizer() -> None:
    # The gateway's own authorizer container: as another container would, or this one past its cache window.
    project_gateway().runner.module("AuthorizerFunction").cache.clear()


def _cursor_id(cursor: str, ticket_id: str, side: str) -> str:
    return str(decode_cursor(cursor, f"ticket_messages.id:desc:ticket={ticket_id}:{side}", "u")[0])


# --- ticket message pages -------------------------------------------------------------------------------------
def test_a_customers_cursors_only_ever_name_public_messages_and_a_staff_cursor_on_a_note_is_refused(db: Db) -> None:
    # Given a ticket whose public messages alternate with internal notes
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    public, notes = [], []
    for i in range(6):
        public.append(_reply(ticket_id, customer, f"public {i}"))
        notes.append(_reply(ticket_id, agent, f"note {i}", staff=True, internal=True))
    # When the customer pages one message at a time
    seen, cursors, cursor = [], [], None
    while True:
        page = _page(_customer_path(ticket_id), customer, limit=1, cursor=cursor)
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        cursors.append(cursor)
    # Then they see every public message once, newest first, and each cursor names a public message
    assert seen == public[::-1]
    assert {_cursor_id(c, ticket_id, "customer") for c in cursors} <= set(public)
    # When the agent's one-message page ends on a note, Then its cursor names that note
    desk = _page(_staff_path(ticket_id), agent, limit=1)
    assert desk["items"][0]["id"] == notes[-1] and _cursor_id(desk["next_cursor"], ticket_id, "staff") == notes[-1]
    # And the customer replaying it on their own ticket is refused before anything is read, as a forged one is
    refused = api_call("GET", _customer_path(ticket_id), query=f"cursor={desk['next_cursor']}", as_user=customer)
    assert (refused.status, refused.error_code) == (400, "invalid_cursor")


def test_replies_written_while_a_customer_pages_neither_repeat_nor_hide_an_older_message(db: Db) -> None:
    # Given a ticket with 24 public messages and notes among them
    customer, agent = _user(db), _user(db, "ADMIN")
    ticket_id = _ticket(customer)
    older = []
    for i in range(24):
        older.append(_reply(ticket_id, agent if i % 3 else customer, f"m{i}", staff=bool(i % 3)))
        if i % 5 == 0:
            _reply(ticket_id, agent, f"note {i}", staff=True, internal=True)
    # When the customer pages 5 at a time while, before each next page, both sides reply and staff add a note
    seen, cursor, newer = [], None, []
    while True:
        page = _page(_customer_path(ticket_id), customer, limit=5, cursor=cursor)
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        newer.append(_reply(ticket_id, customer, "still waiting"))
        newer.append(_reply(ticket_id, agent, "on it", staff=True))
        _reply(ticket_id, agent, "refund pending", staff=True, internal=True)
    # Then every message older than the first page came once, in order, and nothing written later slipped in
    assert seen == older[::-1]
    # And a fresh read pages everything public once, the replies written meanwhile first
    fresh, cursor = [], None
    while True:
        page = _page(_customer_path(ticket_id), customer, limit=100, cursor=cursor)
        fresh += [m["id"] for m in page["items"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert fresh == (older + newer)[::-1]


def test_another_customers_cursor_does_not_open_their_ticket(db: Db) -> None:
    # Given Alice's ticket with a page cursor she was issued, and Bob
    alice, bob, agent = _user(db), _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(alice)
    for i in range(4):
        _reply(ticket_id, alice, f"card ending {i}")
    cursor = _page(_customer_path(ticket_id), alice, limit=1)["next_cursor"]
    assert cursor
    # When Bob replays her cursor on her ticket
    replayed = api_call("GET", _customer_path(ticket_id), query=f"cursor={cursor}", as_user=bob)
    # Then it is not found, as without the cursor, and nothing of hers is in the answer
    assert (replayed.status, replayed.error_code) == (404, "ticket_not_found")
    assert "card ending" not in replayed.body.decode()
    # And an agent cannot page the staff list with the customer's cursor either
    desk = api_call("GET", _staff_path(ticket_id), query=f"cursor={cursor}", as_user=agent)
    assert (desk.status, desk.error_code) == (400, "invalid_cursor")


def test_a_demoted_agents_admin_key_and_a_customer_key_lose_or_never_have_the_message_pages(db: Db) -> None:
    # Given a customer's ticket with a note, an agent's admin-scoped key and one without the admin scope
    customer, agent = _user(db), _user(db, "SUPPORT")
    ticket_id = _ticket(customer)
    _reply(ticket_id, agent, "customer is a chargeback risk", staff=True, internal=True)
    admin_key = {"x-api-key": api_key_for(agent.id, scopes=("admin",))}
    plain_key = {"x-api-key": api_key_for(agent.id, scopes=("profile:read",))}
    _cold_authorizer()
    ok = api_call("GET", _staff_path(ticket_id), headers=admin_key, through_authorizer=True)
    assert ok.status == 200 and ok.json["items"][0]["is_internal"] is True
    # When the agent's key lacks the admin scope, Then the staff pages refuse it
    assert api_call("GET", _staff_path(ticket_id), headers=plain_key, through_authorizer=True).status == 403
    # When the agent is demoted to USER, Then the very next call with the admin key is refused, the note unread
    with db() as uow:
        uow.session.execute(update(User).where(User.id == agent.id).values(role="USER"))
        uow.commit()
    demoted = api_call("GET", _staff_path(ticket_id), headers=admin_key, through_authorizer=True)
    assert demoted.status == 403 and "chargeback" not in demoted.body.decode()
    # And the customer's own key, whatever its scopes, never reads the session-only customer pages
    customer_key = {"x-api-key": api_key_for(customer.id, scopes=("profile:read", "orders:read"))}
    assert api_call("GET", _customer_path(ticket_id), headers=customer_key, through_authorizer=True).status == 403


def test_a_suspended_customer_is_refused_the_pages_and_an_erased_ones_ticket_stays_on_the_desk(
    db: Db, auth_env: AuthEnv
) -> None:
    # Given a signed-in customer with a ticket of 5 messages, and an admin
    email = auth_env.register_verified()
    session = bearer(auth_env.login(email)["access_token"])
    with db() as uow:
        customer = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        uow.session.expunge(customer)
    admin = _user(db, "ADMIN")
    ticket_id = _ticket(customer)
    written = [_reply(ticket_id, customer, f"m{i}") for i in range(5)]
    _cold_authorizer()
    first = api_call("GET", _customer_path(ticket_id), query="limit=2", headers=session, through_authorizer=True)
    assert first.status == 200 and first.json["next_cursor"]
    # When the customer is suspended and their cached verdict has run out
    with db() as uow:
        uow.session.execute(update(User).where(User.id == customer.id).values(status="SUSPENDED"))
        uow.commit()
    _cold_authorizer()
    query = f"limit=2&cursor={first.json['next_cursor']}"
    # Then the next page is refused
    assert api_call("GET", _customer_path(ticket_id), query=query, headers=session, through_authorizer=True).status in (
        401,
        403,
    )
    # When an admin erases the (reactivated) customer
    with db() as uow:
        uow.session.execute(update(User).where(User.id == customer.id).values(status="ACTIVE"))
        uow.commit()
    assert api_call("POST", f"/admin/users/{customer.id}/erase", as_user=admin).status == 200
    _cold_authorizer()
    # Then their session pages nothing more
    gone = api_call("GET", _customer_path(ticket_id), query=query, headers=session, through_authorizer=True)
    assert gone.status in (401, 403)
    # While the desk keeps the ticket's history and pages it to the end
    desk = _page(_staff_path(ticket_id), admin, limit=100)
    assert [m["id"] for m in desk["items"]] == written[::-1] and desk["next_cursor"] is None


# --- suppression keys -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("written", "key"),
    [
        (f"{KELVIN}ate@example.com", f"{KELVIN}ate@example.com"),  # not the ASCII kate@example.com
        ("\u0130da@example.com", "\u0130da@example.com"),  # U+0130 lowers to "i" and a combining dot
        ("\u212bsa@example.se", "\u212bsa@example.se"),  # ANGSTROM SIGN lowers to the letter å
        ("\u00c5SA@Example.SE.", "\u00e5sa@example.se"),  # the letter Å is case-folded as any letter
        ('"kate@example.com"@Evil.example.', '"kate@example.com"@evil.example'),  # the last @ starts the domain
    ],
)
def test_the_key_folds_a_letter_only_into_its_own_lower_case(written: str, key: str) -> None:
    assert suppression_key(written) == key


def test_a_bounce_of_a_look_alike_address_does_not_suppress_the_plain_one(db: Db, sns, signer, tmp_path: Path) -> None:
    # Given Kate's address, and an attacker's account whose address is hers with the Kelvin sign for its "k"
    kate = f"kate{uuid.uuid4().hex[:8]}@example.com"
    look_alike = KELVIN + kate[1:]
    log = sent_mail(db, tmp_path, look_alike)
    assert log.status == "sent" and log.message_id
    # When SES reports a permanent bounce of that mail, naming the look-alike recipient
    bounce = mail_events.ses_event("bounce", log.message_id, look_alike, now=datetime.now(UTC))
    [result] = invoke(signed(signer, bounce))
    # Then the look-alike address is suppressed, not Kate's
    assert result["outcome"] == "applied"
    with db() as uow:
        rows = set(uow.session.execute(select(EmailSuppression.email)).scalars())
    assert rows == {look_alike}
    # And Kate still gets her mail
    assert sent_mail(db, tmp_path, kate, kind="credits_expiring").status == "sent"


def test_a_look_alike_spelling_neither_finds_nor_lifts_the_plain_suppression(db: Db) -> None:
    # Given Kate's address on the list, and an admin
    kate = f"kate{uuid.uuid4().hex[:8]}@example.com"
    with db() as uow:
        uow.session.add(EmailSuppression(email=kate, reason="complaint", created_at=utcnow()))
        uow.commit()
    admin = _user(db, "ADMIN")
    look_alike = KELVIN + kate[1:]
    # When the admin looks up and lifts the Kelvin-sign spelling
    found = api_call("GET", SUPPRESSIONS, query=f"email={quote(look_alike, safe='')}", as_user=admin)
    lifted = api_call("DELETE", f"{SUPPRESSIONS}/{quote(look_alike, safe='@')}", as_user=admin)
    # Then nothing is found or lifted: Kate's complaint still holds
    assert found.status == 200 and found.json["items"] == []
    assert (lifted.status, lifted.error_code) == (404, "email_suppression_not_found")
    with db() as uow:
        assert uow.session.get(EmailSuppression, kate) is not None


# --- registration spellings -----------------------------------------------------------------------------------
def _register(email: str, password: str = PASSWORD) -> Any:
    return api_call("POST", "/auth/register", body={"email": email, "password": password})


def _accounts(local: str) -> list[str]:
    with UnitOfWork() as uow:
        return list(uow.session.execute(select(User.email).where(User.email.ilike(f"%{local[1:]}@%"))).scalars())


@pytest.mark.parametrize(
    "spelling",
    [
        KELVIN + "{local}@example.com",  # lower(): the ASCII address
        "{local}@example.\u212aom",  # a Kelvin sign in the domain
        "\u0130{local}@example.com",  # U+0130: Python's lower() and PostgreSQL's differ
        "a\u0308{local}@example.com",  # ä decomposed
    ],
)
def test_a_look_alike_spelling_cannot_claim_a_mailbox_before_its_owner(auth_env: AuthEnv, spelling: str) -> None:
    # Given Kate, not yet registered, and an attacker registering her address with a look-alike letter
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    local = f"k{uuid.uuid4().hex[:8]}"
    attack = spelling.format(local=local)
    # When the attacker registers, Then it is refused as an invalid address and no account exists
    refused = _register(attack)
    assert (refused.status, refused.error_code) == (422, "validation_error")
    assert _accounts(local) == []
    # And Kate registering later gets her link in her own mailbox
    kate = f"{local}@example.com"
    assert _register(kate).status == 202
    with UnitOfWork() as uow:
        recipients = set(uow.session.execute(select(EmailLog.recipient).where(EmailLog.type == "verify_email")))
    assert recipients == {(kate,)}


def test_case_and_whitespace_spellings_give_one_account_and_sign_in_to_it(auth_env: AuthEnv) -> None:
    # Given Kate's verified account
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    local = f"kate{uuid.uuid4().hex[:8]}"
    email = auth_env.register_verified(f"{local}@example.com")
    # When her mailbox is registered again in capitals and with surrounding spaces
    for spelling in (f"{local.upper()}@EXAMPLE.COM", f"  {local}@Example.com\t"):
        assert _register(spelling, "attacker chose this one").status == 202
    # Then one account exists, the notices went to her stored address, and she signs in with any case
    assert _accounts(local) == [email]
    assert auth_env.mail_count(email, "account_exists") == 2
    for spelling in (email, email.upper(), f" {local.capitalize()}@Example.Com "):
        assert api_call("POST", "/auth/login", body={"email": spelling, "password": PASSWORD}).status == 200
    assert api_call("POST", "/auth/login", body={"email": email, "password": "attacker chose this one"}).status == 401


def test_unicode_letters_of_their_one_spelling_still_register_once(auth_env: AuthEnv) -> None:
    # Given Åsa's account with a composed capital Å
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    tag = uuid.uuid4().hex[:8]
    email = auth_env.register_verified(f"\u00c5sa{tag}@example.se")
    # When her address is registered again in lower case, Then it is her one account (a notice, no new row)
    assert _register(f"\u00e5sa{tag}@example.se", "attacker chose this one").status == 202
    with UnitOfWork() as uow:
        rows = uow.session.execute(select(User.email).where(User.email.ilike(f"%sa{tag}@example.se"))).scalars()
        assert list(rows) == [email]
    assert api_call("POST", "/auth/login", body={"email": email.lower(), "password": PASSWORD}).status == 200


def test_an_old_account_with_a_trailing_dot_still_signs_in(auth_env: AuthEnv) -> None:
    # Given an account made before registration refused a final dot
    email = f"old{uuid.uuid4().hex[:8]}@example.com."
    with UnitOfWork() as uow:
        make_user(uow.session, email=email, password_hash=passwords.hash_password(PASSWORD), email_verified_at=utcnow())
        uow.commit()
    # When its owner signs in with that address, Then it works
    assert api_call("POST", "/auth/login", body={"email": email, "password": PASSWORD}).status == 200


@pytest.mark.xfail(
    strict=True,
    reason="accounts are found by lower(email) only: an IDN domain in U-label and A-label (punycode) form are "
    "two accounts on one mailbox; the fix is one canonical domain form in identity's email look-up",
)
def test_an_idn_domain_in_punycode_is_the_same_mailbox_as_in_unicode(auth_env: AuthEnv) -> None:
    # Given Kate's verified account at an internationalised domain, written in Unicode
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS="0")
    local = f"kate{uuid.uuid4().hex[:8]}"
    unicode_domain = "b\u00fccher.example"
    email = auth_env.register_verified(f"{local}@{unicode_domain}")
    # When the same mailbox is registered with the domain's ASCII (punycode) form
    ascii_domain = unicode_domain.encode("idna").decode()
    assert _register(f"{local}@{ascii_domain}", "attacker pw 12345").status == 202
    # Then no second account exists
    assert _accounts(local) == [email]


# --- staff verdicts -------------------------------------------------------------------------------------------
def test_a_cached_user_verdict_grants_no_more_after_a_promotion(auth_env: AuthEnv) -> None:
    # Given a signed-in USER whose verdict the warm authorizer has cached
    email = auth_env.register_verified()
    session = bearer(auth_env.login(email)["access_token"])
    _cold_authorizer()
    assert api_call("GET", "/auth/me", headers=session, through_authorizer=True).status == 200
    assert api_call("GET", "/admin/users", headers=session, through_authorizer=True).status == 403
    # When they are promoted to ADMIN in the database
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(role="ADMIN"))
        uow.commit()
    # Then the cached verdict still says USER: nothing more than before until it is read again
    assert api_call("GET", "/admin/users", headers=session, through_authorizer=True).status == 403
    # And once read again the staff verdict is used, and never cached: the demotion bites on the next request
    _cold_authorizer()
    assert api_call("GET", "/admin/users", headers=session, through_authorizer=True).status == 200
    with UnitOfWork() as uow:
        uow.session.execute(update(User).where(func.lower(User.email) == email).values(role="USER"))
        uow.commit()
    assert api_call("GET", "/admin/users", headers=session, through_authorizer=True).status == 403
