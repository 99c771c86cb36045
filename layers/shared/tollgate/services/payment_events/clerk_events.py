"""Clerk events (through Svix): users kept in step with the Clerk instance (AUTH_MODE=clerk); Clerk Billing's
`subscription.*`, `subscriptionItem.*` and `paymentAttempt.*` events go to `clerk_billing_events`.

- `user.created` / `user.updated`: upsert by `clerk_id` (primary email, name, username, image, verification);
  the sign-up grant once (ledger source key `signup`), in the same transaction as the new user.
  A user already registered with the same email is linked to the Clerk id only when Clerk reports that email
  verified (otherwise anyone could claim an account by typing its address into Clerk) and the account verified it
  too (otherwise whoever registered the address first would hold the Clerk user's account).
  ADMIN_EMAILS makes an admin only of a user whose primary email Clerk reports verified.
- `user.deleted`: soft delete (`deleted_at`), every session and API key revoked. Later `user.updated` events of
  a deleted user never bring it back; a `user.created` that arrives after the delete creates nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update

from tollgate import ledger
from tollgate.config import get_settings
from tollgate.models.auth import ApiKey, AuthSession
from tollgate.models.users import User
from tollgate.payments.signatures import parse_time
from tollgate.services.authz import role_set_by_admin
from tollgate.services.payment_events import clerk_billing_events
from tollgate.services.payment_events.handling import Ctx, Outcome


def _primary_email(data: dict[str, Any]) -> tuple[str | None, bool]:
    emails = data.get("email_addresses") or []
    primary = data.get("primary_email_address_id")
    chosen = next((e for e in emails if e.get("id") == primary), emails[0] if emails else None)
    if not isinstance(chosen, dict) or not chosen.get("email_address"):
        return None, False
    verified = (chosen.get("verification") or {}).get("status") == "verified"
    return str(chosen["email_address"]).strip(), verified


def _ms(value: Any) -> datetime | None:
    return parse_time(value / 1000) if isinstance(value, int) else None


def _tombstone(ctx: Ctx, clerk_id: str) -> bool:
    """Was a user with this Clerk id deleted by an earlier event (a `user.deleted` that arrived first)?"""
    from tollgate.models.payments import WebhookEvent

    found = ctx.session.execute(
        select(WebhookEvent.id).where(
            WebhookEvent.provider == "clerk",
            WebhookEvent.type == "user.deleted",
            WebhookEvent.status == "processed",
            WebhookEvent.payload["data"]["id"].astext == clerk_id,
        )
    ).first()
    return found is not None


def user_upsert(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any]) -> Outcome:
    clerk_id = str(data["id"])
    email, verified = _primary_email(data)
    session = ctx.session
    user = session.execute(select(User).where(User.clerk_id == clerk_id).with_for_update()).scalar_one_or_none()
    if user is not None and user.deleted_at is not None:
        return Outcome.ignored("the user was deleted; Clerk updates no longer apply", clerk_id=clerk_id)
    if user is None and _tombstone(ctx, clerk_id):
        return Outcome.ignored("a delete of this Clerk user was already applied", clerk_id=clerk_id)
    created = False
    if user is None and email:
        same_email = session.execute(
            select(User).where(func.lower(User.email) == email.lower()).with_for_update()
        ).scalar_one_or_none()
        if same_email is not None:
            # Never link to an account that never proved the address: whoever registered it first would hold
            # the password to the Clerk user's account (and to what the Clerk user pays for).
            if (
                not verified
                or same_email.clerk_id is not None
                or same_email.deleted_at is not None
                or same_email.email_verified_at is None
            ):
                return Outcome.rejected(
                    "an account with this email exists and cannot be linked to this Clerk user", clerk_id=clerk_id
                )
            user = same_email
    if user is None:
        if not email:
            return Outcome.rejected("the Clerk user has no email address", clerk_id=clerk_id)
        user = User(email=email, clerk_id=clerk_id, role="USER")
        session.add(user)
        created = True
    user.clerk_id = clerk_id
    if email and user.email.lower() != email.lower():
        taken = session.execute(
            select(User.id).where(func.lower(User.email) == email.lower(), User.id != user.id)
        ).first()
        if taken is None:
            user.email = email
    if verified and user.email_verified_at is None:
        user.email_verified_at = _ms(data.get("updated_at")) or ctx.now
    # ADMIN_EMAILS counts only for a primary email Clerk reports verified: anyone can type an address into Clerk.
    if (
        verified
        and user.role == "USER"
        and email
        and user.email.lower() == email.lower()
        and email.lower() in get_settings().admin_emails
        and not role_set_by_admin(ctx.session, user.id)
    ):
        user.role = "ADMIN"
    name = " ".join(p for p in (data.get("first_name"), data.get("last_name")) if p)
    if name:
        user.name = name[:200]
    if data.get("username"):
        clash = session.execute(select(User.id).where(User.username == data["username"], User.id != user.id)).first()
        if clash is None:
            user.username = str(data["username"])[:64]
    if data.get("image_url"):
        user.image = str(data["image_url"])
    session.flush()
    if created or ctx.event_type == "user.created":
        ledger.grant_signup_credits(session, user.id)  # idempotent: source key `signup`
    return Outcome.done(user_id=str(user.id), created=created)


def user_deleted(ctx: Ctx, payload: dict[str, Any], data: dict[str, Any]) -> Outcome:
    clerk_id = str(data["id"])
    user = ctx.session.execute(select(User).where(User.clerk_id == clerk_id).with_for_update()).scalar_one_or_none()
    if user is None:
        return Outcome.done(note="no such user; later creates of this Clerk id are ignored", clerk_id=clerk_id)
    if user.deleted_at is None:
        user.deleted_at = ctx.now
    ctx.session.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
        .values(revoked_at=ctx.now, revoked_reason="user_deleted")
    )
    ctx.session.execute(
        update(ApiKey).where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None)).values(revoked_at=ctx.now)
    )
    return Outcome.done(user_id=str(user.id), deleted=True)


def handle(ctx: Ctx, payload: dict[str, Any]) -> Outcome:
    if ctx.event_type.split(".", 1)[0] in clerk_billing_events.BILLING_EVENT_KINDS:
        return clerk_billing_events.handle(ctx, payload)
    data = payload.get("data")
    if not isinstance(data, dict) or not data.get("id"):
        return Outcome.rejected("the event carries no user")
    if ctx.event_type in {"user.created", "user.updated"}:
        return user_upsert(ctx, payload, data)
    if ctx.event_type == "user.deleted":
        return user_deleted(ctx, payload, data)
    return Outcome.ignored(f"Tollgate does not handle {ctx.event_type}")
