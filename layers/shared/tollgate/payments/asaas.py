"""The Asaas API v3 (Brazil: PIX, boleto, card), over stdlib `urllib` like the Lemon Squeezy adapter.

Wire format relied on (docs.asaas.com, API v3): every call sends `access_token: <ASAAS_API_KEY>` and a
`User-Agent` (required for accounts created since 2024-06-13) to ASAAS_API_BASE (sandbox
https://api-sandbox.asaas.com/v3 by default, production https://api.asaas.com/v3). JSON in and out; amounts are
BRL decimals (`value`); dates `YYYY-MM-DD`. Lists answer `{"object": "list", "hasMore", "totalCount", "limit",
"offset", "data": [...]}` (limit at most 100); errors answer `{"errors": [{"code", "description"}]}`.

- `GET /customers?externalReference=` / `POST /customers {name, email, cpfCnpj, externalReference}`: Asaas needs
  a customer with a CPF/CNPJ before it charges anyone, and allows duplicates, so it is looked up first.
- `GET /payments?externalReference=` / `POST /payments {customer, billingType: UNDEFINED, value, dueDate,
  description, externalReference, callback: {successUrl, autoRedirect}}`: a one-time charge; `invoiceUrl` is the
  page where the buyer picks PIX, boleto or card.
- `GET /subscriptions?externalReference=` / `POST /subscriptions {customer, billingType, value, nextDueDate,
  cycle: MONTHLY|YEARLY, description, externalReference}`, and `GET /subscriptions/{id}/payments` for the first
  charge's `invoiceUrl`.
- `GET /payments?paymentDate[ge]=|dateCreated[ge]=&offset=&limit=`: reconciliation.

Asaas takes no idempotency header, so a checkout is made repeatable by its `externalReference` (derived from the
buyer, the item and the client's Idempotency-Key) and a look-up before every create (see services.asaas_checkout).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Protocol

from tollgate.config import Settings, get_settings
from tollgate.errors import PaymentProviderError, ProviderNotConfigured
from tollgate.payments.adapters import Page

CYCLES = {"month": "MONTHLY", "year": "YEARLY"}
INTERVALS = {cycle: interval for interval, cycle in CYCLES.items()}
# The references Tollgate writes into `externalReference`: "tg:<kind>:<user hex>:<item hex>:<interval>:<nonce>".
REFERENCE = re.compile(r"^tg:(pack|plan):([0-9a-f]{32}):([0-9a-f]{32}):(month|year|-):([0-9a-z]{1,32})$")


@dataclass(frozen=True, slots=True)
class Reference:
    kind: str  # pack | plan
    user_id: str
    item_id: str
    interval: str | None
    nonce: str

    def encode(self) -> str:
        return f"tg:{self.kind}:{self.user_id}:{self.item_id}:{self.interval or '-'}:{self.nonce}"

    @classmethod
    def parse(cls, value: Any) -> Reference | None:
        match = REFERENCE.match(value) if isinstance(value, str) else None
        if match is None:
            return None
        kind, user_id, item_id, interval, nonce = match.groups()
        return cls(kind, user_id, item_id, None if interval == "-" else interval, nonce)


def normalize_tax_id(value: str) -> str | None:
    """A CPF (11 digits) or CNPJ (14 digits) with valid check digits, punctuation removed; None when it is not."""
    digits = re.sub(r"[.\-/\s]", "", value or "")
    if not digits.isdigit() or len(digits) not in (11, 14) or len(set(digits)) == 1:
        return None

    def check(body: str, weights: list[int]) -> str:
        total = sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11
        return "0" if total < 2 else str(11 - total)

    if len(digits) == 11:
        first = check(digits[:9], list(range(10, 1, -1)))
        second = check(digits[:9] + first, list(range(11, 1, -1)))
    else:
        w1 = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]
        first = check(digits[:12], w1)
        second = check(digits[:12] + first, [6, *w1])
    return digits if digits[-2:] == first + second else None


class AsaasGateway(Protocol):
    def find_customer(self, external_reference: str) -> dict[str, Any] | None: ...

    def create_customer(self, *, name: str, email: str, tax_id: str, external_reference: str) -> dict[str, Any]: ...

    def find_payment(self, external_reference: str) -> dict[str, Any] | None: ...

    def create_payment(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def find_subscription(self, external_reference: str) -> dict[str, Any] | None: ...

    def create_subscription(self, body: dict[str, Any]) -> dict[str, Any]: ...

    def subscription_payments(self, subscription_id: str) -> list[dict[str, Any]]: ...


class AsaasAdapter:
    def __init__(self, settings: Settings) -> None:
        key = settings.asaas_api_key.get_secret_value() if settings.asaas_api_key else ""
        if not key:
            raise ProviderNotConfigured("Asaas is not configured (ASAAS_API_KEY)", details={"provider": "asaas"})
        self._key = key
        self._base = settings.asaas_api_base.rstrip("/")
        self._timeout = settings.provider_timeout_seconds

    def _call(self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None) -> Any:
        import urllib.error
        import urllib.parse
        import urllib.request

        url = self._base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(  # noqa: S310 - the base URL is configuration, https in production
            url,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={
                "Accept": "application/json",
                "Content-Type": "application/json",
                "User-Agent": "tollgate",
                "access_token": self._key,
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise PaymentProviderError(
                "Asaas refused the request",
                details={"provider": "asaas", "status": exc.code, "errors": _errors(exc.read()[:2000])},
            ) from exc
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise PaymentProviderError(
                "Asaas cannot be reached", details={"provider": "asaas", "error": type(exc).__name__}
            ) from exc

    def _object(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        answer = self._call(method, path, body=body)
        if not isinstance(answer, dict) or not answer.get("id"):
            raise PaymentProviderError("Asaas answered without an object id", details={"provider": "asaas"})
        return answer

    def list_page(self, path: str, query: dict[str, str]) -> Page:
        """One page of an Asaas list (`offset`/`limit` in `query`), and whether more follow (`hasMore`)."""
        answer = self._call("GET", path, query=query)
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise PaymentProviderError("Asaas answered without a list", details={"provider": "asaas"})
        items = [item for item in answer["data"] if isinstance(item, dict)]
        return Page(items=items, has_more=bool(answer.get("hasMore")))

    def _first(self, path: str, external_reference: str) -> dict[str, Any] | None:
        page = self.list_page(path, {"externalReference": external_reference, "limit": "10", "offset": "0"})
        return next((item for item in page.items if not item.get("deleted")), None)

    def find_customer(self, external_reference: str) -> dict[str, Any] | None:
        return self._first("/customers", external_reference)

    def create_customer(self, *, name: str, email: str, tax_id: str, external_reference: str) -> dict[str, Any]:
        body = {"name": name, "email": email, "cpfCnpj": tax_id, "externalReference": external_reference}
        return self._object("POST", "/customers", body)

    def find_payment(self, external_reference: str) -> dict[str, Any] | None:
        return self._first("/payments", external_reference)

    def create_payment(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._object("POST", "/payments", body)

    def find_subscription(self, external_reference: str) -> dict[str, Any] | None:
        return self._first("/subscriptions", external_reference)

    def create_subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._object("POST", "/subscriptions", body)

    def subscription_payments(self, subscription_id: str) -> list[dict[str, Any]]:
        return self.list_page(f"/subscriptions/{subscription_id}/payments", {"limit": "10", "offset": "0"}).items

    def payments_since(self, field: str, since: date, offset: int, limit: int) -> Page:
        """`GET /payments?{field}[ge]=YYYY-MM-DD&offset=&limit=` (field: paymentDate or dateCreated)."""
        if field not in {"paymentDate", "dateCreated"}:
            raise ValueError(f"unknown Asaas date filter {field!r}")
        return self.list_page(
            "/payments", {f"{field}[ge]": since.isoformat(), "offset": str(offset), "limit": str(min(limit, 100))}
        )


def _errors(raw: bytes) -> list[dict[str, str]]:
    """Asaas's `{"errors": [{"code", "description"}]}`, or the raw text when the body is something else."""
    try:
        body = json.loads(raw)
        errors = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errors, list):
            return [
                {"code": str(e.get("code")), "description": str(e.get("description"))[:300]}
                for e in errors[:5]
                if isinstance(e, dict)
            ]
    except ValueError:
        pass
    return [{"code": "unknown", "description": raw.decode("utf-8", "replace")[:300]}]


def asaas_gateway() -> AsaasAdapter:
    """The Asaas adapter (ProviderNotConfigured without ASAAS_API_KEY)."""
    return AsaasAdapter(get_settings())
