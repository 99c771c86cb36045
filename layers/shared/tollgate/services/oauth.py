"""Sign-in with Google or GitHub: authorization code + PKCE + state; on callback, sign in the linked user,
link to the existing account with the same (provider-verified) email, or create an account."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from tollgate.auth import oauth, sealing
from tollgate.auth.secrets import hash_secret, new_token
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import Conflict, OAuthFailed
from tollgate.models import User
from tollgate.models.auth import AuthSession, OAuthAccount, OAuthState
from tollgate.services import audit_trail
from tollgate.services.identity import (
    ClientInfo,
    TokenPair,
    create_user,
    ensure_active,
    promote_admin,
    require_builtin,
    start_session,
    user_by_email,
)

STATE_TTL = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class AuthorizationStart:
    authorization_url: str
    state: str
    expires_in: int


def start_authorization(uow: UnitOfWork, provider: str) -> AuthorizationStart:
    require_builtin()
    settings = get_settings()
    config = oauth.provider_config(settings, provider)
    state = new_token(32)
    verifier = new_token(64)  # 86 characters of [A-Za-z0-9_-]: a valid PKCE verifier
    redirect = oauth.redirect_uri(settings, provider)
    now = utcnow()
    with uow:
        # Old pending authorizations are useless after their expiry; sweep a few on the way.
        uow.session.execute(delete(OAuthState).where(OAuthState.expires_at < now - STATE_TTL))
        uow.session.add(
            OAuthState(
                provider=provider,
                state_hash=hash_secret(state),
                # Sealed: it must be read back at the callback (the state itself is only a hash).
                code_verifier=sealing.seal(verifier, f"oauth_states.code_verifier:{provider}"),
                redirect_uri=redirect,
                expires_at=now + STATE_TTL,
            )
        )
        uow.commit()
    url = oauth.authorization_url(config, state, verifier, redirect)
    return AuthorizationStart(authorization_url=url, state=state, expires_in=int(STATE_TTL.total_seconds()))


def complete_authorization(uow: UnitOfWork, provider: str, code: str, state: str, client: ClientInfo) -> TokenPair:
    require_builtin()
    settings = get_settings()
    config = oauth.provider_config(settings, provider)
    now = utcnow()
    with uow:
        # Single use: the state is consumed whatever happens next.
        pending = uow.session.execute(
            delete(OAuthState)
            .where(OAuthState.state_hash == hash_secret(state), OAuthState.provider == provider)
            .returning(OAuthState.code_verifier, OAuthState.redirect_uri, OAuthState.expires_at)
        ).first()
        uow.commit()
    if pending is None or pending.expires_at <= now:
        raise OAuthFailed("the sign-in request is unknown or expired; start again")
    verifier = sealing.unseal(pending.code_verifier, f"oauth_states.code_verifier:{provider}")
    tokens = oauth.exchange_code(config, code, verifier, pending.redirect_uri)
    profile = oauth.fetch_profile(settings, provider, tokens.access_token)
    expires_at = now + timedelta(seconds=tokens.expires_in) if tokens.expires_in else None

    with uow:
        session = uow.session
        link = session.execute(
            select(OAuthAccount)
            .where(OAuthAccount.provider == provider, OAuthAccount.provider_account_id == profile.account_id)
            .with_for_update()
        ).scalar_one_or_none()
        if link is not None:
            user = session.execute(select(User).where(User.id == link.user_id).with_for_update()).scalar_one()
            link.token_type, link.scope, link.expires_at = tokens.token_type, tokens.scope, expires_at
        else:
            if not profile.email or not profile.email_verified:
                raise OAuthFailed(f"{provider} did not share a verified email address")
            existing = user_by_email(session, profile.email, lock=True)
            if existing is not None:
                user = existing
                if user.email_verified_at is None:
                    # The provider proved the address; a password set by whoever registered it unverified was
                    # never proven and could belong to someone else: drop it and end its sessions.
                    user.email_verified_at = now
                    user.password_hash = None
                    session.execute(
                        update(AuthSession)
                        .where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
                        .values(revoked_at=now, revoked_reason="oauth_takeover")
                    )
            else:
                user = create_user(
                    session,
                    email=profile.email,
                    email_verified_at=now,
                    name=profile.name,
                    image=profile.image,
                )
            session.add(
                OAuthAccount(
                    user_id=user.id,
                    provider=provider,
                    provider_account_id=profile.account_id,
                    email=profile.email,
                    token_type=tokens.token_type,
                    scope=tokens.scope,
                    expires_at=expires_at,
                )
            )
        ensure_active(user)
        promote_admin(user)
        user.last_login_at = now
        try:
            session.flush()
        except IntegrityError:
            raise Conflict("this account was linked by another request at the same moment; try again") from None
        # No password was proven: credential changes from this session need POST /auth/reauthenticate first.
        pair = start_session(session, user, client, now, authenticated_at=None)
        audit_trail.security_event(
            session, user.id, audit_trail.SIGN_IN,
            details={"method": f"oauth:{provider}", "session_id": str(pair.session_id)}, now=now,
        )  # fmt: skip
        uow.commit()
        return pair
