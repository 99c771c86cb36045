"""Accounts and sign-in (API.md "Auth"): every route validates its input, calls one service, returns a model.

Nothing here logs a request body: passwords, tokens and codes never reach the logs.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from tollgate.db import UnitOfWork
from tollgate.http.api import JSON, create_app, current_principal
from tollgate.models import User
from tollgate.observability import logger, metrics, tracer
from tollgate.services import identity, oauth
from tollgate.services.identity import ApiKeyView, ClientInfo, SessionView, TokenPair, TwoFactorChallenge

app = create_app("auth")

Email = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]
# Length rules (8-128) belong to the policy; the edge only refuses absurd sizes before anything is hashed.
Password = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Secret = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=512)]
Code = Annotated[str, StringConstraints(strip_whitespace=True, min_length=6, max_length=6, pattern=r"^[0-9]{6}$")]
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


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- bodies -------------------------------------------------------------------------------------------------
class RegisterIn(StrictBody):
    email: Email
    password: Password
    name: Name | None = None
    username: Username | None = None


class TokenIn(StrictBody):
    token: Secret


class LoginIn(StrictBody):
    email: Email
    password: Password


class TwoFactorLoginIn(StrictBody):
    challenge_id: uuid.UUID
    code: Code


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
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


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
    def of(cls, user: User) -> ProfileOut:
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

    @classmethod
    def of(cls, view: ApiKeyView) -> ApiKeyOut:
        return cls(**{name: getattr(view, name) for name in cls.model_fields})


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="the secret; shown this once, never again")


class ApiKeysOut(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None


Cursor = Annotated[str | None, Query(max_length=64)]
Limit = Annotated[int, Query(ge=1, le=100)]


def _client() -> ClientInfo:
    http = app.current_event.request_context.http
    return ClientInfo(ip=http.source_ip or None, user_agent=http.user_agent or None)


def _no_content() -> Response[str]:
    return Response(status_code=204, body="")


# --- public: register, verify, sign in ----------------------------------------------------------------------
@app.post("/auth/register", summary="Create an account (the same answer whether or not the email is taken)")
def register(body: RegisterIn) -> tuple[StatusOut, int]:
    identity.register(UnitOfWork(), body.email, body.password, name=body.name, username=body.username, client=_client())
    return StatusOut(status="verification_sent"), 202


@app.post("/auth/verify-email", summary="Confirm an email address with the mailed token")
def verify_email(body: TokenIn) -> StatusOut:
    identity.verify_email(UnitOfWork(), body.token)
    return StatusOut(status="verified")


@app.post("/auth/login", summary="Sign in with email and password")
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


@app.post("/auth/password/reset", summary="Set a new password with the mailed token; signs out everywhere")
def reset_password(body: ResetIn) -> StatusOut:
    identity.reset_password(UnitOfWork(), body.token, body.password)
    return StatusOut(status="password_reset")


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


@app.post("/auth/password/change", summary="Change the password (other sessions are signed out)")
def change_password(body: ChangePasswordIn) -> StatusOut:
    principal = current_principal(app)
    identity.change_password(
        UnitOfWork(),
        principal.user_id,
        principal.session_id,
        body.current_password,
        body.new_password,
        _client().ip,
    )
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


@app.post("/auth/two-factor/email/enable", summary="Turn on 2FA by mailed code")
def enable_email_two_factor() -> TwoFactorStateOut:
    identity.enable_email_two_factor(UnitOfWork(), current_principal(app).user_id)
    return TwoFactorStateOut(two_factor_enabled=True, method="email")


@app.post("/auth/two-factor/totp/setup", summary="Start TOTP enrolment: a secret and its otpauth URI")
def setup_totp() -> TotpSetupOut:
    setup = identity.setup_totp(UnitOfWork(), current_principal(app).user_id)
    return TotpSetupOut(secret=setup.secret, otpauth_uri=setup.otpauth_uri)


@app.post("/auth/two-factor/totp/enable", summary="Finish TOTP enrolment with a valid code")
def enable_totp(body: CodeIn) -> TwoFactorStateOut:
    identity.enable_totp(UnitOfWork(), current_principal(app).user_id, body.code)
    return TwoFactorStateOut(two_factor_enabled=True, method="totp")


@app.post("/auth/two-factor/disable", summary="Turn 2FA off (needs the password)")
def disable_two_factor(body: PasswordIn) -> TwoFactorStateOut:
    identity.disable_two_factor(UnitOfWork(), current_principal(app).user_id, body.password, _client().ip)
    return TwoFactorStateOut(two_factor_enabled=False, method=None)


@app.get("/auth/sessions", summary="The caller's live sessions")
def list_sessions(cursor: Cursor = None, limit: Limit = 20) -> SessionsOut:
    principal = current_principal(app)
    page = identity.list_sessions(UnitOfWork(), principal.user_id, principal.session_id, cursor, limit)
    return SessionsOut(items=[SessionOut.of(s) for s in page.items], next_cursor=page.next_cursor)


@app.delete("/auth/sessions/<session_id>", summary="Revoke one of the caller's sessions")
def revoke_session(session_id: uuid.UUID) -> Response[str]:
    identity.revoke_session(UnitOfWork(), current_principal(app).user_id, session_id)
    return _no_content()


@app.post("/auth/api-keys", summary="Create an API key (the secret is shown once)")
def create_api_key(body: ApiKeyIn) -> tuple[NewApiKeyOut, int]:
    created = identity.create_api_key(UnitOfWork(), current_principal(app).user_id, body.name, body.expires_in_days)
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
