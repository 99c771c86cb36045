"""Thin adapters over the providers' HTTP APIs. Services call them through these small interfaces, so tests
can run them against local stand-ins that speak the same wire format (STRIPE_API_BASE, LEMONSQUEEZY_API_BASE).

Stripe goes through the official `stripe` library; Lemon Squeezy's JSON:API through stdlib `urllib`. Both are
imported lazily: only the calls that reach a provider pay for them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from tollgate.config import Settings, get_settings
from tollgate.errors import IdempotencyConflict, PaymentProviderError, ProviderNotConfigured

# The one Stripe API version Tollgate speaks: its API calls send it, and the webhook endpoint must be set to it
# (README). The event handlers also read the 2020-2024 shapes, so events of an older endpoint still apply.
STRIPE_API_VERSION = "2026-10-28.endive"


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    user_id: str
    email: str
    kind: str  # pack | plan
    item_id: str
    name: str
    success_url: str
    cancel_url: str
    # Stripe: a price id, or else an inline one-time price from amount/currency. Lemon Squeezy: the variant id.
    price_ref: str | None
    unit_amount_minor: int
    currency: str
    customer_id: str | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    id: str
    url: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a provider list call: its items (plain dicts, newest first) and whether more follow."""

    items: list[dict[str, Any]]
    has_more: bool


# PaymentIntent statuses that mean the card did not pay and will not without the customer.
REFUSED_STATUSES = frozenset({"requires_payment_method", "requires_action", "canceled"})


@dataclass(frozen=True, slots=True)
class OffSessionCharge:
    """A PaymentIntent confirmed at once with a saved card, the customer absent (`off_session`)."""

    customer_id: str
    payment_method_id: str
    amount_minor: int
    currency: str
    metadata: dict[str, str]
    idempotency_key: str  # one per purchase: Stripe answers a repeat with the first result, never a second charge


@dataclass(frozen=True, slots=True)
class OffSessionResult:
    """What Stripe answered: the PaymentIntent's id and status, or the card's refusal (`failure_code`: Stripe's
    error code, e.g. `card_declined`, `authentication_required`; `decline_code` when the issuer gave one)."""

    payment_intent_id: str | None
    status: str  # the PaymentIntent's status (succeeded, processing, requires_payment_method, ...)
    failure_code: str | None = None
    decline_code: str | None = None
    failure_message: str | None = None

    @property
    def refused(self) -> bool:
        return self.failure_code is not None or self.status in REFUSED_STATUSES


