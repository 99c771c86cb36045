"""Goodwill credits: SUPPORT (and ADMIN) may give a customer credits, at most the `support_goodwill_cap` setting
per grant and the `support_goodwill_daily_cap` setting per staff member in any 24 hours, through the same ledger
call as an admin adjustment (an `adjustment` grant), idempotent by the caller's Idempotency-Key, and audited with
the balance before and after in the grant's transaction.

Both caps are read fresh (they gate money, so a lowered cap binds the next grant in every container) and checked
after the ledger call, in its transaction: a refusal rolls the grant back, and a replay of a grant already made
returns it even if a cap has been lowered since. One staff member's grants take turns (an advisory lock), so
parallel grants with distinct keys cannot each see the same 24-hour total."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate import ledger, system_config
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import NotFound, OverGoodwillCap, OwnGoodwill, ValidationFailed
from tollgate.models.users import User, UserStatus
from tollgate.services.authz import ADMIN, SUPPORT, Actor, audit, require_role

AUDIT_ACTION = "support.goodwill"
DAILY_WINDOW = timedelta(hours=24)


def _granted_recently(session: Session, actor: Actor) -> Decimal:
    """What `actor` granted in goodwill in the last 24 hours (their audit rows: one per grant made)."""
    total = session.execute(
        text(
            "SELECT coalesce(sum((new_values->>'granted')::numeric), 0) FROM audit_logs"
            " WHERE action = :action AND actor_id IS NOT DISTINCT FROM :actor AND created_at > :since"
        ),
        {"action": AUDIT_ACTION, "actor": actor.user_id, "since": utcnow() - DAILY_WINDOW},
    ).scalar_one()
    return Decimal(total)


def grant_goodwill(
    uow: UnitOfWork,
    actor: Actor,
    user_id: uuid.UUID,
    *,
    amount: Decimal,
    reason: str,
    idempotency_key: str | None,
) -> ledger.AdjustResult:
    require_role(actor, ADMIN, SUPPORT)
    if amount <= 0:
        raise ValidationFailed("a goodwill grant is a positive amount", details={"field": "amount"})
    if not reason.strip():
        raise ValidationFailed("a reason is required", details={"field": "reason"})
    if actor.user_id == user_id:
        raise OwnGoodwill("staff may not grant goodwill credits to themselves", details={"user_id": str(user_id)})
    with uow:
        session = uow.session
        user = session.get(User, user_id)
        if user is None or user.deleted_at is not None or user.status == UserStatus.DELETED.value:
            raise NotFound("no such user", details={"user_id": str(user_id)})
        # Taken before the ledger's account lock, always in this order, so two grants cannot deadlock.
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"goodwill:{actor.user_id or 'operator'}"}
        )
        result = ledger.adjust(
            session, user_id, amount=amount, reason=reason, actor_id=actor.user_id, expires_at=None,
            idempotency_key=idempotency_key,
        )  # fmt: skip
        if not result.replayed:
            cap = system_config.get_number(session, system_config.SUPPORT_GOODWILL_CAP, max_age=0)
            if result.amount > cap:
                raise OverGoodwillCap(
                    f"a goodwill grant is at most {format(cap, 'f')} credits", details={"cap": format(cap, "f")}
                )
            daily = system_config.get_number(session, system_config.SUPPORT_GOODWILL_DAILY_CAP, max_age=0)
            granted = _granted_recently(session, actor)
            if granted + result.amount > daily:
                raise OverGoodwillCap(
                    f"one staff member grants at most {format(daily, 'f')} goodwill credits in 24 hours",
                    details={"daily_cap": format(daily, "f"), "granted_in_24h": format(granted, "f")},
                )
            audit(
                session, actor, action=AUDIT_ACTION, target_type="user", target_id=str(user_id),
                old_values={"balance": format(result.balance - result.amount, "f")},
                new_values={"balance": format(result.balance, "f"), "granted": format(result.amount, "f")},
                details={"reason": reason, "cap": format(cap, "f"), "transaction_id": str(result.transaction_id)},
            )  # fmt: skip
        uow.commit()
    return result
