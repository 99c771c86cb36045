"""Webhook signature checks, one per provider, on the RAW request body. Each answers a `VerifiedEvent` or
raises `InvalidSignature` (400) before anything is stored.

- Stripe: `Stripe-Signature: t=...,v1=...` checked by the `stripe` library (HMAC-SHA256 of "{t}.{body}"; any
  of several v1 values may match, for secret rotation), timestamps older than the tolerance refused by the
  library, and timestamps more than the tolerance in the future refused here (the library does not).
- Lemon Squeezy: `X-Signature` = hex HMAC-SHA256 of the body with the signing secret, compared in constant time.
  There is no timestamp: replays are caught by the event store and by business keys (order/invoice ids).
  Lemon Squeezy sends no event id, so one is derived (see `lemonsqueezy_event_id`).
- Clerk: Svix headers (`svix-id`, `svix-timestamp`, `svix-signature`) checked by `standardwebhooks` (the same
  scheme: HMAC-SHA256 of "{id}.{timestamp}.{body}" with the base64 `whsec_` secret, +-5 minutes).
- Asaas: no signature; the webhook's authentication token comes back verbatim in `asaas-access-token`, compared in
  constant time with ASAAS_WEBHOOK_TOKEN. No timestamp either: replays are caught by the event store (the
  payload's `id`) and by business keys (payment ids, refund steps).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from tollgate.errors import ConfigurationError, InvalidSignature


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    provider: str
    event_id: str
    type: str
    livemode: bool | None  # None: the provider has no test/live distinction in the event (Clerk)
    payload: dict[str, Any]
    raw: str
    created_at: datetime | None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _object(raw: str) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise InvalidSignature("the body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidSignature("the body is not a JSON object")
    return payload


def _secrets(configured: str) -> list[str]:
    """A secret setting may name several secrets separated by commas (rotation: old and new both valid)."""
    return [part.strip() for part in configured.split(",") if part.strip()]


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignature("the body is not UTF-8") from None


def verify_stripe(raw: bytes, headers: Mapping[str, str], secret: str | None, *, tolerance: int = 300) -> VerifiedEvent:
    if not secret:
        raise ConfigurationError("STRIPE_WEBHOOK_SECRET is not set")
    header = _lower(headers).get("stripe-signature")
    if not header:
        raise InvalidSignature("the Stripe-Signature header is missing")
    body = _text(raw)
    import stripe  # lazily: only the webhook function pays for the SDK

    reason = ""
    for candidate in _secrets(secret):  # during a rotation both the old and the new secret are configured
        try:
            stripe.WebhookSignature.verify_header(body, header, candidate, tolerance)
            break
        except stripe.SignatureVerificationError as exc:
            reason = str(exc)[:200]
    else:
        raise InvalidSignature("the Stripe signature does not verify", details={"reason": reason})
    # The library refuses old timestamps only; a signature dated in the future is refused here.
    stamps = [part[2:] for part in header.split(",") if part.strip().startswith("t=")]
    try:
        stamp = int(stamps[0].strip())
    except (IndexError, ValueError):
        raise InvalidSignature("the Stripe signature has no timestamp") from None
    if stamp > time.time() + tolerance:
        raise InvalidSignature("the Stripe signature is dated in the future")
    payload = _object(body)
    event_id, event_type = payload.get("id"), payload.get("type")
    if not isinstance(event_id, str) or not isinstance(event_type, str) or not event_id:
        raise InvalidSignature("the event has no id or type")
    created = payload.get("created")
    return VerifiedEvent(
        provider="stripe",
        event_id=event_id,
        type=event_type,
        livemode=bool(payload.get("livemode")),
        payload=payload,
        raw=body,
        created_at=datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
    )


def lemonsqueezy_event_id(payload: Mapping[str, Any], raw: str) -> str:
    """A stable id for a Lemon Squeezy delivery, which carries none: sha256 over the event name, the resource
    type and id, and the resource's `updated_at` (retries of one event send the same values; two different
    events on one resource differ in name or in `updated_at`). Without `updated_at`, the raw body's hash."""
    meta = payload.get("meta") or {}
    data = payload.get("data") or {}
    attributes = data.get("attributes") or {} if isinstance(data, dict) else {}
    updated = attributes.get("updated_at") if isinstance(attributes, dict) else None
    if isinstance(data, dict) and data.get("id") is not None and updated:
        basis = f"{meta.get('event_name')}|{data.get('type')}|{data.get('id')}|{updated}"
    else:
        basis = "raw|" + raw
    return "ls_" + hashlib.sha256(basis.encode()).hexdigest()[:40]


