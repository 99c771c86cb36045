# ruff: noqa: F811  (pytest fixtures imported from helper modules are redefined as parameters)
"""One address, spelled differently, is one entry of the suppression list: trimmed, lower case, the domain without
trailing dots (DNS reads `example.com.` as `example.com`). The mail service blocks every spelling of a suppressed
address, the mail events (SES through signed SNS) write that one key whatever spelling the mail went to or the
event names, and the admin routes find and lift it by any spelling; plus tags and look-alike letters stay other
addresses."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select, text

from tests.integration.test_mail_events_sns import invoke, sent_mail, signed, signer, sns  # noqa: F401
from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.mail.service import suppression_key
from tollgate.models import User
from tollgate.models.mail_events import EmailSuppression
from tollgate.services import mail_events

Db = Callable[[], UnitOfWork]
PATH = "/admin/email-suppressions"


def _admin(db: Db) -> User:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        uow.session.expunge(user)
        return user


def _suppress(db: Db, *addresses: str) -> None:
    with db() as uow:
        for address in addresses:
            uow.session.add(EmailSuppression(email=address, reason="complaint", created_at=utcnow()))
        uow.commit()


def _suppressed(db: Db) -> dict[str, str]:
    with db() as uow:
        return {s.email: s.reason for s in uow.session.execute(select(EmailSuppression)).scalars()}


def _kate() -> str:
    return f"kate{uuid.uuid4().hex[:8]}@example.com"


@pytest.mark.parametrize(
    ("written", "key"),
    [
        ("Kate@Example.COM.", "kate@example.com"),
        ("kate@example.com..", "kate@example.com"),
        ("  kate@EXAMPLE.com. ", "kate@example.com"),
        ("kate.@example.com", "kate.@example.com"),  # a dot of the local part is the mailbox's own
        ("kate+news@example.com.", "kate+news@example.com"),
        ("k\u0430te@example.com.", "k\u0430te@example.com"),
    ],
)
def test_the_key_trims_lower_cases_and_drops_the_domains_trailing_dots_only(written: str, key: str) -> None:
    assert suppression_key(written) == key


def test_a_suppressed_address_blocks_every_spelling_of_it_and_only_those(db: Db, tmp_path: Path) -> None:
    # Given Kate's address on the list
    kate = _kate()
    local = kate.split("@")[0]
    _suppress(db, kate)
    # When non-essential mail goes to it with capitals and a trailing dot, and with two trailing dots
    spellings = [f"{local.capitalize()}@Example.COM.", f"{local}@example.com..", f"{local.upper()}@EXAMPLE.COM."]
    logs = [sent_mail(db, tmp_path, to, kind=f"notice-{i}") for i, to in enumerate(spellings)]
    # Then none is handed to the backend: each is logged as suppressed after the complaint
    assert [(log.status, log.message_id) for log in logs] == [("suppressed", None)] * len(spellings)
    assert all(log.error and "complaint" in log.error for log in logs)
    assert not any((tmp_path / f"{log.id}.eml").exists() for log in logs)
    # And essential mail to such a spelling still goes
    code = sent_mail(db, tmp_path, spellings[0], kind="two_factor_code", essential=True)
    assert code.status == "sent" and (tmp_path / f"{code.id}.eml").exists()
    # While a plus tag or another domain is another mailbox, and gets its mail
    others = [f"{local}+news@example.com.", f"{local}@example.co", f"{local}@example.com.au"]
    assert [sent_mail(db, tmp_path, to, kind="other").status for to in others] == ["sent"] * len(others)


def test_a_bounce_of_mail_to_a_trailing_dot_spelling_suppresses_the_one_key(db: Db, sns, signer, tmp_path) -> None:
    # Given mail sent to Kate's address written with capitals and a trailing dot
    kate = _kate()
    log = sent_mail(db, tmp_path, f"{kate.split('@')[0].upper()}@Example.com.")
    assert log.status == "sent" and log.message_id
    # When SES reports a permanent bounce naming the recipient as it resolved it (no dot, lower case)
    bounce = mail_events.ses_event("bounce", log.message_id, kate, now=datetime.now(UTC))
    [result] = invoke(signed(signer, bounce))
    # Then the event applies to the log and suppresses the address under its one key
    assert result["outcome"] == "applied"
    assert _suppressed(db) == {kate: "bounce"}
    # And the next message to any spelling of it is suppressed
    assert sent_mail(db, tmp_path, kate, kind="credits_expiring").status == "suppressed"
    assert sent_mail(db, tmp_path, f"{kate}.", kind="low_balance_2").status == "suppressed"


def test_a_complaint_naming_the_trailing_dot_spelling_writes_no_second_row(db: Db, sns, signer, tmp_path) -> None:
    # Given mail to Kate's plain address that SES later reports under the dotted spelling
    kate = _kate()
    log = sent_mail(db, tmp_path, kate)
    assert log.message_id
    complaint: dict[str, Any] = mail_events.ses_event("complaint", log.message_id, f"{kate}.", now=datetime.now(UTC))
    # When the complaint arrives
    [result] = invoke(signed(signer, complaint))
    # Then one row, the plain key
    assert result["outcome"] == "applied" and _suppressed(db) == {kate: "complaint"}
    with db() as uow:
        dotted = uow.session.execute(text("SELECT count(*) FROM email_suppressions WHERE email LIKE '%.'")).scalar_one()
    assert dotted == 0


def test_admins_find_and_lift_a_suppression_by_any_spelling(db: Db) -> None:
    # Given Kate's address and her plus-tagged one on the list, and an admin
    kate = _kate()
    local = kate.split("@")[0]
    plus = f"{local}+news@example.com"
    _suppress(db, kate, plus)
    admin = _admin(db)
    # When the admin looks Kate up with capitals and one or two trailing dots
    for spelling in (f"{local.upper()}@Example.COM.", f"{local}@example.com.."):
        found = api_call("GET", PATH, query=f"email={quote(spelling, safe='')}", as_user=admin)
        # Then her one entry is found
        assert found.status == 200, found.json
        assert [i["email"] for i in found.json["items"]] == [kate], spelling
    # When the admin lifts it by the dotted spelling
    lifted = api_call("DELETE", f"{PATH}/{quote(f'{local.capitalize()}@Example.com.', safe='@')}", as_user=admin)
    # Then Kate's entry goes (the one the mail service consulted), the plus-tagged one stays, and the audit names
    # the key that was removed
    assert lifted.status == 204, lifted.body
    assert _suppressed(db) == {plus: "complaint"}
    with db() as uow:
        targets = uow.session.execute(
            text("SELECT target_id FROM audit_logs WHERE action = 'email_suppression.remove'")
        ).scalars()
        assert list(targets) == [kate]
    # And lifting it again by the plain spelling is 404: it is one entry, already gone
    again = api_call("DELETE", f"{PATH}/{kate}", as_user=admin)
    assert (again.status, again.error_code) == (404, "email_suppression_not_found")


def test_an_address_of_only_dots_is_no_address(db: Db) -> None:
    # Given an admin, When they look up or lift an "address" that is only dots and spaces, Then 422, nothing lifted
    admin, kate = _admin(db), _kate()
    _suppress(db, kate)
    assert api_call("GET", PATH, query="email=..", as_user=admin).status == 422
    assert api_call("DELETE", f"{PATH}/...", as_user=admin).status in (404, 422)
    assert kate in _suppressed(db)
