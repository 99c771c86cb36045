# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""The email suppression list through the gateway: admins list it (cursor, whole-address and reason filters) and
take an address off it (a session only, an active admin in the database, audited with the removed row, 404 when
absent); the address is normalised as the mail events write it, and the mail service then sends to it again."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from tests.gateway_support import api_key_for
from tests.integration.auth_helpers import AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import EmailSuppressionNotFound
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail.backends import LocalMailBackend
from tollgate.models import User
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import EmailSuppression
from tollgate.services import email_suppressions, mail_events
from tollgate.services.authz import Actor

Db = Callable[[], UnitOfWork]
PATH = "/admin/email-suppressions"


def _user(db: Db, role: str = "USER") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
        return user


def _suppress(db: Db, *rows: tuple[str, str]) -> None:
    now = utcnow()
    with db() as uow:
        for i, (email, reason) in enumerate(rows):
            uow.session.add(EmailSuppression(email=email, reason=reason, created_at=now - timedelta(minutes=i)))
        uow.commit()


def _suppressed(db: Db, email: str) -> bool:
    with db() as uow:
        return uow.session.get(EmailSuppression, email) is not None


def _removal_audits(db: Db) -> list[Any]:
    with db() as uow:
        return list(
            uow.session.execute(
                text(
                    "SELECT actor_id, target_type, target_id, old_values, new_values FROM audit_logs "
                    "WHERE action = 'email_suppression.remove' ORDER BY created_at, id"
                )
            )
        )


def _send(db: Db, tmp_path: Path, to: str, kind: str) -> EmailLog:
    """A non-essential message of type `kind` (each its own type: the anti-spam window is per type)."""
    send_mail(db(), OutgoingMail(to=to, type=kind, subject="s", text="t"), LocalMailBackend(tmp_path, echo=False))
    with db() as uow:
        log = uow.session.execute(select(EmailLog).where(EmailLog.type == kind)).scalars().one()
        uow.session.expunge(log)
        return log


def test_admins_list_the_suppressions_by_address_with_cursors_and_filters(db: Db) -> None:
    # Given suppressed addresses of both reasons, and an admin
    tag = uuid.uuid4().hex[:8]
    addresses = [f"{c}-{tag}@example.com" for c in "abcde"]
    _suppress(db, *[(a, "bounce" if i % 2 == 0 else "complaint") for i, a in enumerate(addresses)])
    admin = _user(db, "ADMIN")

    def page(query: str) -> Any:
        response = api_call("GET", PATH, query=query, as_user=admin)
        assert response.status == 200, response.json
        return response.json

    # When the admin pages through two at a time
    seen, cursor, pages = [], "", 0
    while True:
        found = page(f"limit=2{cursor}")
        seen += [item["email"] for item in found["items"]]
        pages += 1
        if found["next_cursor"] is None:
            break
        cursor = f"&cursor={found['next_cursor']}"
    # Then every address comes once, in address order, with its reason and time
    assert [e for e in seen if e.endswith(f"{tag}@example.com")] == addresses and pages == 3
    first = page(f"email={addresses[0]}")["items"]
    assert first == [
        {"email": addresses[0], "reason": "bounce", "mail_event_id": None, "created_at": first[0]["created_at"]}
    ]
    # And `email` is one whole address in any case, with spaces trimmed (never a prefix or a pattern)
    assert [i["email"] for i in page(f"email=%20{addresses[1].upper()}%20")["items"]] == [addresses[1]]
    assert page(f"email=a-{tag}")["items"] == [] and page("email=%25")["items"] == []
    # And `reason` filters by why the address was suppressed
    complaints = {i["email"] for i in page("reason=complaint&limit=100")["items"]}
    assert {a for a in addresses if a in complaints} == {addresses[1], addresses[3]}
    # And a wrong reason, an empty address or a forged cursor is refused
    assert api_call("GET", PATH, query="reason=spam", as_user=admin).status == 422
    assert api_call("GET", PATH, query="email=", as_user=admin).status == 422
    assert api_call("GET", PATH, query="cursor=abc.def", as_user=admin).error_code == "invalid_cursor"


