"""Account state changes that other areas trigger (a payment reopening a trial that had ended)."""

from __future__ import annotations

from tollgate.models.users import User, UserStatus


def unlock_after_payment(user: User) -> bool:
    """A payment (a pack or a plan) reopens an account the TrialExpiry job locked (status LOCKED). Suspended or
    deleted accounts stay as they are. True when the account was unlocked (the caller's unit of work keeps it)."""
    if user.status != UserStatus.LOCKED or user.deleted_at is not None:
        return False
    user.status = UserStatus.ACTIVE
    return True
