"""The email suppression list (API.md "Back office", ADMIN only): addresses that bounced for good or complained
get only essential mail (tollgate.mail.service); an admin reads the list and takes an address off it.

Addresses are kept as the mail events write them and the mail service looks them up
(`tollgate.mail.service.suppression_key`: trimmed, lower case, the domain without trailing dots). A look-up or
removal normalises its input the same way, so `Ada@Example.com. ` names `ada@example.com`.

Removal deletes the row (`DELETE ... RETURNING`: of two admins removing the same address one removes it, the other
gets `email_suppression_not_found`) and writes an audit row with the old values in the same transaction. The audit
row keeps the address: which address was mailed again, and who allowed it, is what the trail is for. The list is
in address order, so each page is a range scan of the primary key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select

from tollgate.db import UnitOfWork
from tollgate.errors import EmailSuppressionNotFound, ValidationFailed
from tollgate.mail.service import suppression_key
from tollgate.models.mail_events import SUPPRESSION_REASONS, EmailSuppression
from tollgate.pagination import Page, keyset_page
from tollgate.services import authz
from tollgate.services.authz import ADMIN, Actor, require_role
from tollgate.services.user_admin import current_admins, require_admin_now

MAX_EMAIL = 320  # the column's length
MAX_TARGET_ID = 255  # audit_logs.target_id; a longer address (none is valid past 254) is in old_values only


@dataclass(frozen=True, slots=True)
class Suppression:
    email: str
    reason: str
    mail_event_id: uuid.UUID | None
    created_at: datetime


def normalise(email: str) -> str:
    """An address as the suppression list keeps it (the key mail_events writes and the mail service looks up)."""
    address = suppression_key(email)
    if not address or len(address) > MAX_EMAIL:
        raise ValidationFailed(f"an email address has 1-{MAX_EMAIL} characters", details={"field": "email"})
    return address


def _view(row: EmailSuppression) -> Suppression:
    return Suppression(row.email, row.reason, row.mail_event_id, row.created_at)


def list_suppressions(
    uow: UnitOfWork,
    actor: Actor,
    *,
    email: str | None = None,
    reason: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Suppression]:
    """The suppressed addresses in address order; `email` is one whole address (any case), `reason` bounce or
    complaint."""
    require_role(actor, ADMIN)
    query = select(EmailSuppression)
    if email is not None:
        query = query.where(EmailSuppression.email == normalise(email))
    if reason is not None:
        if reason not in SUPPRESSION_REASONS:
            raise ValidationFailed(
                "reason is bounce or complaint", details={"field": "reason", "allowed": list(SUPPRESSION_REASONS)}
            )
        query = query.where(EmailSuppression.reason == reason)
    with uow:
        page = keyset_page(uow.session, query, EmailSuppression.email, cursor=cursor, limit=limit)
        return Page(items=[_view(r) for r in page.items], next_cursor=page.next_cursor)


def remove_suppression(uow: UnitOfWork, actor: Actor, email: str) -> Suppression:
    """Take `email` off the list (it gets every kind of mail again); audited with what was removed."""
    require_role(actor, ADMIN)
    address = normalise(email)
    with uow:
        session = uow.session
        # Still an active admin in the database, not only in a cached authorizer verdict (as access changes are).
        require_admin_now(actor, current_admins(session, lock=False))
        row = session.execute(
            delete(EmailSuppression)
            .where(EmailSuppression.email == address)
            .returning(
                EmailSuppression.email,
                EmailSuppression.reason,
                EmailSuppression.mail_event_id,
                EmailSuppression.created_at,
            )
        ).one_or_none()
        if row is None:
            raise EmailSuppressionNotFound("the address is not suppressed", details={"email": address})
        removed = Suppression(row.email, row.reason, row.mail_event_id, row.created_at)
        authz.audit(
            session, actor, action="email_suppression.remove", target_type="email_suppression",
            target_id=address if len(address) <= MAX_TARGET_ID else None,
            old_values={"email": removed.email, "reason": removed.reason,
                        "mail_event_id": str(removed.mail_event_id) if removed.mail_event_id else None,
                        "created_at": removed.created_at.isoformat()},
        )  # fmt: skip
        uow.commit()
    return removed
