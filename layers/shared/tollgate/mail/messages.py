"""The messages sign-in sends. Links start with APP_URL as API.md says."""

from __future__ import annotations

import uuid
from urllib.parse import quote

from tollgate.config import get_settings
from tollgate.mail.service import OutgoingMail


def _link(path: str, token: str) -> str:
    return f"{get_settings().app_url.rstrip('/')}/{path}?token={quote(token, safe='')}"


def verify_email(to: str, user_id: uuid.UUID, token: str) -> OutgoingMail:
    link = _link("verify-email", token)
    return OutgoingMail(
        to=to,
        type="verify_email",
        subject="Confirm your email address",
        text=(
            "Welcome!\n\nConfirm your email address to finish creating your account:\n\n"
            f"{link}\n\nThe link works once and expires in 24 hours. If you did not sign up, ignore this message.\n"
        ),
        user_id=user_id,
        essential=True,
    )


def account_exists(to: str, user_id: uuid.UUID) -> OutgoingMail:
    base = get_settings().app_url.rstrip("/")
    return OutgoingMail(
        to=to,
        type="account_exists",
        subject="Someone tried to sign up with your email",
        text=(
            "Someone (perhaps you) tried to create an account with this email address, but you already have one.\n\n"
            f"Sign in at {base}/login, or reset your password at {base}/forgot-password.\n"
            "If it was not you, you can ignore this message: nothing was changed.\n"
        ),
        user_id=user_id,
        essential=True,
    )


def password_reset(to: str, user_id: uuid.UUID, token: str) -> OutgoingMail:
    link = _link("reset-password", token)
    return OutgoingMail(
        to=to,
        type="password_reset",
        subject="Reset your password",
        text=(
            "Someone asked to reset the password of your account.\n\nChoose a new password here:\n\n"
            f"{link}\n\nThe link works once and expires in 1 hour. Resetting signs you out everywhere.\n"
            "If you did not ask for this, ignore this message: your password is unchanged.\n"
        ),
        user_id=user_id,
        essential=True,
    )


def two_factor_code(to: str, user_id: uuid.UUID, code: str, challenge_id: uuid.UUID) -> OutgoingMail:
    return OutgoingMail(
        to=to,
        type="two_factor_code",
        subject=f"Your sign-in code: {code}",
        text=(
            f"Your sign-in code is {code}\n\nIt expires in 10 minutes and works only for the sign-in that asked "
            "for it. If you did not try to sign in, change your password.\n"
        ),
        user_id=user_id,
        essential=True,
        metadata={"challenge_id": str(challenge_id)},
    )


# Security notices (issue 11): what changed, and a one-time link that locks the account if it was not the owner.
SECURITY_EVENTS: dict[str, tuple[str, str]] = {
    "two_factor_enabled": ("Two-factor sign-in was turned on", "two-factor sign-in was turned on"),
    "two_factor_disabled": ("Two-factor sign-in was turned off", "two-factor sign-in was turned off"),
    "api_key_created": ("A new API key was created", "a new API key was created"),
    "password_changed": ("Your password was changed", "your password was changed"),
    "password_reset": ("Your password was reset", "your password was reset with a mailed link"),
    "recovery_codes_created": ("New recovery codes were made", "new two-factor recovery codes were made"),
    "recovery_code_used": ("A recovery code was used to sign in", "a recovery code was used to sign in"),
}


def security_notice(to: str, user_id: uuid.UUID, event: str, lock_token: str, hours: int) -> OutgoingMail:
    subject, what = SECURITY_EVENTS[event]
    link = _link("lock-account", lock_token)
    return OutgoingMail(
        to=to,
        type=f"security_{event}",
        subject=subject,
        text=(
            f"On your account, {what}.\n\nIf this was you, there is nothing to do.\n\n"
            "If it was not you, lock your account now: this signs out every session, revokes every API key, "
            "turns off any two-factor method added since, and stops your password from working until you "
            f"reset it:\n\n{link}\n\nThe link works once and expires in {hours} hours.\n"
        ),
        user_id=user_id,
        essential=True,
        metadata={"event": event},
    )


def account_locked(to: str, user_id: uuid.UUID, reset_token: str) -> OutgoingMail:
    link = _link("reset-password", reset_token)
    return OutgoingMail(
        to=to,
        type="account_locked",
        subject="Your account is locked: choose a new password",
        text=(
            "Your account's sessions and API keys were revoked and its password no longer works.\n\n"
            f"Choose a new password to get back in:\n\n{link}\n\nThe link works once and expires in 1 hour.\n"
        ),
        user_id=user_id,
        essential=True,
    )