class StripeGateway(Protocol):
    def create_checkout(self, request: CheckoutRequest) -> CheckoutSession: ...

    def create_portal(self, customer_id: str, return_url: str) -> str: ...

    def checkout_price_ids(self, session_id: str) -> list[str]: ...

    def charge_off_session(self, request: OffSessionCharge) -> OffSessionResult: ...

    def payment_intent_status(self, payment_intent_id: str) -> OffSessionResult: ...

    def create_refund(self, request: RefundRequest) -> RefundAnswer: ...

    def list_charge_refunds(self, charge_id: str) -> list[dict[str, Any]]: ...

    # Catalogue (issue 13): Stripe products and prices, answered as Stripe's objects (plain dicts).
    def create_product(
        self, *, name: str, description: str | None, images: list[str], metadata: dict[str, str], idempotency_key: str
    ) -> dict[str, Any]: ...

    def update_product(self, product_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    def create_price(
        self,
        *,
        product_id: str,
        unit_amount_minor: int,
        currency: str,
        interval: str | None,
        interval_count: int | None,
        nickname: str | None,
        active: bool,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]: ...

    def update_price(self, price_id: str, fields: dict[str, Any]) -> dict[str, Any]: ...

    # Cart checkout (issue 13): a Checkout Session for an order.
    def create_order_checkout(self, request: OrderCheckoutRequest) -> CheckoutSession: ...

    # Order refunds (issue 13): one refund as Stripe holds it now (the refund sweep of ProviderReconciliation).
    def retrieve_refund(self, refund_id: str) -> dict[str, Any]: ...


class LemonSqueezyGateway(Protocol):
    def create_checkout(self, request: CheckoutRequest) -> CheckoutSession: ...


def checkout_metadata(request: CheckoutRequest) -> dict[str, str]:
    """What every checkout carries back in its webhooks (API.md): the buyer and the item."""
    return {"user_id": request.user_id, "kind": request.kind, "item_id": request.item_id}


class StripeAdapter:
    def __init__(self, settings: Settings) -> None:
        if settings.stripe_secret_key is None or not settings.stripe_secret_key.get_secret_value():
            raise ProviderNotConfigured("Stripe is not configured (STRIPE_SECRET_KEY)", details={"provider": "stripe"})
        import stripe

        stripe.api_version = STRIPE_API_VERSION
        self._stripe = stripe
        self._client = stripe.StripeClient(
            settings.stripe_secret_key.get_secret_value(),
            stripe_version=STRIPE_API_VERSION,
            base_addresses={"api": settings.stripe_api_base.rstrip("/")},
            max_network_retries=1,
            http_client=stripe.RequestsClient(timeout=settings.provider_timeout_seconds),
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except self._stripe.IdempotencyError as exc:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used for a different checkout", details={"provider": "stripe"}
            ) from exc
        except self._stripe.StripeError as exc:
            raise PaymentProviderError(
                f"Stripe refused to {what}",
                details={"provider": "stripe", "status": getattr(exc, "http_status", None), "error": exc.user_message},
            ) from exc

    def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        metadata = checkout_metadata(request)
        if request.price_ref:
            line_item: dict[str, Any] = {"price": request.price_ref, "quantity": 1}
        else:
            line_item = {
                "quantity": 1,
                "price_data": {
                    "currency": request.currency,
                    "unit_amount": request.unit_amount_minor,
                    "product_data": {"name": request.name},
                },
            }
        params: dict[str, Any] = {
            "mode": "subscription" if request.kind == "plan" else "payment",
            "line_items": [line_item],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": request.user_id,
            "metadata": metadata,
        }
        if request.kind == "plan":
            params["subscription_data"] = {"metadata": metadata}
        else:
            params["payment_intent_data"] = {"metadata": metadata}
        if request.customer_id:
            params["customer"] = request.customer_id
        else:
            params["customer_email"] = request.email
            if request.kind == "pack":
                params["customer_creation"] = "always"
        options: dict[str, Any] = {}
        if request.idempotency_key:
            options["idempotency_key"] = request.idempotency_key
        session = self._call(
            "create a checkout session", self._client.v1.checkout.sessions.create, params=params, options=options
        )
        return CheckoutSession(id=str(session["id"]), url=str(session["url"]))

    def create_portal(self, customer_id: str, return_url: str) -> str:
        portal = self._call(
            "open a billing portal",
            self._client.v1.billing_portal.sessions.create,
            params={"customer": customer_id, "return_url": return_url},
        )
        return str(portal["url"])

    def checkout_price_ids(self, session_id: str) -> list[str]:
        items = self._call(
            "list the session's line items", self._client.v1.checkout.sessions.line_items.list, session_id
        )
        data = items.to_dict().get("data") or []
        return [str(item["price"]["id"]) for item in data if isinstance(item.get("price"), dict)]

    def charge_off_session(self, request: OffSessionCharge) -> OffSessionResult:
        """`POST /v1/payment_intents` with `off_session=true, confirm=true`. A card error (HTTP 402: declined,
        needs authentication) is an answer, not a failure; anything else raises PaymentProviderError so the caller
        retries with the same idempotency key."""
        params: dict[str, Any] = {
            "amount": request.amount_minor,
            "currency": request.currency,
            "customer": request.customer_id,
            "payment_method": request.payment_method_id,
            "off_session": True,
            "confirm": True,
            "metadata": request.metadata,
        }
        options: dict[str, Any] = {"idempotency_key": request.idempotency_key}
        create: Any = self._client.v1.payment_intents.create
        try:
            intent = create(params=params, options=options)
        except self._stripe.CardError as exc:
            error = getattr(exc, "error", None)
            refused_intent: Any = getattr(error, "payment_intent", None)
            refused: dict[str, Any] = refused_intent.to_dict() if refused_intent is not None else {}
            return OffSessionResult(
                payment_intent_id=str(refused["id"]) if refused.get("id") else None,
                status=str(refused.get("status") or "requires_payment_method"),
                failure_code=str(exc.code or "card_declined"),
                decline_code=getattr(error, "decline_code", None),
                failure_message=exc.user_message,
            )
        except self._stripe.IdempotencyError as exc:
            raise IdempotencyConflict(
                "this top-up's idempotency key was already used with other parameters", details={"provider": "stripe"}
            ) from exc
        except self._stripe.StripeError as exc:
            raise PaymentProviderError(
                "Stripe refused to create the payment",
                details={"provider": "stripe", "status": getattr(exc, "http_status", None), "error": exc.user_message},
            ) from exc
        return OffSessionResult(payment_intent_id=str(intent["id"]), status=str(intent["status"]))

    def payment_intent_status(self, payment_intent_id: str) -> OffSessionResult:
        """`GET /v1/payment_intents/:id`: where a PaymentIntent stands now (its last error's code, if any)."""
        found = self._call("read the payment", self._client.v1.payment_intents.retrieve, payment_intent_id).to_dict()
        error = found.get("last_payment_error") if isinstance(found.get("last_payment_error"), dict) else {}
        status = str(found.get("status") or "")
        return OffSessionResult(
            payment_intent_id=str(found["id"]),
            status=status,
            failure_code=str(error["code"]) if status in REFUSED_STATUSES and error.get("code") else None,
            decline_code=error.get("decline_code"),
            failure_message=error.get("message"),
        )

    def failed_events(self, created_gte: int, starting_after: str | None, limit: int) -> Page:
        """`GET /v1/events?delivery_success=false&created[gte]=...`: events (newest first) whose delivery to
        at least one webhook endpoint failed; `starting_after` pages on to older ones."""
        params: dict[str, Any] = {"delivery_success": False, "created": {"gte": created_gte}, "limit": limit}
        if starting_after:
            params["starting_after"] = starting_after
        listed = self._call("list undelivered events", self._client.v1.events.list, params=params)
        # The events exactly as Stripe sent them: the library's objects turn `*_decimal` strings into Decimals.
        response = getattr(listed, "last_response", None)
        body = json.loads(response.body) if response is not None and response.body else listed.to_dict()
        data = body.get("data") or []
        return Page(items=[item for item in data if isinstance(item, dict)], has_more=bool(body.get("has_more")))

    def create_refund(self, request: RefundRequest) -> RefundAnswer:
        """`POST /v1/refunds` for a payment intent (or a charge). Stripe's 4xx answers (other than 409, a request
        still in flight, and 429) created nothing: they come back as a refusal. Anything else raises
        PaymentProviderError: the refund may exist, so the caller keeps its reservation and retries with the
        same idempotency key."""
        params: dict[str, Any] = {"amount": request.amount_minor, "metadata": request.metadata}
        if request.payment_intent_id:
            params["payment_intent"] = request.payment_intent_id
        else:
            params["charge"] = request.charge_id
        if request.reason:
            params["reason"] = request.reason
        options: dict[str, Any] = {"idempotency_key": request.idempotency_key}
        create: Any = self._client.v1.refunds.create
        try:
            refund = create(params=params, options=options).to_dict()
        except self._stripe.StripeError as exc:
            status = getattr(exc, "http_status", None)
            idempotent = isinstance(exc, self._stripe.IdempotencyError)
            if isinstance(status, int) and 400 <= status < 500 and status not in (409, 429) and not idempotent:
                return RefundAnswer(
                    refund_id=None, status="failed", refused_code=str(exc.code or "refused"), message=exc.user_message
                )
            raise PaymentProviderError(
                "Stripe did not answer the refund",
                details={"provider": "stripe", "status": status, "error": exc.user_message},
            ) from exc
        return RefundAnswer(refund_id=str(refund["id"]), status=str(refund.get("status") or "pending"), raw=refund)

    def list_charge_refunds(self, charge_id: str) -> list[dict[str, Any]]:
        """`GET /v1/refunds?charge=...`: a charge's refunds (the current API no longer embeds them in
        `charge.refunded`), newest first, up to 100."""
        listed = self._call(
            "list the charge's refunds", self._client.v1.refunds.list, params={"charge": charge_id, "limit": 100}
        )
        data = listed.to_dict().get("data") or []
        return [item for item in data if isinstance(item, dict)]

    # --- catalogue (issue 13) ---------------------------------------------------------------------------------
    def create_product(
        self, *, name: str, description: str | None, images: list[str], metadata: dict[str, str], idempotency_key: str
    ) -> dict[str, Any]:
        """`POST /v1/products`; the key (from Tollgate's product id) makes a repeat answer the same product."""
        params: dict[str, Any] = {"name": name, "metadata": metadata}
        if description:
            params["description"] = description
        if images:
            params["images"] = images[:8]  # Stripe keeps at most eight
        created = self._call(
            "create the product",
            self._client.v1.products.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
        return dict(created.to_dict())

    def update_product(self, product_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/products/:id` with `fields` (name, description, active, metadata): setting is idempotent."""
        updated = self._call("update the product", self._client.v1.products.update, product_id, params=fields)
        return dict(updated.to_dict())

    def create_price(
        self,
        *,
        product_id: str,
        unit_amount_minor: int,
        currency: str,
        interval: str | None,
        interval_count: int | None,
        nickname: str | None,
        active: bool,
        metadata: dict[str, str],
        idempotency_key: str,
    ) -> dict[str, Any]:
        """`POST /v1/prices` (one-time, or recurring with `interval`); Stripe prices are immutable in amount."""
        params: dict[str, Any] = {
            "product": product_id,
            "unit_amount": unit_amount_minor,
            "currency": currency,
            "active": active,
            "metadata": metadata,
        }
        if interval:
            params["recurring"] = {"interval": interval, "interval_count": interval_count or 1}
        if nickname:
            params["nickname"] = nickname
        created = self._call(
            "create the price",
            self._client.v1.prices.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )
        return dict(created.to_dict())

    def update_price(self, price_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """`POST /v1/prices/:id` with what Stripe lets change in place (active, nickname, metadata)."""
        updated = self._call("update the price", self._client.v1.prices.update, price_id, params=fields)
        return dict(updated.to_dict())

    def create_order_checkout(self, request: OrderCheckoutRequest) -> CheckoutSession:
        """`POST /v1/checkout/sessions` for a cart order: one line per order item at Tollgate's amounts (discount
        and tax included), the order in `metadata` (also on the payment intent / subscription), expiring at
        `expires_at`; the idempotency key is derived from the order id, so a retry never opens a second session."""
        metadata = {"tollgate_order_id": request.order_id, "user_id": request.user_id, "kind": "order"}
        lines: list[dict[str, Any]] = []
        for line in request.lines:
            price_data: dict[str, Any] = {
                "currency": request.currency,
                "unit_amount": line.unit_amount_minor,
                "product_data": {"name": line.name},
            }
            if line.interval:
                price_data["recurring"] = {"interval": line.interval, "interval_count": line.interval_count or 1}
            lines.append({"quantity": line.quantity, "price_data": price_data})
        params: dict[str, Any] = {
            "mode": request.mode,
            "line_items": lines,
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": request.user_id,
            "metadata": metadata,
            "expires_at": request.expires_at,
        }
        if request.mode == "subscription":
            params["subscription_data"] = {"metadata": metadata}
        else:
            params["payment_intent_data"] = {"metadata": metadata}
        if request.customer_id:
            params["customer"] = request.customer_id
        else:
            params["customer_email"] = request.email
            if request.mode == "payment":
                params["customer_creation"] = "always"
        session = self._call(
            "create a checkout session",
            self._client.v1.checkout.sessions.create,
            params=params,
            options={"idempotency_key": f"order-checkout:{request.order_id}"},
        )
        return CheckoutSession(id=str(session["id"]), url=str(session["url"]))

    # --- order refunds (issue 13) -----------------------------------------------------------------------------
    def retrieve_refund(self, refund_id: str) -> dict[str, Any]:
        """`GET /v1/refunds/{id}`: the refund as Stripe holds it now (status, failure_reason, metadata)."""
        found = self._call("read the refund", self._client.v1.refunds.retrieve, refund_id)
        return dict(found.to_dict())


class LemonSqueezyAdapter:
    def __init__(self, settings: Settings) -> None:
        key = settings.lemonsqueezy_api_key.get_secret_value() if settings.lemonsqueezy_api_key else ""
        if not key or not settings.lemonsqueezy_store_id:
            raise ProviderNotConfigured(
                "Lemon Squeezy is not configured (LEMONSQUEEZY_API_KEY, LEMONSQUEEZY_STORE_ID)",
                details={"provider": "lemonsqueezy"},
            )
        self._key = key
        self._store_id = settings.lemonsqueezy_store_id
        self._base = settings.lemonsqueezy_api_base.rstrip("/")
        self._timeout = settings.provider_timeout_seconds
        self._test_mode = not settings.payments_live_mode

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(  # noqa: S310 - the base URL is configuration, https in production
            self._base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={
                "Accept": "application/vnd.api+json",
                "Content-Type": "application/vnd.api+json",
                "Authorization": f"Bearer {self._key}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise PaymentProviderError(
                "Lemon Squeezy refused the request",
                details={"provider": "lemonsqueezy", "status": exc.code, "error": detail},
            ) from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise PaymentProviderError(
                "Lemon Squeezy cannot be reached", details={"provider": "lemonsqueezy", "error": type(exc).__name__}
            ) from exc

    def _get(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        import urllib.error
        import urllib.parse
        import urllib.request

        request = urllib.request.Request(  # noqa: S310 - the base URL is configuration, https in production
            f"{self._base}{path}?{urllib.parse.urlencode(query)}",
            method="GET",
            headers={
                "Accept": "application/vnd.api+json",
                "Content-Type": "application/vnd.api+json",
                "Authorization": f"Bearer {self._key}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            raise PaymentProviderError(
                "Lemon Squeezy refused the request",
                details={"provider": "lemonsqueezy", "status": exc.code, "error": detail},
            ) from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise PaymentProviderError(
                "Lemon Squeezy cannot be reached", details={"provider": "lemonsqueezy", "error": type(exc).__name__}
            ) from exc
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise PaymentProviderError(
                "Lemon Squeezy answered without a list of resources", details={"provider": "lemonsqueezy"}
            )
        return answer

    def list_resources(self, resource: str, page: int, size: int) -> Page:
        """`GET /v1/{orders|subscriptions|subscription-invoices}?filter[store_id]=...` (JSON:API, newest first by
        `created_at`),
        page `page` (from 1) of `size` items."""
        if resource not in {"orders", "subscriptions", "subscription-invoices"}:
            raise ValueError(f"unknown Lemon Squeezy resource {resource!r}")
        answer = self._get(
            f"/v1/{resource}",
            {"filter[store_id]": str(self._store_id), "page[number]": str(page), "page[size]": str(size)},
        )
        items = [item for item in answer["data"] if isinstance(item, dict)]
        meta = ((answer.get("meta") or {}).get("page")) or {}
        last = meta.get("lastPage")
        has_more = page < int(last) if isinstance(last, int | str) and str(last).isdigit() else len(items) >= size
        return Page(items=items, has_more=has_more)

    def create_checkout(self, request: CheckoutRequest) -> CheckoutSession:
        if not request.price_ref:
            raise ProviderNotConfigured(
                "this item has no Lemon Squeezy variant",
                details={"provider": "lemonsqueezy", "item_id": request.item_id},
            )
        body = {
            "data": {
                "type": "checkouts",
                "attributes": {
                    "checkout_data": {"email": request.email, "custom": checkout_metadata(request)},
                    "product_options": {"redirect_url": request.success_url},
                    "test_mode": self._test_mode,
                },
                "relationships": {
                    "store": {"data": {"type": "stores", "id": str(self._store_id)}},
                    "variant": {"data": {"type": "variants", "id": str(request.price_ref)}},
                },
            }
        }
        answer = self._post("/v1/checkouts", body)
        try:
            data = answer["data"]
            return CheckoutSession(id=str(data["id"]), url=str(data["attributes"]["url"]))
        except (KeyError, TypeError) as exc:
            raise PaymentProviderError(
                "Lemon Squeezy answered without a checkout URL", details={"provider": "lemonsqueezy"}
            ) from exc


@lru_cache(maxsize=1)
def _stripe_for(key: str, base: str) -> StripeAdapter:
    return StripeAdapter(get_settings())


def stripe_gateway() -> StripeGateway:
    settings = get_settings()
    key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else ""
    return _stripe_for(key, settings.stripe_api_base)


def stripe_api_configured() -> bool:
    settings = get_settings()
    return bool(settings.stripe_secret_key and settings.stripe_secret_key.get_secret_value())


def lemonsqueezy_gateway() -> LemonSqueezyGateway:
    return LemonSqueezyAdapter(get_settings())


def stripe_events_source() -> StripeAdapter:
    """The Stripe adapter for reconciliation's list calls (ProviderNotConfigured without a secret key)."""
    return StripeAdapter(get_settings())


def lemonsqueezy_source() -> LemonSqueezyAdapter:
    """The Lemon Squeezy adapter for reconciliation's list calls (ProviderNotConfigured without key/store)."""
    return LemonSqueezyAdapter(get_settings())


@dataclass(frozen=True, slots=True)
class RefundRequest:
    """A refund of an order's payment: `amount_minor` of its payment intent (or charge), with Stripe's reason
    where Stripe has one, the Tollgate refund id in `metadata`, and an idempotency key derived from it."""

    payment_intent_id: str | None
    charge_id: str | None
    amount_minor: int
    reason: str | None
    metadata: dict[str, str]
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class RefundAnswer:
    """Stripe's refund (`refund_id`, its status: pending, succeeded, failed, canceled, requires_action), or its
    refusal (`refused_code`; nothing was created)."""

    refund_id: str | None
    status: str
    refused_code: str | None = None
    message: str | None = None
    raw: dict[str, Any] | None = None

    @property
    def refused(self) -> bool:
        return self.refused_code is not None


@dataclass(frozen=True, slots=True)
class OrderCheckoutLine:
    """One Checkout line of an order item: `quantity` x `unit_amount_minor` is the item's total to pay."""

    name: str
    quantity: int
    unit_amount_minor: int
    interval: str | None = None  # recurring (subscription mode): month, year, ...
    interval_count: int | None = None


@dataclass(frozen=True, slots=True)
class OrderCheckoutRequest:
    order_id: str
    user_id: str
    email: str
    mode: str  # payment | subscription
    currency: str
    lines: tuple[OrderCheckoutLine, ...]
    success_url: str
    cancel_url: str
    expires_at: int  # unix seconds
    customer_id: str | None = None
