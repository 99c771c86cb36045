"""Accounts and sign-in (API.md "Auth"): every route validates its input, calls one service, returns a model.

Nothing here logs a request body: passwords, tokens and codes never reach the logs.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from tollgate.auth.scopes import DEFAULT_SCOPES, SCOPES, Scope
from tollgate.db import UnitOfWork
from tollgate.http.api import JSON, create_app, current_principal
from tollgate.http.edge import Cursor, Limit, StrictBody, Timestamp, documented_errors
from tollgate.observability import logger, metrics, tracer
from tollgate.services import identity, oauth
from tollgate.services.identity import ApiKeyView, Caller, ClientInfo, SessionView, TokenPair, TwoFactorChallenge

app = create_app("auth")

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]


def _one_spelling(address: str) -> str:
    # Accounts are found by the address in lower case. A letter whose lower case is another letter's (the Kelvin
    # sign lowers to `k`, U+0130 to `i` and a dot) or a decomposed accent would let a look-alike spelling claim
    # the plain one's account, whose links then go to the look-alike mailbox.
    if not unicodedata.is_normalized("NFC", address) or any(c.lower() != c and c.lower().upper() != c for c in address):
        raise ValueError("not an address in its one spelling")
    return address


# A new account's address: a domain of non-empty labels, none after a final dot, and letters of one spelling.
# `kate@example.com.` names Kate's mailbox too, so accepting it would open a second account (and sign-up grant)
# on one mailbox.
NewEmail = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$"),
    AfterValidator(_one_spelling),
]
# Length rules (8-128) belong to the policy; the edge only refuses absurd sizes before anything is hashed.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Secret = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=6, max_length=6, pattern=r"^[0-9]{6}$")]
# At sign-in (and step-up) a TOTP user may send one of their recovery codes instead ("abcde-fghij").
CodeOrRecovery = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^([0-9]{6}|[A-Za-z0-9]{5}-?[A-Za-z0-9]{5})$")
]
Username = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9_.-]{3,64}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("not an IANA time zone") from None
    return value


Timezone = Annotated[str, StringConstraints(max_length=64), AfterValidator(_zone)]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length=16)]


# --- bodies -------------------------------------------------------------------------------------------------
class RegisterIn(StrictBody):
    email: NewEmail
    password: Password
    name: Name | None = None
    username: Username | None = None


class TokenIn(StrictBody):
    token: Secret


class VerifyEmailIn(StrictBody):
    token: Secret
    password: Password = Field(description="the password given when registering (the registration this link is for)")


class LoginIn(StrictBody):
    email: Email
    password: Password


class TwoFactorLoginIn(StrictBody):
    challenge_id: uuid.UUID
    code: CodeOrRecovery = Field(description="the 6-digit code, or (TOTP) one of the ten recovery codes")


class ReauthenticateIn(StrictBody):
    password: Password
    code: CodeOrRecovery | None = Field(
        default=None, description="with 2FA on: a TOTP or recovery code, or a mailed code (a call without one mails it)"
    )


class RefreshIn(StrictBody):
    refresh_token: Secret


class ForgotIn(StrictBody):
    email: Email


class ResetIn(StrictBody):
    token: Secret
    password: Password


class ChangePasswordIn(StrictBody):
    current_password: Password
    new_password: Password


class ProfilePatch(StrictBody):
    name: Name | None = None
    username: Username | None = None
    image: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://")] | None = None
    timezone: Timezone | None = None
    language: Language | None = None


class CodeIn(StrictBody):
    code: Code


class PasswordIn(StrictBody):
    password: Password


class ApiKeyIn(StrictBody):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    scopes: list[Scope] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description=f"what the key may do; default {list(DEFAULT_SCOPES)} (read-only). `admin` needs a staff role",
    )
    expires_at: Timestamp | None = Field(default=None, description="optional expiry (ISO 8601; in the future)")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650, description="or an expiry in days")


# --- answers ------------------------------------------------------------------------------------------------
class StatusOut(BaseModel):
    status: str


class TokensOut(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105  (the scheme name)
    expires_in: int
    session_id: uuid.UUID

    @classmethod
    def of(cls, pair: TokenPair) -> TokensOut:
        return cls(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_in=pair.expires_in,
            session_id=pair.session_id,
        )


class TwoFactorRequiredOut(BaseModel):
    two_factor_required: Literal[True] = True
    challenge_id: uuid.UUID
    method: str


class ProfileOut(BaseModel):
    id: uuid.UUID
    email: str
    name: str | None
    username: str | None
    image: str | None
    role: str
    status: str
    tier: str
    email_verified: bool
    two_factor_enabled: bool
    two_factor_method: str | None
    timezone: str
    language: str
    created_at: datetime

    @classmethod
    def of(cls, user: identity.ProfileView) -> ProfileOut:
        return cls(
            id=user.id,
            email=user.email,
            name=user.name,
            username=user.username,
            image=user.image,
            role=user.role,
            status=user.status,
            tier=user.tier,
            email_verified=user.email_verified,
            two_factor_enabled=user.two_factor_enabled,
            two_factor_method=user.two_factor_method,
            timezone=user.timezone,
            language=user.language,
            created_at=user.created_at,
        )


class TwoFactorStateOut(BaseModel):
    two_factor_enabled: bool
    method: str | None


class TotpSetupOut(BaseModel):
    secret: str
    otpauth_uri: str


class TotpEnabledOut(TwoFactorStateOut):
    recovery_codes: list[str] = Field(description="ten one-time codes, shown this once (stored hashed)")


class RecoveryCodesOut(BaseModel):
    recovery_codes: list[str] = Field(description="ten one-time codes, shown this once; earlier ones stop working")


class ReauthenticatedOut(BaseModel):
    access_token: str = Field(description="a new access token of the same session carrying the new auth_time")
    token_type: Literal["Bearer"] = "Bearer"  # noqa: S105  (the scheme name)
    expires_in: int
    auth_time: datetime
    step_up_until: datetime = Field(description="credential changes are allowed until then")


class AuthorizeOut(BaseModel):
    authorization_url: str
    state: str
    expires_in: int


class SessionOut(BaseModel):
    id: uuid.UUID
    ip: str | None
    user_agent: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime
    current: bool

    @classmethod
    def of(cls, view: SessionView) -> SessionOut:
        return cls(**{name: getattr(view, name) for name in cls.model_fields})


class SessionsOut(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    scopes: list[str]

    @classmethod
    def of(cls, view: ApiKeyView) -> ApiKeyOut:
        return cls(**{name: getattr(view, name) for name in cls.model_fields})


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="the secret; shown this once, never again")


class ApiKeysOut(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None


def _client() -> ClientInfo:
    http = app.current_event.request_context.http
    return ClientInfo(ip=http.source_ip or None, user_agent=http.user_agent or None)


def _caller() -> Caller:
    principal = current_principal(app)
    return Caller(
        user_id=principal.user_id,
        session_id=principal.session_id,
        api_key_id=principal.api_key_id,
        auth_time=principal.auth_time,
    )


# OpenAPI: what credential changes answer without a fresh step-up (and what keys get).
STEP_UP = (
    " Needs a session token (never an API key: the authorizer refuses keys on credential routes) that proved the"
    " password (and second factor) within STEP_UP_WINDOW_SECONDS (5 minutes): a sign-in or"
    " POST /auth/reauthenticate. Mails a security notice with a one-time lock link."
)
STEP_UP_ERRORS = {403: "`reauthentication_required`: reauthenticate first (or an API key was used)"}


def _no_content() -> Response[str]:
    return Response(status_code=204, body="")


# --- public: register, verify, sign in ----------------------------------------------------------------------
@app.post("/auth/register", summary="Create an account (the same answer whether or not the email is taken)")
def register(body: RegisterIn) -> tuple[StatusOut, int]:
    identity.register(UnitOfWork(), body.email, body.password, name=body.name, username=body.username, client=_client())
    return StatusOut(status="verification_sent"), 202


@app.post(
    "/auth/verify-email",
    summary="Confirm an email address with the mailed token and the password it was registered with",
    description=(
        "`{token, password}`: succeeds only when `password` is the one of the registration this link belongs to"
        " (so a link mailed for someone else's registration of your address cannot give his password your"
        " account). A wrong password answers exactly like a bad link (400 `invalid_token`) and leaves the link"
        " usable; it counts as a failed sign-in (429 `too_many_attempts` past the limit)."
    ),
)
def verify_email(body: VerifyEmailIn) -> StatusOut:
    identity.verify_email(UnitOfWork(), body.token, body.password, _client().ip)
    return StatusOut(status="verified")


@app.post(
    "/auth/login",
    summary="Sign in with email and password",
    description=(
        "An account whose address is not verified yet answers 401 `invalid_credentials`, exactly like a wrong"
        " password; with the password of its newest pending registration, that registration's verification mail"
        " is sent again (at most once per MAIL_MIN_INTERVAL_SECONDS)."
    ),
)
def login(body: LoginIn) -> TokensOut | TwoFactorRequiredOut:
    outcome = identity.login(UnitOfWork(), body.email, body.password, _client())
    if isinstance(outcome, TwoFactorChallenge):
        return TwoFactorRequiredOut(challenge_id=outcome.challenge_id, method=outcome.method)
    return TokensOut.of(outcome)


@app.post("/auth/login/two-factor", summary="Finish a sign-in with the second factor")
def login_two_factor(body: TwoFactorLoginIn) -> TokensOut:
    return TokensOut.of(identity.login_two_factor(UnitOfWork(), body.challenge_id, body.code, _client()))


@app.post("/auth/token/refresh", summary="Rotate a refresh token into a new token pair")
def refresh(body: RefreshIn) -> TokensOut:
    return TokensOut.of(identity.refresh(UnitOfWork(), body.refresh_token, _client()))


@app.post("/auth/password/forgot", summary="Mail a password reset link (202 whatever the email)")
def forgot_password(body: ForgotIn) -> tuple[StatusOut, int]:
    identity.forgot_password(UnitOfWork(), body.email, _client())
    return StatusOut(status="reset_requested"), 202


@app.post(
    "/auth/password/reset",
    summary="Set a new password with the mailed token; signs out everywhere",
    description=(
        "Revokes every session and every API key, and removes a second factor enrolled after the last completed"
        " password sign-in. Mails a security notice."
    ),
)
def reset_password(body: ResetIn) -> StatusOut:
    identity.reset_password(UnitOfWork(), body.token, body.password)
    return StatusOut(status="password_reset")


@app.post(
    "/auth/lock",
    summary="Lock the account with the link of a security notice",
    description=(
        "Revokes every session and API key, turns off a second factor added since the notice, and stops the"
        " password from working; a password reset link is mailed to recover the account."
    ),
)
def lock_account(body: TokenIn) -> StatusOut:
    identity.lock_account(UnitOfWork(), body.token)
    return StatusOut(status="locked")


@app.get(
    "/auth/oauth/<provider>/authorize",
    summary="Start sign-in with Google or GitHub (PKCE + state)",
    responses={
        200: {"description": "where to send the browser", "content": {JSON: {"model": AuthorizeOut}}},
        302: {"description": "with ?redirect=true: a redirect to the provider"},
    },
)
def oauth_authorize(provider: Literal["google", "github"], redirect: Annotated[bool, Query()] = False) -> Response[str]:
    start = oauth.start_authorization(UnitOfWork(), provider)
    if redirect:
        return Response(status_code=302, headers={"Location": start.authorization_url}, body="")
    out = AuthorizeOut(authorization_url=start.authorization_url, state=start.state, expires_in=start.expires_in)
    return Response(status_code=200, content_type=JSON, body=out.model_dump_json())


@app.get("/auth/oauth/<provider>/callback", summary="Finish OAuth sign-in: link or create the account")
def oauth_callback(
    provider: Literal["google", "github"],
    code: Annotated[str, Query(min_length=1, max_length=2048)],
    state: Annotated[str, Query(min_length=1, max_length=512)],
) -> TokensOut:
    return TokensOut.of(oauth.complete_authorization(UnitOfWork(), provider, code, state, _client()))


# --- signed in ----------------------------------------------------------------------------------------------
@app.post("/auth/logout", summary="End the current session")
def logout() -> Response[str]:
    principal = current_principal(app)
    identity.logout(UnitOfWork(), principal.user_id, principal.session_id)
    return _no_content()


@app.post(
    "/auth/reauthenticate",
    summary="Prove the password (and second factor) again: a fresh step-up window",
    description=(
        "Credential changes (API keys, 2FA, password, revoking other sessions) need it when the sign-in is older"
        " than STEP_UP_WINDOW_SECONDS. Answers a new access token of the same session; use it for the change."
    ),
    responses=documented_errors({401: "`invalid_credentials` or `invalid_code` (with mailed 2FA: a code was sent)"}),
)
def reauthenticate(body: ReauthenticateIn) -> ReauthenticatedOut:
    fresh = identity.reauthenticate(UnitOfWork(), _caller(), body.password, body.code, _client().ip)
    return ReauthenticatedOut(
        access_token=fresh.access_token,
        expires_in=fresh.expires_in,
        auth_time=fresh.auth_time,
        step_up_until=fresh.step_up_until,
    )


@app.post(
    "/auth/password/change",
    summary="Change the password (other sessions and every API key are revoked)",
    description="This session stays signed in." + STEP_UP,
    responses=documented_errors(STEP_UP_ERRORS),
)
def change_password(body: ChangePasswordIn) -> StatusOut:
    identity.change_password(UnitOfWork(), _caller(), body.current_password, body.new_password, _client().ip)
    return StatusOut(status="password_changed")


@app.get("/auth/me", summary="The caller's profile")
def me() -> ProfileOut:
    return ProfileOut.of(identity.get_profile(UnitOfWork(), current_principal(app).user_id))


@app.patch("/auth/me", summary="Change the caller's profile")
def update_me(body: ProfilePatch) -> ProfileOut:
    changes: dict[str, Any] = body.model_dump(exclude_unset=True)
    for required in ("timezone", "language"):
        if required in changes and changes[required] is None:
            del changes[required]
    return ProfileOut.of(identity.update_profile(UnitOfWork(), current_principal(app).user_id, changes))


@app.post(
    "/auth/two-factor/email/enable",
    summary="Turn on 2FA by mailed code",
    description=STEP_UP.strip(),
    responses=documented_errors(STEP_UP_ERRORS),
)
def enable_email_two_factor() -> TwoFactorStateOut:
    identity.enable_email_two_factor(UnitOfWork(), _caller())
    return TwoFactorStateOut(two_factor_enabled=True, method="email")


@app.post(
    "/auth/two-factor/totp/setup",
    summary="Start TOTP enrolment: a secret and its otpauth URI",
    description="The pending secret is stored sealed (AES-GCM)." + STEP_UP.split(" Mails")[0],
    responses=documented_errors(STEP_UP_ERRORS),
)
def setup_totp() -> TotpSetupOut:
    setup = identity.setup_totp(UnitOfWork(), _caller())
    return TotpSetupOut(secret=setup.secret, otpauth_uri=setup.otpauth_uri)


@app.post(
    "/auth/two-factor/totp/enable",
    summary="Finish TOTP enrolment with a valid code; answers ten recovery codes",
    description="Each recovery code works once in place of a TOTP code at sign-in." + STEP_UP,
    responses=documented_errors(STEP_UP_ERRORS),
)
def enable_totp(body: CodeIn) -> TotpEnabledOut:
    codes = identity.enable_totp(UnitOfWork(), _caller(), body.code)
    return TotpEnabledOut(two_factor_enabled=True, method="totp", recovery_codes=codes)


@app.post(
    "/auth/two-factor/recovery-codes",
    summary="Ten new one-time recovery codes for TOTP sign-in (the earlier ones stop working)",
    description=STEP_UP.strip(),
    responses=documented_errors(STEP_UP_ERRORS),
)
def regenerate_recovery_codes() -> RecoveryCodesOut:
    return RecoveryCodesOut(recovery_codes=identity.regenerate_recovery_codes(UnitOfWork(), _caller()))


@app.post(
    "/auth/two-factor/disable",
    summary="Turn 2FA off (needs the password)",
    description=STEP_UP.strip(),
    responses=documented_errors(STEP_UP_ERRORS),
)
def disable_two_factor(body: PasswordIn) -> TwoFactorStateOut:
    identity.disable_two_factor(UnitOfWork(), _caller(), body.password, _client().ip)
    return TwoFactorStateOut(two_factor_enabled=False, method=None)


@app.get("/auth/sessions", summary="The caller's live sessions")
def list_sessions(cursor: Cursor = None, limit: Limit = 20) -> SessionsOut:
    principal = current_principal(app)
    page = identity.list_sessions(UnitOfWork(), principal.user_id, principal.session_id, cursor, limit)
    return SessionsOut(items=[SessionOut.of(s) for s in page.items], next_cursor=page.next_cursor)


@app.delete(
    "/auth/sessions/<session_id>",
    summary="Revoke one of the caller's sessions",
    description="Revoking the current session is a logout; revoking another one is a credential change."
    + STEP_UP.split(" Mails")[0],
    responses=documented_errors(STEP_UP_ERRORS, success=204),
)
def revoke_session(session_id: uuid.UUID) -> Response[str]:
    identity.revoke_session(UnitOfWork(), _caller(), session_id)
    return _no_content()


@app.post(
    "/auth/api-keys",
    summary="Create a scoped API key (the secret is shown once)",
    description=(
        "A key holds only its scopes (" + ", ".join(SCOPES) + "; default"
        " profile:read + credits:read) and never reaches /auth/* credential routes; every route declares the"
        " scope it needs (tollgate/auth/scopes.py)." + STEP_UP
    ),
    responses=documented_errors(STEP_UP_ERRORS, success=201),
)
def create_api_key(body: ApiKeyIn) -> tuple[NewApiKeyOut, int]:
    expires_at = body.expires_at
    if expires_at is None and body.expires_in_days:
        expires_at = datetime.now(UTC) + timedelta(days=body.expires_in_days)
    created = identity.create_api_key(
        UnitOfWork(), _caller(), body.name, scopes=list(body.scopes) if body.scopes else None, expires_at=expires_at
    )
    return NewApiKeyOut(key=created.key, **ApiKeyOut.of(created.view).model_dump()), 201


@app.get("/auth/api-keys", summary="The caller's API keys (never their secrets)")
def list_api_keys(cursor: Cursor = None, limit: Limit = 20) -> ApiKeysOut:
    page = identity.list_api_keys(UnitOfWork(), current_principal(app).user_id, cursor, limit)
    return ApiKeysOut(items=[ApiKeyOut.of(k) for k in page.items], next_cursor=page.next_cursor)


@app.delete("/auth/api-keys/<key_id>", summary="Revoke an API key")
def revoke_api_key(key_id: uuid.UUID) -> Response[str]:
    identity.revoke_api_key(UnitOfWork(), current_principal(app).user_id, key_id)
    return _no_content()


# The event and the response carry passwords, tokens and codes: neither is logged nor traced, whatever the
# environment says (log_event=False, capture_response=False).
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
