"""The one authorisation rule. The authorizer proves who calls; every privileged service takes an `Actor` and
decides with `require_role` what that actor may do. Handlers never compare roles.

    require_role(actor, ADMIN)             # admins only
    require_role(actor, ADMIN, SUPPORT)    # staff
    require_role(actor, ADMIN, OPERATOR)   # admins, and the operator at the CLI

The operator is whoever runs the `tollgate` CLI with database access. It is not a user: it has no user id and
its own role, so a service admits it only where it names `OPERATOR` (explicit, never implied by ADMIN). Audit rows
it writes carry no `actor_id` and name it in `details.operator`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from tollgate.errors import Forbidden
from tollgate.models.users import UserRole

USER = UserRole.USER.value
SUPPORT = UserRole.SUPPORT.value
ADMIN = UserRole.ADMIN.value
OPERATOR = "OPERATOR"

USER_ROLES = frozenset(r.value for r in UserRole)
ROLES = USER_ROLES | {OPERATOR}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a signed-in user (id + role, as the authorizer proved them) or the CLI operator."""

    user_id: uuid.UUID | None
    role: str
    operator_name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role: {self.role!r}")
        # An operator is never a user, and a user always is one: the audit trail relies on both.
        if (self.role == OPERATOR) != (self.user_id is None):
            raise ValueError("a user actor needs a user id; the operator has none")

    @classmethod
    def user(cls, user_id: uuid.UUID, role: str) -> Actor:
        return cls(user_id=user_id, role=role)

    @classmethod
    def operator(cls, name: str = "cli") -> Actor:
        """The CLI operator; `name` says who ran it (written to audit rows)."""
        return cls(user_id=None, role=OPERATOR, operator_name=name or "cli")

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR


def has_role(actor: Actor, *roles: str) -> bool:
    """Whether `actor` holds one of `roles` (at least one role must be named)."""
    if not roles:
        raise ValueError("a role check needs at least one role")
    unknown = set(roles) - ROLES
    if unknown:
        raise ValueError(f"unknown roles: {sorted(unknown)}")
    return actor.role in roles


def require_role(actor: Actor, *roles: str) -> None:
    """Raise `Forbidden` unless `actor` holds one of `roles`."""
    if not has_role(actor, *roles):
        raise Forbidden("this action needs the role " + " or ".join(roles), details={"required": list(roles)})


def audit(
    session: Session,
    actor: Actor,
    *,
    action: str,
    target_type: str,
    target_id: str | None,
    details: Mapping[str, Any] | None = None,
    old_values: Mapping[str, Any] | None = None,
    new_values: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """One audit_logs row naming `actor`: its user id, or (the operator) `details.operator`; `old_values` and
    `new_values` (their own columns) are what the change replaced and what it wrote. Written in `session`'s
    transaction, so it commits or rolls back with the change; the request's IP and user agent are added by the
    writer."""
    from tollgate import ledger  # here, not at import: every handler imports this module through the resolver

    named = dict(details or {})
    if actor.is_operator:
        named["operator"] = actor.operator_name
    ledger.audit(
        session, actor_id=actor.user_id, action=action, target_type=target_type, target_id=target_id,
        details=named, old_values=old_values, new_values=new_values, now=now,
    )  # fmt: skip


def role_set_by_admin(session: Session, user_id: uuid.UUID) -> bool:
    """Whether an admin has set this account's role by hand (an audited `user.role_change`): ADMIN_EMAILS then
    no longer promotes it, at sign-in or from Clerk, so an explicit demotion outlives the list."""
    from sqlalchemy import select

    from tollgate.models.credits import AuditLog

    found = session.execute(
        select(AuditLog.id)
        .where(AuditLog.target_type == "user", AuditLog.target_id == str(user_id))
        .where(AuditLog.action == "user.role_change")
        .limit(1)
    ).first()
    return found is not None