def verify_lemonsqueezy(raw: bytes, headers: Mapping[str, str], secret: str | None) -> VerifiedEvent:
    if not secret:
        raise ConfigurationError("LEMONSQUEEZY_WEBHOOK_SECRET is not set")
    given = _lower(headers).get("x-signature", "").strip()
    if not given:
        raise InvalidSignature("the X-Signature header is missing")
    if not any(
        hmac.compare_digest(
            hmac.new(candidate.encode(), raw, hashlib.sha256).hexdigest().encode(), given.lower().encode()
        )
        for candidate in _secrets(secret)
    ):
        raise InvalidSignature("the Lemon Squeezy signature does not verify")
    body = _text(raw)
    payload = _object(body)
    meta = payload.get("meta")
    name = meta.get("event_name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise InvalidSignature("the event has no meta.event_name")
    data = payload.get("data")
    data = data if isinstance(data, dict) else {}
    attributes = data.get("attributes")
    attributes = attributes if isinstance(attributes, dict) else {}
    test_mode = meta.get("test_mode") if isinstance(meta, dict) and "test_mode" in meta else attributes.get("test_mode")
    return VerifiedEvent(
        provider="lemonsqueezy",
        event_id=lemonsqueezy_event_id(payload, body),
        type=name,
        livemode=None if test_mode is None else not bool(test_mode),
        payload=payload,
        raw=body,
        created_at=parse_time(attributes.get("updated_at")),
    )


def verify_clerk(raw: bytes, headers: Mapping[str, str], secret: str | None) -> VerifiedEvent:
    if not secret:
        raise ConfigurationError("CLERK_WEBHOOK_SECRET is not set")
    h = _lower(headers)
    svix_id, stamp, signature = h.get("svix-id"), h.get("svix-timestamp"), h.get("svix-signature")
    if not (svix_id and stamp and signature):
        raise InvalidSignature("the svix-id, svix-timestamp and svix-signature headers are required")
    body = _text(raw)
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    reason = ""
    for candidate in _secrets(secret):
        try:
            Webhook(candidate).verify(
                body,
                {"webhook-id": svix_id, "webhook-timestamp": stamp, "webhook-signature": signature},
                json_parse=False,
            )
            break
        except (WebhookVerificationError, ValueError, TypeError) as exc:  # malformed headers raise ValueError
            reason = str(exc)[:200]
    else:
        raise InvalidSignature("the Svix signature does not verify", details={"reason": reason})
    payload = _object(body)
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise InvalidSignature("the event has no type")
    created = payload.get("timestamp")
    return VerifiedEvent(
        provider="clerk",
        event_id=svix_id,
        type=event_type,
        livemode=None,
        payload=payload,
        raw=body,
        created_at=datetime.fromtimestamp(created / 1000, UTC) if isinstance(created, int) else None,
    )


# Asaas writes its times ("2024-06-12 16:45:03", "2024-06-12", "16/10/2024") in Brasília time, which has kept
# UTC-3 all year since Brazil dropped daylight saving in 2019.
BRASILIA = timezone(timedelta(hours=-3))


def asaas_time(value: Any) -> datetime | None:
    """An Asaas date or date-time (Brasília time, ISO or dd/MM/yyyy) as an aware UTC datetime."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    for pattern in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y"):
        try:
            return datetime.strptime(text, pattern).replace(tzinfo=BRASILIA).astimezone(UTC)
        except ValueError:
            continue
    return parse_time(text)


def verify_asaas(raw: bytes, headers: Mapping[str, str], token: str | None) -> VerifiedEvent:
    if not token:
        raise ConfigurationError("ASAAS_WEBHOOK_TOKEN is not set")
    given = _lower(headers).get("asaas-access-token", "")
    if not given:
        raise InvalidSignature("the asaas-access-token header is missing")
    matches = [hmac.compare_digest(candidate.encode(), given.encode()) for candidate in _secrets(token)]
    if not any(matches):
        raise InvalidSignature("the asaas-access-token header does not match")
    body = _text(raw)
    payload = _object(body)
    event_id, event_type = payload.get("id"), payload.get("event")
    if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str) or not event_type:
        raise InvalidSignature("the event has no id or event")
    return VerifiedEvent(
        provider="asaas",
        event_id=event_id,
        type=event_type,
        livemode=None,  # the event does not say; the API key (sandbox or production) decides where it came from
        payload=payload,
        raw=body,
        created_at=asaas_time(payload.get("dateCreated")),
    )


def parse_time(value: Any) -> datetime | None:
    """A provider time: epoch seconds (Stripe) or ISO 8601 (Lemon Squeezy), as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None
