"""The audit trail (issue 14): reading it (admins), and the security events the sign-in services write into it.

Every row is written by `tollgate.ledger.audit` in the transaction of the change it records (through
`authz.audit` for admin and support actions, `security_event` here for what a user does to their own
credentials), carries the request's source IP and user agent (`tollgate.request_origin`), and is append-only: the
database refuses UPDATE and DELETE (migrations/sql/audit).

Security events (action, target `user` / the user's id unless said otherwise):

| action | written when |
|---|---|
| `auth.sign_in` | a sign-in opens a session (`details.method`: password, or `oauth:<provider>`) |
| `auth.sign_in_failures` | a failed sign-in reaches the lockout threshold of its account or source IP |
| `auth.password_reset.requested` / `.completed` | a reset link is mailed / used |
| `auth.password.changed` | the signed-in user changes their password |
| `auth.two_factor.enabled` / `.disabled` | 2FA is turned on (`details.method`) / off |
| `auth.two_factor.recovery_codes_created` | a TOTP user makes new recovery codes (the earlier ones stop working) |
| `auth.api_key.created` / `.revoked` | target `api_key` / its id |
| `auth.session.revoked` | target `session` / the family id: its owner ended it, or a replayed refresh token did |
| `auth.account.locked` | a security notice's lock link revoked every session and key |

Password reset, password change and the lock link revoke sessions and keys too: their rows count them.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tollgate.db import UnitOfWork
from tollgate.errors import ValidationFailed
from tollgate.models.credits import AuditLog
from tollgate.pagination import Page, keyset_page
from tollgate.services.authz import ADMIN, Actor, require_role

SIGN_IN = "auth.sign_in"
SIGN_IN_FAILURES = "auth.sign_in_failures"
PASSWORD_RESET_REQUESTED = "auth.password_reset.requested"  # noqa: S105  (an action name, not a secret)
PASSWORD_RESET_COMPLETED = "auth.password_reset.completed"  # noqa: S105  (an action name, not a secret)
PASSWORD_CHANGED = "auth.password.changed"  # noqa: S105  (an action name, not a secret)
TWO_FACTOR_ENABLED = "auth.two_factor.enabled"
TWO_FACTOR_DISABLED = "auth.two_factor.disabled"
RECOVERY_CODES_CREATED = "auth.two_factor.recovery_codes_created"
API_KEY_CREATED = "auth.api_key.created"
API_KEY_REVOKED = "auth.api_key.revoked"
SESSION_REVOKED = "auth.session.revoked"
ACCOUNT_LOCKED = "auth.account.locked"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: uuid.UUID
    created_at: datetime
    actor_id: uuid.UUID | None
    action: str
    resource: str
    resource_id: str | None
    old_values: dict[str, Any] | None
    new_values: dict[str, Any] | None
    details: dict[str, Any]
    ip_address: str | None
    user_agent: str | None

    @classmethod
    def of(cls, row: AuditLog) -> AuditEntry:
        return cls(
            id=row.id,
            created_at=row.created_at,
            actor_id=row.actor_id,
            action=row.action,
            resource=row.target_type,
            resource_id=row.target_id,
            old_values=row.old_values,
            new_values=row.new_values,
            details=dict(row.details or {}),
            ip_address=row.ip_address,
            user_agent=row.user_agent,
        )


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """What GET /admin/audit-logs narrows to; every field optional. `since` is inclusive, `until` exclusive."""

    actor_id: uuid.UUID | None = None
    resource: str | None = None
    resource_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_audit_logs(
    uow: UnitOfWork, actor: Actor, where: AuditFilter, *, cursor: str | None, limit: int | None
) -> Page[AuditEntry]:
    """Audit rows matching `where`, newest first (admins only)."""
    require_role(actor, ADMIN)
    if where.since is not None and where.until is not None and where.since >= where.until:
        raise ValidationFailed("since must be before until", details={"field": "since"})
    statement = select(AuditLog)
    if where.actor_id is not None:
        statement = statement.where(AuditLog.actor_id == where.actor_id)
    if where.resource is not None:
        statement = statement.where(AuditLog.target_type == where.resource)
    if where.resource_id is not None:
        statement = statement.where(AuditLog.target_id == where.resource_id)
    if where.action is not None:
        statement = statement.where(AuditLog.action == where.action)
    if where.since is not None:
        statement = statement.where(AuditLog.created_at >= where.since)
    if where.until is not None:
        statement = statement.where(AuditLog.created_at < where.until)
    with uow:
        page = keyset_page(
            uow.session, statement, AuditLog.created_at, AuditLog.id, cursor=cursor, limit=limit, descending=True
        )
        return Page([AuditEntry.of(row) for row in page.items], page.next_cursor)


def security_event(
    session: Session,
    user_id: uuid.UUID | None,
    action: str,
    *,
    resource: str = "user",
    resource_id: str | None = None,
    details: Mapping[str, Any] | None = None,
    old_values: Mapping[str, Any] | None = None,
    new_values: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """One security event in `session`'s transaction: the user acted on their own account (`actor_id` is theirs;
    None when no account is known, e.g. failures against an unknown email). `resource_id` defaults to the user."""
    from tollgate import ledger  # as in authz.audit: only code that writes loads the ledger

    target = resource_id if resource_id is not None else (str(user_id) if user_id is not None else None)
    ledger.audit(
        session, actor_id=user_id, action=action, target_type=resource, target_id=target, details=details,
        old_values=old_values, new_values=new_values, now=now,
    )  # fmt: skip