def test_removing_an_address_bounced_through_mail_events_lets_mail_go_to_it_again(db: Db, tmp_path: Path) -> None:
    # Given mail to an address in mixed case that bounced for good (through the mail events, as SES reports it)
    address = f"Ada.{uuid.uuid4().hex[:8]}@Example.COM"
    first = _send(db, tmp_path, address, f"t1-{uuid.uuid4().hex[:6]}")
    assert first.status == "sent" and first.message_id
    mail_events.simulate(UnitOfWork(), first.message_id, "bounce")
    assert _suppressed(db, address.lower())
    assert _send(db, tmp_path, address, f"t2-{uuid.uuid4().hex[:6]}").status == "suppressed"
    admin = _user(db, "ADMIN")
    # When an admin removes it, naming it in another case
    response = api_call("DELETE", f"{PATH}/{address.upper()}", as_user=admin)
    # Then it is gone, and the next non-essential message is sent
    assert response.status == 204 and response.body == b""
    assert not _suppressed(db, address.lower())
    assert _send(db, tmp_path, address, f"t3-{uuid.uuid4().hex[:6]}").status == "sent"
    # And the removal is audited by the admin, with the removed row as its old values
    [audit] = _removal_audits(db)
    with db() as uow:
        event_id = uow.session.execute(
            text("SELECT id FROM mail_events WHERE message_id = :m"), {"m": first.message_id}
        ).scalar_one()
    assert (audit.actor_id, audit.target_type, audit.target_id) == (admin.id, "email_suppression", address.lower())
    assert audit.old_values["email"] == address.lower() and audit.old_values["reason"] == "bounce"
    assert audit.old_values["mail_event_id"] == str(event_id) and audit.old_values["created_at"]
    # And removing it again is 404, and writes nothing more
    again = api_call("DELETE", f"{PATH}/{address}", as_user=admin)
    assert again.status == 404 and again.error_code == "email_suppression_not_found"
    assert len(_removal_audits(db)) == 1


def test_an_address_never_suppressed_is_404_and_nothing_is_audited(db: Db) -> None:
    # Given an address with mail logs but no suppression, and a suppressed neighbour
    _suppress(db, ("neighbour@example.com", "complaint"))
    admin = _user(db, "ADMIN")
    # When an admin removes the unsuppressed one, or a pattern that would match the neighbour
    answers = [
        api_call("DELETE", f"{PATH}/nobody@example.com", as_user=admin),
        api_call("DELETE", f"{PATH}/%25@example.com", as_user=admin),
        api_call("DELETE", f"{PATH}/neighbour@example.co", as_user=admin),
    ]
    # Then each is 404, the neighbour stays and nothing is audited
    assert [a.status for a in answers] == [404, 404, 404]
    assert _suppressed(db, "neighbour@example.com") and _removal_audits(db) == []


def test_only_admins_in_person_list_or_remove(db: Db, auth_env: AuthEnv) -> None:
    # Given a suppressed address, staff of each role, and an admin's key with the `admin` scope
    _suppress(db, ("kept@example.com", "complaint"))
    callers = {role: _user(db, role) for role in ("USER", "SUPPORT")}
    email = auth_env.register_verified()
    with db() as uow:
        admin = uow.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one()
        admin.role = "ADMIN"
        uow.commit()
        admin_id = admin.id
    session = bearer(auth_env.login(email)["access_token"])
    key = {"x-api-key": api_key_for(admin_id, scopes=("admin",))}
    # When USER and SUPPORT list or remove, Then both are refused
    for role, caller in callers.items():
        assert api_call("GET", PATH, as_user=caller, role=role).status == 403, role
        assert api_call("DELETE", f"{PATH}/kept@example.com", as_user=caller, role=role).status == 403, role
    # When the admin's key lists, Then it reads; When it removes, Then it is refused (a leaked key must not
    # unblock mail to someone who complained)
    assert api_call("GET", PATH, headers=key, through_authorizer=True).status == 200
    assert api_call("DELETE", f"{PATH}/kept@example.com", headers=key, through_authorizer=True).status == 403
    assert _suppressed(db, "kept@example.com") and _removal_audits(db) == []
    # And the admin's session removes it
    assert api_call("DELETE", f"{PATH}/kept@example.com", headers=session, through_authorizer=True).status == 204
    assert not _suppressed(db, "kept@example.com")


def test_an_admin_demoted_meanwhile_cannot_remove_on_a_stale_verdict(db: Db) -> None:
    # Given two admins, a suppressed address, and the first admin demoted by the second
    stale, other = _user(db, "ADMIN"), _user(db, "ADMIN")
    _suppress(db, ("stale@example.com", "bounce"))
    assert api_call("PATCH", f"/admin/users/{stale.id}", body={"role": "USER"}, as_user=other).status == 200
    # When the first still calls as ADMIN (a warm authorizer cache)
    response = api_call("DELETE", f"{PATH}/stale@example.com", as_user=stale, role="ADMIN")
    # Then the database's role decides: refused, the address stays suppressed
    assert response.status == 403
    assert _suppressed(db, "stale@example.com") and _removal_audits(db) == []


def test_two_admins_removing_the_same_address_at_once_remove_it_once(db: Db) -> None:
    # Given a suppressed address and two admins
    _suppress(db, ("race@example.com", "complaint"))
    admins = [_user(db, "ADMIN"), _user(db, "ADMIN")]
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def remove(admin: User) -> None:
        barrier.wait()
        try:
            email_suppressions.remove_suppression(UnitOfWork(), Actor.user(admin.id, "ADMIN"), "race@example.com")
            outcomes.append("removed")
        except EmailSuppressionNotFound:
            outcomes.append("not_found")

    # When both remove it at the same moment
    threads = [threading.Thread(target=remove, args=(a,)) for a in admins]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    # Then one removes it and the other is told it is not there; one audit row
    assert sorted(outcomes) == ["not_found", "removed"]
    assert not _suppressed(db, "race@example.com") and len(_removal_audits(db)) == 1
