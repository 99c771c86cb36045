"""Account state changes that other areas trigger (a payment reopening a trial that had ended, an admin
suspending or erasing an account)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from tollgate.models.users import User, UserStatus


def unlock_after_payment(user: User) -> bool:
    """A payment (a pack or a plan) reopens an account the TrialExpiry job locked (status LOCKED). Suspended or
    deleted accounts stay as they are. True when the account was unlocked (the caller's unit of work keeps it)."""
    if user.status != UserStatus.LOCKED or user.deleted_at is not None:
        return False
    user.status = UserStatus.ACTIVE
    return True


def revoke_all_credentials(session: Session, user_id: uuid.UUID, *, reason: str, now: datetime) -> tuple[int, int]:
    """Revoke every session family and every API key of the user and end sign-ins waiting for their second
    factor, in the caller's transaction (as a password reset does); (sessions, keys) revoked."""
    # Imported here: identity brings password hashing and TOTP, which the payment handlers importing this
    # module never need.
    from tollgate.services import identity

    sessions = identity._revoke_families(session, user_id, reason)
    keys = identity._revoke_api_keys(session, user_id, now)
    identity._end_sign_ins_in_progress(session, user_id, now)
    return sessions, keys
