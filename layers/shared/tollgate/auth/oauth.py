"""OAuth 2.0 providers (Google, GitHub): authorization URL with PKCE (S256) and state, code exchange, profile.

Endpoints come from settings, so tests point them at a local stand-in server speaking the same wire format.
HTTP goes through the standard library (no SDK), with timeouts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from tollgate.auth.secrets import pkce_challenge
from tollgate.config import Settings
from tollgate.errors import DependencyUnavailable, NotFound, OAuthFailed

Provider = Literal["google", "github"]
PROVIDERS: tuple[Provider, ...] = ("google", "github")
TIMEOUT_SECONDS = 10
USER_AGENT = "tollgate-oauth"


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: Provider
    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    scope: str


@dataclass(frozen=True, slots=True)
class ProviderTokens:
    access_token: str
    token_type: str | None
    scope: str | None
    expires_in: int | None


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    account_id: str
    email: str | None
    email_verified: bool
    name: str | None
    image: str | None


def provider_config(settings: Settings, provider: str) -> ProviderConfig:
    name: Provider
    if provider == "google":
        name = "google"
        client_id, secret = settings.google_client_id, settings.google_client_secret
        authorize_url, token_url, scope = (
            settings.google_authorize_url,
            settings.google_token_url,
            "openid email profile",
        )
    elif provider == "github":
        name = "github"
        client_id, secret = settings.github_client_id, settings.github_client_secret
        authorize_url, token_url, scope = (
            settings.github_authorize_url,
            settings.github_token_url,
            "read:user user:email",
        )
    else:
        raise NotFound(f"unknown OAuth provider {provider!r}")
    if not client_id or secret is None:
        raise NotFound(f"sign-in with {provider} is not configured here")
    return ProviderConfig(name, client_id, secret.get_secret_value(), authorize_url, token_url, scope)


def redirect_uri(settings: Settings, provider: str) -> str:
    template = settings.oauth_redirect_url or f"{settings.app_url.rstrip('/')}/oauth/{{provider}}/callback"
    return template.replace("{provider}", provider)


def authorization_url(config: ProviderConfig, state: str, verifier: str, redirect: str) -> str:
    params = {
        "response_type": "code",
        "client_id": config.client_id,
        "redirect_uri": redirect,
        "scope": config.scope,
        "state": state,
        "code_challenge": pkce_challenge(verifier),
        "code_challenge_method": "S256",
    }
    separator = "&" if "?" in config.authorize_url else "?"
    return f"{config.authorize_url}{separator}{urlencode(params)}"


def _request(url: str, *, data: dict[str, str] | None = None, token: str | None = None) -> Any:
    headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
    body = None
    if data is not None:
        body = urlencode(data).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if not url.startswith(("https://", "http://")):
        raise OAuthFailed("the provider endpoint is not an http(s) URL")
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise OAuthFailed(f"the provider refused the request (HTTP {exc.code})") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DependencyUnavailable("the OAuth provider cannot be reached") from exc
    except ValueError:
        raise OAuthFailed("the provider answered something that is not JSON") from None


def exchange_code(config: ProviderConfig, code: str, verifier: str, redirect: str) -> ProviderTokens:
    answer = _request(
        config.token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect,
            "client_id": config.client_id,
            "client_secret": config.client_secret,
            "code_verifier": verifier,
        },
    )
    if not isinstance(answer, dict) or "error" in answer or not answer.get("access_token"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise OAuthFailed("the provider did not accept the authorization code", details={"provider_error": error})
    expires = answer.get("expires_in")
    return ProviderTokens(
        access_token=str(answer["access_token"]),
        token_type=str(answer.get("token_type")) if answer.get("token_type") else None,
        scope=str(answer.get("scope")) if answer.get("scope") else None,
        expires_in=int(expires) if isinstance(expires, int | str) and str(expires).isdigit() else None,
    )


def fetch_profile(settings: Settings, provider: str, access_token: str) -> ProviderProfile:
    if provider == "google":
        info = _request(settings.google_userinfo_url, token=access_token)
        if not isinstance(info, dict) or not info.get("sub"):
            raise OAuthFailed("the provider's profile has no subject")
        verified = info.get("email_verified")
        return ProviderProfile(
            account_id=str(info["sub"]),
            email=str(info["email"]) if info.get("email") else None,
            email_verified=verified is True or verified == "true",
            name=str(info["name"]) if info.get("name") else None,
            image=str(info["picture"]) if info.get("picture") else None,
        )
    base = settings.github_api_url.rstrip("/")
    user = _request(f"{base}/user", token=access_token)
    if not isinstance(user, dict) or user.get("id") is None:
        raise OAuthFailed("the provider's profile has no id")
    emails = _request(f"{base}/user/emails", token=access_token)
    email, verified = None, False
    if isinstance(emails, list):
        # The primary address if GitHub has verified it; otherwise any verified one.
        candidates = [e for e in emails if isinstance(e, dict) and e.get("verified") and e.get("email")]
        candidates.sort(key=lambda e: not e.get("primary"))
        if candidates:
            email, verified = str(candidates[0]["email"]), True
    return ProviderProfile(
        account_id=str(user["id"]),
        email=email,
        email_verified=verified,
        name=str(user.get("name") or user.get("login") or "") or None,
        image=str(user["avatar_url"]) if user.get("avatar_url") else None,
    )
