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
        metadata={"challenge_id": str(challenge_id)},
    )
