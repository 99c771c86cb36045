"""Send a message: log it in `email_logs`, refuse repeats inside the anti-spam window and non-essential mail to
an address that bounced for good or complained (`email_suppressions`), deliver, record the outcome. A delivery
failure is recorded (status `failed`, the error) and never raised to the caller: the answers of register /
forgot-password must not depend on whether a message could be sent."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy import func, select, text

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import new_id, utcnow
from tollgate.mail.backends import MailBackend, get_backend
from tollgate.models.auth import EmailLog
from tollgate.models.mail_events import EmailSuppression
from tollgate.observability import logger

# The statuses of a message handed to the provider (or about to be): the anti-spam window counts them all, so a
# delivery notification moving `sent` on to `delivered` (or a bounce, a complaint) never reopens the window.
HANDED_OVER = ("pending", "sent", "delivered", "bounced", "complained")


@dataclass(frozen=True)
class OutgoingMail:
    to: str
    type: str  # e.g. verify_email, password_reset, two_factor_code, account_exists
    subject: str
    text: str
    user_id: uuid.UUID | None = None
    metadata: dict[str, object] = field(default_factory=dict)
    # Essential mail (sign-in codes, verification, password reset, security notices) is what the person asked for
    # or must see: it still goes to an address that complained or bounced; nothing else does.
    essential: bool = False


def _lower_letter(char: str) -> str:
    # Only a letter whose lower case is its own: the Kelvin sign lowers to the ASCII `k` (and U+0130 to `i` and a
    # dot), so folding those would let a look-alike address's bounce suppress the plain one.
    lower = char.lower()
    return lower if lower.upper() == char else char


def suppression_key(address: str) -> str:
    """An address as the suppression list (`email_suppressions`) keys it: trimmed, lower case, and the domain
    without trailing dots (DNS reads `example.com.` as `example.com`: one host, one mailbox). Every write to and
    look-up in the list goes through this. Nothing else is folded: `a+b@x` and look-alike letters (the Kelvin
    sign is no `K`) are other addresses."""
    local, at, domain = "".join(_lower_letter(c) for c in address.strip()).rpartition("@")
    return f"{local}{at}{domain.rstrip('.')}"


def _build(mail: OutgoingMail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1].strip("> ") or None)
    message.set_content(mail.text)
    return message


def send_mail(uow: UnitOfWork, mail: OutgoingMail, backend: MailBackend | None = None) -> str:
    """Send `mail` unless the same type went to the same address inside the window. Returns the log status."""
    settings = get_settings()
    backend = backend or get_backend()
    recipient = mail.to.strip()
    now = utcnow()
    log_id = new_id()
    with uow:
        session = uow.session
        # Serialise senders of the same (type, address) so two containers cannot both pass the window check.
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"mail:{mail.type}:{recipient.lower()}"}
        )
        window = timedelta(seconds=settings.mail_min_interval_seconds)
        recent = session.execute(
            select(func.count())
            .select_from(EmailLog)
            .where(
                EmailLog.type == mail.type,
                func.lower(EmailLog.recipient) == recipient.lower(),
                EmailLog.status.in_(HANDED_OVER),
                EmailLog.created_at > now - window,
            )
        ).scalar_one()
        blocked = None if mail.essential else session.get(EmailSuppression, suppression_key(recipient))
        # RFC 2606's .invalid never resolves: erased people's and Clerk placeholders' addresses live there.
        undeliverable = recipient.lower().rstrip(".").endswith(".invalid")
        log = EmailLog(
            id=log_id,
            user_id=mail.user_id,
            recipient=recipient,
            type=mail.type,
            subject=mail.subject,
            status="suppressed" if undeliverable or blocked or (recent and window.total_seconds() > 0) else "pending",
            provider=backend.name,
            error=(
                "the address cannot receive mail (.invalid)"
                if undeliverable
                else f"the address is suppressed after a {blocked.reason}"
                if blocked
                else None
            ),
            metadata_=mail.metadata or None,
            created_at=now,
        )
        session.add(log)
        if log.status == "suppressed":
            uow.commit()
            reason = (
                "undeliverable address" if undeliverable else "address suppressed" if blocked else "anti-spam window"
            )
            logger.info("mail suppressed", extra={"mail_type": mail.type, "reason": reason})
            return log.status
        session.flush()
        try:
            log.message_id = backend.send(_build(mail, settings.mail_from), str(log_id))
            log.status = "sent"
            log.sent_at = utcnow()
        except Exception as exc:  # a provider failure is recorded, not raised (see module docstring)
            log.status = "failed"
            log.error = f"{type(exc).__name__}: {exc}"[:2000]
            logger.warning("mail delivery failed", extra={"mail_type": mail.type, "error": type(exc).__name__})
        uow.commit()
        return log.status
