"""Local stand-ins for the Stripe, Lemon Squeezy and Asaas HTTP APIs (stdlib http.server on 127.0.0.1).

They speak the providers' wire formats for the calls Tollgate makes: Stripe's form-encoded requests with bearer
secret keys and JSON answers (`/v1/checkout/sessions`, `/v1/checkout/sessions/{id}/line_items`,
`/v1/billing_portal/sessions`, `GET /v1/events` for reconciliation, `POST /v1/payment_intents` off-session with
Stripe's test cards, `GET /v1/payment_intents/{id}`, Stripe-style error bodies), and Lemon Squeezy's
JSON:API (`POST /v1/checkouts`, `GET /v1/orders`, `/v1/subscriptions`, `/v1/subscription-invoices`,
with `application/vnd.api+json`), and Asaas's API v3 (`/v3/customers`, `/v3/payments`, `/v3/subscriptions`, JSON with
the `access_token` header, `{"errors": [{"code", "description"}]}` error bodies).
Every request is recorded for the tests to inspect.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)
    json: Any = None


def nested_form(form: dict[str, str], prefix: str) -> dict[str, str]:
    """`metadata[user_id]=...` style keys under `prefix`, flattened to their last bracket."""
    out = {}
    for key, value in form.items():
        if key.startswith(prefix + "["):
            out[key[len(prefix) + 1 : -1]] = value
    return out


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class StandIn:
    api_key: str

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.failures: list[int] = []  # answer the next requests with these HTTP statuses, one each
        # Called with each request as it arrives, before it is answered (e.g. to look at the caller's database).
        self.on_request: Callable[[Recorded], None] | None = None
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                owner.requests.append(rec)
                if owner.on_request is not None:
                    owner.on_request(rec)
                if owner.failures:
                    status = owner.failures.pop(0)
                    self._answer(status, owner.error_body(status, "injected failure"))
                    return
                status, answer, ctype = owner.route(rec)
                self._answer(status, answer, ctype)

            do_GET = _handle
            do_POST = _handle

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def error_body(self, status: int, message: str) -> Any:
        raise NotImplementedError

    def route(self, rec: Recorded) -> tuple[int, Any, str]:
        raise NotImplementedError


# A route of the Stripe stand-in kept in another module: (stand-in, request, path) -> an answer, or None when the
# request is not its own. Modules register theirs at import (StripeStandIn.register_routes).
StripeRoutes = Callable[["StripeStandIn", Recorded, str], "tuple[int, Any, str] | None"]


class StripeStandIn(StandIn):
    """Checkout sessions, their line items and billing-portal sessions, as api.stripe.com answers them."""

    extra_routes: ClassVar[list[StripeRoutes]] = []

    @classmethod
    def register_routes(cls, routes: StripeRoutes) -> StripeRoutes:
        """Add `routes` (once) to every stand-in: they see each request before the built-in routes."""
        if routes not in cls.extra_routes:
            cls.extra_routes.append(routes)
        return routes

    def __init__(self, api_key: str = "sk_test_standin") -> None:
        super().__init__()
        self.api_key = api_key
        self.sessions: dict[str, dict[str, Any]] = {}
        self.line_item_prices: dict[str, list[str]] = {}
        self.idempotent: dict[str, tuple[dict[str, str], dict[str, Any]]] = {}
        # Events the account produced; those in `undelivered` failed to reach a webhook endpoint.
        self.events: list[dict[str, Any]] = []
        self.undelivered: set[str] = set()
        # PaymentIntents made (one per distinct Idempotency-Key), and each key's first request and answer.
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.intent_keys: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = {}

    # Stripe's test payment methods: what confirming a PaymentIntent off-session with them answers.
    CARD_OUTCOMES: dict[str, tuple[str, str, str] | None] = {
        "pm_card_visa": None,
        "pm_card_mastercard": None,
        "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
        "pm_card_chargeDeclinedInsufficientFunds": (
            "card_declined", "insufficient_funds", "Your card has insufficient funds.",
        ),
        "pm_card_authenticationRequired": (
            "authentication_required", "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        ),
    }  # fmt: skip

    def _create_payment_intent(self, rec: Recorded) -> tuple[int, Any, str]:
        """`POST /v1/payment_intents` (confirm=true, off_session=true): succeeded at once for a good card, else
        HTTP 402 with a `card_error` whose `payment_intent` is left `requires_payment_method`. A repeated
        Idempotency-Key answers the first answer again (same status, same object); with other parameters, 400."""
        form, key = rec.form, rec.headers.get("idempotency-key")
        if key and key in self.intent_keys:
            first_form, status, answer = self.intent_keys[key]
            if first_form != form:
                message = (
                    "Keys for idempotent requests can only be used with the same parameters they were first used with."
                )
                return 400, {"error": {"type": "idempotency_error", "message": message}}, "application/json"
            return status, answer, "application/json"
        for required in ("amount", "currency"):
            if required not in form:
                return 400, self.error_body(400, f"Missing required param: {required}."), "application/json"
        method = form.get("payment_method")
        if form.get("confirm") == "true" and not method:
            return 400, self.error_body(400, "You must provide a payment_method to confirm."), "application/json"
        if method not in self.CARD_OUTCOMES:
            return 400, self.error_body(400, f"No such PaymentMethod: '{method}'"), "application/json"
        intent_id = f"pi_{uuid.uuid4().hex[:24]}"
        refusal = self.CARD_OUTCOMES[method]
        intent: dict[str, Any] = {
            "id": intent_id, "object": "payment_intent", "amount": int(form["amount"]),
            "amount_received": 0 if refusal else int(form["amount"]), "currency": form["currency"],
            "customer": form.get("customer"), "payment_method": method, "confirmation_method": "automatic",
            "capture_method": "automatic", "metadata": nested_form(form, "metadata"),
            "status": "requires_payment_method" if refusal else "succeeded",
            "latest_charge": f"ch_{uuid.uuid4().hex[:24]}", "last_payment_error": None, "livemode": False,
            "created": 1_764_633_600,
        }  # fmt: skip
        self.payment_intents[intent_id] = intent
        if refusal is None:
            status, answer = 200, intent
        else:
            code, decline, message = refusal
            error = {
                "type": "card_error", "code": code, "decline_code": decline, "message": message,
                "charge": intent["latest_charge"],
                "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
                "payment_method": {"id": method, "object": "payment_method", "type": "card"},
            }  # fmt: skip
            intent["last_payment_error"] = dict(error)
            status, answer = 402, {"error": {**error, "payment_intent": intent}}
        if key:
            self.intent_keys[key] = (form, status, answer)
        return status, answer, "application/json"

    def add_event(self, event: dict[str, Any], *, delivered: bool = False) -> dict[str, Any]:
        self.events.append(event)
        if not delivered:
            self.undelivered.add(str(event["id"]))
        return event

    def _list_events(self, query: dict[str, str]) -> tuple[int, Any, str]:
        """`GET /v1/events`: newest first, `delivery_success`, `created[gte]`, `limit`, `starting_after`."""
        events = sorted(self.events, key=lambda e: (e["created"], e["id"]), reverse=True)
        if query.get("delivery_success") == "false":
            events = [e for e in events if e["id"] in self.undelivered]
        elif query.get("delivery_success") == "true":
            events = [e for e in events if e["id"] not in self.undelivered]
        if "created[gte]" in query:
            events = [e for e in events if e["created"] >= int(query["created[gte]"])]
        after = query.get("starting_after")
        if after:
            ids = [e["id"] for e in events]
            if after not in ids:
                return 400, self.error_body(400, f"No such event: '{after}'"), "application/json"
            events = events[ids.index(after) + 1 :]
        limit = int(query.get("limit") or 10)
        if not 1 <= limit <= 100:
            return 400, self.error_body(400, "limit must be between 1 and 100"), "application/json"
        page = events[:limit]
        answer = {"object": "list", "data": page, "has_more": len(events) > limit, "url": "/v1/events"}
        return 200, answer, "application/json"

    def error_body(self, status: int, message: str) -> Any:
        kind = "invalid_request_error" if status < 500 else "api_error"
        return {"error": {"type": kind, "message": message}}

    def route(self, rec: Recorded) -> tuple[int, Any, str]:
        if rec.headers.get("authorization") != f"Bearer {self.api_key}":
            return (
                401,
                {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}},
                "application/json",
            )
        path = urlsplit(rec.path).path
        if rec.method == "POST":
            if rec.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
                return 400, self.error_body(400, "form encoding expected"), "application/json"
            rec.form = dict(parse_qsl(rec.body.decode(), keep_blank_values=True))
        for routes in self.extra_routes:
            answer = routes(self, rec, path)
            if answer is not None:
                return answer
        if rec.method == "POST" and path == "/v1/checkout/sessions":
            form = rec.form
            key = rec.headers.get("idempotency-key")
            if key and key in self.idempotent:
                previous_form, previous_answer = self.idempotent[key]
                if previous_form != form:
                    message = (
                        "Keys for idempotent requests can only be used with the same parameters "
                        "they were first used with."
                    )
                    return 400, {"error": {"type": "idempotency_error", "message": message}}, "application/json"
                return 200, previous_answer, "application/json"
            for required in ("mode", "success_url", "line_items[0][quantity]"):
                if required not in form:
                    return 400, self.error_body(400, f"Missing required param: {required}."), "application/json"
            session_id = f"cs_test_{uuid.uuid4().hex}"
            price = form.get("line_items[0][price]") or f"price_inline_{uuid.uuid4().hex[:8]}"
            self.line_item_prices[session_id] = [price]
            session = {
                "id": session_id,
                "object": "checkout.session",
                "mode": form["mode"],
                "url": f"{self.base_url}/c/pay/{session_id}",
                "client_reference_id": form.get("client_reference_id"),
                "metadata": nested_form(form, "metadata"),
                "customer": form.get("customer"),
                "customer_email": form.get("customer_email"),
                "success_url": form["success_url"],
                "cancel_url": form.get("cancel_url"),
                "status": "open",
                "payment_status": "unpaid",
                "livemode": False,
            }
            self.sessions[session_id] = session
            if key:
                self.idempotent[key] = (form, session)
            return 200, session, "application/json"
        if rec.method == "POST" and path == "/v1/payment_intents":
            return self._create_payment_intent(rec)
        if rec.method == "GET" and path == "/v1/events":
            return self._list_events(dict(parse_qsl(urlsplit(rec.path).query, keep_blank_values=True)))
        found = re.fullmatch(r"/v1/payment_intents/([^/]+)", path)
        if rec.method == "GET" and found:
            pi = self.payment_intents.get(found.group(1))
            if pi is None:
                return 404, self.error_body(404, f"No such payment_intent: '{found.group(1)}'"), "application/json"
            return 200, pi, "application/json"
        match = re.fullmatch(r"/v1/checkout/sessions/([^/]+)/line_items", path)
        if rec.method == "GET" and match:
            prices = self.line_item_prices.get(match.group(1))
            if prices is None:
                return 404, self.error_body(404, f"No such checkout.session: '{match.group(1)}'"), "application/json"
            data = [
                {"id": f"li_{i}", "object": "item", "quantity": 1, "price": {"id": p, "object": "price"}}
                for i, p in enumerate(prices)
            ]
            return 200, {"object": "list", "data": data, "has_more": False, "url": path}, "application/json"
        if rec.method == "POST" and path == "/v1/billing_portal/sessions":
            if "customer" not in rec.form:
                return 400, self.error_body(400, "Missing required param: customer."), "application/json"
            portal_id = f"bps_{uuid.uuid4().hex[:16]}"
            return (
                200,
                {
                    "id": portal_id,
                    "object": "billing_portal.session",
                    "customer": rec.form["customer"],
                    "return_url": rec.form.get("return_url"),
                    "url": f"{self.base_url}/p/session/{portal_id}",
                    "livemode": False,
                },
                "application/json",
            )
        return 404, self.error_body(404, f"Unrecognized request URL ({rec.method}: {path})"), "application/json"


class LemonSqueezyStandIn(StandIn):
    """`POST /v1/checkouts` of the Lemon Squeezy API (JSON:API)."""

    JSONAPI = "application/vnd.api+json"

    def __init__(self, api_key: str = "ls_test_standin") -> None:
        super().__init__()
        self.api_key = api_key
        # Resources of the store (JSON:API objects, `attributes.store_id` set), listed newest first.
        self.orders: list[dict[str, Any]] = []
        self.subscriptions: list[dict[str, Any]] = []
        self.invoices: list[dict[str, Any]] = []  # subscription-invoices

    def _list(self, resource: str, query: dict[str, str]) -> tuple[int, Any, str]:
        """`GET /v1/orders|subscriptions|subscription-invoices`: `filter[store_id]`, `page[number]`,
        `page[size]` (max 100), ordered by `created_at` descending, with JSON:API `meta.page` and `links`."""
        items = {"orders": self.orders, "subscriptions": self.subscriptions}.get(resource, self.invoices)
        store = query.get("filter[store_id]")
        if store is not None:
            items = [i for i in items if str(i["attributes"].get("store_id")) == store]
        items = sorted(items, key=lambda i: (i["attributes"]["created_at"], str(i["id"])), reverse=True)
        try:
            number, size = int(query.get("page[number]") or 1), int(query.get("page[size]") or 10)
        except ValueError:
            return 400, self.error_body(400, "Bad page parameters"), self.JSONAPI
        if number < 1 or not 1 <= size <= 100:
            return 400, self.error_body(400, "page[size] must be 1 to 100"), self.JSONAPI
        last = max(1, -(-len(items) // size))
        page = items[(number - 1) * size : number * size]
        answer = {
            "meta": {
                "page": {
                    "currentPage": number, "from": (number - 1) * size + 1 if page else None, "lastPage": last,
                    "perPage": size, "to": (number - 1) * size + len(page) if page else None, "total": len(items),
                }
            },
            "jsonapi": {"version": "1.0"},
            "links": {"first": f"{self.base_url}/v1/{resource}?page[number]=1",
                      "last": f"{self.base_url}/v1/{resource}?page[number]={last}"},
            "data": page,
        }  # fmt: skip
        return 200, answer, self.JSONAPI

    def error_body(self, status: int, message: str) -> Any:
        return {"jsonapi": {"version": "1.0"}, "errors": [{"status": str(status), "title": message, "detail": message}]}

    def route(self, rec: Recorded) -> tuple[int, Any, str]:
        if rec.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, self.error_body(401, "Unauthenticated."), self.JSONAPI
        split = urlsplit(rec.path)
        if rec.method == "GET" and split.path in {"/v1/orders", "/v1/subscriptions", "/v1/subscription-invoices"}:
            if rec.headers.get("accept") != self.JSONAPI:
                return 415, self.error_body(415, "Unsupported Media Type"), self.JSONAPI
            return self._list(split.path.rsplit("/", 1)[1], dict(parse_qsl(split.query, keep_blank_values=True)))
        if rec.method == "POST" and urlsplit(rec.path).path == "/v1/checkouts":
            if rec.headers.get("content-type") != self.JSONAPI or rec.headers.get("accept") != self.JSONAPI:
                return 415, self.error_body(415, "Unsupported Media Type"), self.JSONAPI
            rec.json = json.loads(rec.body)
            data = rec.json.get("data") or {}
            rel = data.get("relationships") or {}
            variant = ((rel.get("variant") or {}).get("data") or {}).get("id")
            store = ((rel.get("store") or {}).get("data") or {}).get("id")
            if data.get("type") != "checkouts" or not variant or not store:
                return 422, self.error_body(422, "The store and variant relationships are required."), self.JSONAPI
            checkout_id = str(uuid.uuid4())
            attrs = data.get("attributes") or {}
            answer = {
                "jsonapi": {"version": "1.0"},
                "links": {"self": f"{self.base_url}/v1/checkouts/{checkout_id}"},
                "data": {
                    "type": "checkouts",
                    "id": checkout_id,
                    "attributes": {
                        "store_id": int(store),
                        "variant_id": int(variant),
                        "checkout_data": attrs.get("checkout_data") or {},
                        "product_options": attrs.get("product_options") or {},
                        "test_mode": bool(attrs.get("test_mode")),
                        "url": f"{self.base_url}/checkout/custom/{checkout_id}?signature=standin",
                    },
                },
            }
            return 201, answer, self.JSONAPI
        return 404, self.error_body(404, "Not Found"), self.JSONAPI


class AsaasStandIn(StandIn):
    """The Asaas API v3 calls Tollgate makes (JSON, `access_token` header, `User-Agent` required): customers,
    payments and subscriptions (create, list by `externalReference`), a subscription's payments, and the payment
    list by `paymentDate[ge]` / `dateCreated[ge]` with `offset`/`limit` (`{"object": "list", "hasMore", ...}`).
    Errors answer `{"errors": [{"code", "description"}]}`. Asaas answers newest first; so does this."""

    def __init__(self, api_key: str = "$aact_hmlg_standin_key") -> None:
        super().__init__()
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}
        self.payments: dict[str, dict[str, Any]] = {}
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self._serial = 0

    @property
    def api_base(self) -> str:
        return self.base_url + "/v3"

    def _id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}_{self._serial:012d}"

    def error_body(self, status: int, message: str) -> Any:
        return {"errors": [{"code": "invalid_action" if status == 400 else str(status), "description": message}]}

    @staticmethod
    def _fail(code: str, description: str) -> tuple[int, Any, str]:
        return 400, {"errors": [{"code": code, "description": description}]}, "application/json"

    def _list(self, items: list[dict[str, Any]], query: dict[str, str]) -> tuple[int, Any, str]:
        try:
            offset, limit = int(query.get("offset") or 0), int(query.get("limit") or 10)
        except ValueError:
            return 400, self.error_body(400, "offset/limit inválidos"), "application/json"
        if not 1 <= limit <= 100:
            return 400, self.error_body(400, "O limite deve ser de 1 a 100"), "application/json"
        ordered = sorted(items, key=lambda i: (i.get("dateCreated") or "", i["id"]), reverse=True)
        page = ordered[offset : offset + limit]
        answer = {"object": "list", "hasMore": offset + limit < len(ordered), "totalCount": len(ordered),
                  "limit": limit, "offset": offset, "data": page}  # fmt: skip
        return 200, answer, "application/json"

    @staticmethod
    def _matches(item: dict[str, Any], query: dict[str, str]) -> bool:
        for key, wanted in query.items():
            if key in {"offset", "limit"}:
                continue
            if key.endswith("[ge]"):
                if not item.get(key[:-4]) or str(item[key[:-4]]) < wanted:
                    return False
            elif str(item.get(key)) != wanted:
                return False
        return True

    def new_payment(self, customer: str, value: float, due: str, **fields: Any) -> dict[str, Any]:
        payment_id = self._id("pay")
        payment = {
            "object": "payment", "id": payment_id, "dateCreated": fields.pop("dateCreated", due),
            "customer": customer, "subscription": None, "installment": None, "paymentLink": None, "value": value,
            "netValue": round(value * 0.97, 2), "originalValue": None, "interestValue": None,
            "description": fields.pop("description", None), "billingType": fields.pop("billingType", "UNDEFINED"),
            "status": "PENDING", "dueDate": due, "originalDueDate": due, "confirmedDate": None, "paymentDate": None,
            "clientPaymentDate": None, "invoiceUrl": f"{self.base_url}/i/{payment_id[4:]}",
            "invoiceNumber": f"{self._serial:08d}", "externalReference": fields.pop("externalReference", None),
            "deleted": False, "anticipated": False, "anticipable": False, "refunds": None, "chargeback": None,
            **fields,
        }  # fmt: skip
        self.payments[payment_id] = payment
        return payment

    def settle(self, payment_id: str, status: str = "RECEIVED", on: str = "2026-12-01") -> dict[str, Any]:
        """The buyer paid (CONFIRMED: card confirmed; RECEIVED: money in)."""
        payment = self.payments[payment_id]
        payment["status"] = status
        payment["confirmedDate"] = payment["confirmedDate"] or on
        if status == "RECEIVED":
            payment["paymentDate"] = payment["clientPaymentDate"] = on
        return payment

    def refund(self, payment_id: str, value: float | None = None) -> dict[str, Any]:
        """A refund of `value` (default: all that is left); REFUNDED once nothing is left."""
        payment = self.payments[payment_id]
        refunds = payment["refunds"] = list(payment["refunds"] or [])
        left = round(payment["value"] - sum(r["value"] for r in refunds), 2)
        step = left if value is None else value
        refunds.append({"dateCreated": "2026-12-02 10:00:00", "status": "DONE", "value": step,
                        "description": None, "transactionReceiptUrl": None})  # fmt: skip
        if round(left - step, 2) <= 0:
            payment["status"] = "REFUNDED"
        return payment

    def event(self, name: str, obj: dict[str, Any], *, at: str = "2026-12-01 12:00:00") -> dict[str, Any]:
        """The webhook body Asaas sends for `obj` as it is now."""
        key = "subscription" if name.startswith("SUBSCRIPTION_") else "payment"
        return {"id": f"evt_{uuid.uuid4().hex}&{self._serial}", "event": name, "dateCreated": at,
                "account": {"id": "47ed0d25-f9fb-4b35-b23a-d8895caf92b7", "ownerId": None},
                key: json.loads(json.dumps(obj))}  # fmt: skip

    def route(self, rec: Recorded) -> tuple[int, Any, str]:
        ctype = "application/json"
        if rec.headers.get("access_token") != self.api_key:
            return 401, self.error_body(401, "A chave de API fornecida é inválida"), ctype
        if not rec.headers.get("user-agent"):
            return 400, self.error_body(400, "O header User-Agent é obrigatório"), ctype
        split = urlsplit(rec.path)
        path, query = split.path, dict(parse_qsl(split.query, keep_blank_values=True))
        if rec.method == "POST":
            try:
                rec.json = json.loads(rec.body or b"{}")
            except ValueError:
                return 400, self.error_body(400, "JSON inválido"), ctype
        body = rec.json or {}
        if path == "/v3/customers":
            if rec.method == "GET":
                return self._list([c for c in self.customers.values() if self._matches(c, query)], query)
            if not body.get("name") or not body.get("cpfCnpj"):
                return self._fail("invalid_cpfCnpj", "O CPF/CNPJ informado é inválido.")
            customer_id = self._id("cus")
            customer = {"object": "customer", "id": customer_id, "dateCreated": "2026-12-01", "deleted": False,
                        "name": body["name"], "email": body.get("email"), "cpfCnpj": body["cpfCnpj"],
                        "externalReference": body.get("externalReference")}  # fmt: skip
            self.customers[customer_id] = customer
            return 200, customer, ctype
        if path == "/v3/payments":
            if rec.method == "GET":
                return self._list([p for p in self.payments.values() if self._matches(p, query)], query)
            if body.get("customer") not in self.customers:
                return self._fail("invalid_customer", "Cliente inválido ou não informado.")
            if not body.get("billingType") or not body.get("value") or not body.get("dueDate"):
                return 400, self.error_body(400, "billingType, value e dueDate são obrigatórios"), ctype
            payment = self.new_payment(
                body["customer"], float(body["value"]), body["dueDate"], billingType=body["billingType"],
                description=body.get("description"), externalReference=body.get("externalReference"),
                dateCreated="2026-12-01",
            )  # fmt: skip
            return 200, payment, ctype
        if path == "/v3/subscriptions":
            if rec.method == "GET":
                return self._list([s for s in self.subscriptions.values() if self._matches(s, query)], query)
            if body.get("customer") not in self.customers:
                return self._fail("invalid_customer", "Cliente inválido ou não informado.")
            if body.get("cycle") not in {"WEEKLY", "BIWEEKLY", "MONTHLY", "BIMONTHLY", "QUARTERLY", "SEMIANNUALLY",
                                         "YEARLY"} or not body.get("value") or not body.get("nextDueDate"):  # fmt: skip
                return 400, self.error_body(400, "cycle, value e nextDueDate são obrigatórios"), ctype
            sub_id = self._id("sub")
            sub = {"object": "subscription", "id": sub_id, "dateCreated": "01/12/2026", "customer": body["customer"],
                   "paymentLink": None, "value": float(body["value"]), "nextDueDate": body["nextDueDate"],
                   "cycle": body["cycle"], "description": body.get("description"),
                   "billingType": body.get("billingType") or "UNDEFINED", "deleted": False, "status": "ACTIVE",
                   "externalReference": body.get("externalReference")}  # fmt: skip
            self.subscriptions[sub_id] = sub
            # Asaas makes the first charge at once, due on nextDueDate.
            self.new_payment(body["customer"], float(body["value"]), body["nextDueDate"], subscription=sub_id,
                             billingType=sub["billingType"], description=body.get("description"),
                             dateCreated="2026-12-01")  # fmt: skip
            return 200, sub, ctype
        match = re.fullmatch(r"/v3/subscriptions/([^/]+)/payments", path)
        if match and rec.method == "GET":
            if match.group(1) not in self.subscriptions:
                return 404, self.error_body(404, "Assinatura não encontrada"), ctype
            charges = [p for p in self.payments.values() if p.get("subscription") == match.group(1)]
            return self._list(charges, query)
        return 404, self.error_body(404, "Not Found"), ctype
