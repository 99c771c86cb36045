"""Mail to an address under RFC 2606's `.invalid` (an erased person's placeholder, a Clerk user without an email)
is logged and never handed to the backend: it could only bounce, and bounces count against the sender."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from tollgate.db import UnitOfWork
from tollgate.mail import OutgoingMail, send_mail
from tollgate.mail.backends import LocalMailBackend
from tollgate.models.auth import EmailLog


def _send(db: Callable[[], UnitOfWork], tmp_path: Path, to: str, *, essential: bool) -> EmailLog:
    send_mail(db(), OutgoingMail(to=to, type="payment_failed", subject="s", text="t", essential=essential),
              LocalMailBackend(tmp_path, echo=False))  # fmt: skip
    with db() as uow:
        log = uow.session.execute(select(EmailLog).where(EmailLog.recipient == to)).scalars().one()
        uow.session.expunge(log)
        return log


@pytest.mark.parametrize("to", ["erased-0193@erased.invalid", "u_2x@users.clerk.INVALID", "a@b.invalid."])
@pytest.mark.parametrize("essential", [False, True])
def test_mail_to_an_invalid_domain_is_logged_and_never_sent(
    db: Callable[[], UnitOfWork], tmp_path: Path, to: str, essential: bool
) -> None:
    # Given an address that cannot receive mail
    # When any message, essential or not, is sent to it
    log = _send(db, tmp_path, to, essential=essential)
    # Then it is logged as suppressed with the reason, and the backend wrote nothing
    assert (log.status, log.message_id) == ("suppressed", None)
    assert log.error is not None and ".invalid" in log.error
    assert list(tmp_path.glob("*.eml")) == []


def test_an_ordinary_address_still_gets_its_mail(db: Callable[[], UnitOfWork], tmp_path: Path) -> None:
    # Given an address whose domain merely contains the word
    log = _send(db, tmp_path, "someone@invalid.example.com", essential=False)
    # Then it is sent
    assert log.status == "sent" and (tmp_path / f"{log.id}.eml").exists()
