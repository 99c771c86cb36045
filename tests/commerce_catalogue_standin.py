"""The Stripe stand-in's catalogue routes: `POST /v1/products`, `POST /v1/products/{id}`, `POST /v1/prices`,
`POST /v1/prices/{id}` and their GETs, speaking Stripe's wire format at the pinned API version (form-encoded
POSTs, objects as Stripe returns them, Idempotency-Key replays, Stripe's error bodies, prices immutable in amount).
Registered on every StripeStandIn at import."""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.provider_standins import Recorded, StripeStandIn, nested_form

JSON = "application/json"
IDEMPOTENCY_MISMATCH = (
    "Keys for idempotent requests can only be used with the same parameters they were first used with."
)


@dataclass
class CatalogueState:
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    keys: dict[tuple[str, str], tuple[dict[str, str], dict[str, Any]]] = field(default_factory=dict)
    clock: int = 0
    # Stripe answers concurrent requests with one Idempotency-Key once: requests here take turns.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tick(self) -> int:
        """Stripe's `updated`: whole seconds, here strictly increasing so each change is newer than the last."""
        self.clock = max(self.clock + 1, int(time.time()))
        return self.clock


def state(standin: StripeStandIn) -> CatalogueState:
    found = standin.__dict__.get("_catalogue")
    if not isinstance(found, CatalogueState):
        found = standin.__dict__["_catalogue"] = CatalogueState()
    return found


def _list(form: dict[str, str], prefix: str) -> list[str] | None:
    keys = sorted((k for k in form if re.fullmatch(rf"{prefix}\[\d+\]", k)), key=lambda k: int(k[len(prefix) + 1 : -1]))
    if not keys and prefix not in form:
        return None
    return [form[k] for k in keys]


def _bool(value: str) -> bool:
    return value == "true"


def product_object(st: CatalogueState, product_id: str, form: dict[str, str]) -> dict[str, Any]:
    now = st.tick()
    return {
        "id": product_id, "object": "product", "active": _bool(form.get("active", "true")), "created": now,
        "default_price": None, "description": form.get("description") or None,
        "images": _list(form, "images") or [], "livemode": False, "marketing_features": [],
        "metadata": nested_form(form, "metadata"), "name": form["name"], "package_dimensions": None,
        "shippable": None, "statement_descriptor": None, "tax_code": None, "unit_label": None, "updated": now,
        "url": None,
    }  # fmt: skip


def price_object(st: CatalogueState, price_id: str, form: dict[str, str]) -> dict[str, Any]:
    recurring = None
    if "recurring[interval]" in form:
        recurring = {
            "interval": form["recurring[interval]"], "interval_count": int(form.get("recurring[interval_count]", 1)),
            "meter": None, "trial_period_days": None, "usage_type": "licensed",
        }  # fmt: skip
    return {
        "id": price_id, "object": "price", "active": _bool(form.get("active", "true")), "billing_scheme": "per_unit",
        "created": st.tick(), "currency": form["currency"], "custom_unit_amount": None, "livemode": False,
        "lookup_key": None, "metadata": nested_form(form, "metadata"), "nickname": form.get("nickname") or None,
        "product": form["product"], "recurring": recurring, "tax_behavior": "unspecified", "tiers_mode": None,
        "transform_quantity": None, "type": "recurring" if recurring else "one_time",
        "unit_amount": int(form["unit_amount"]), "unit_amount_decimal": form["unit_amount"],
    }  # fmt: skip


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> Any:
    body: dict[str, Any] = {"type": kind, "message": message}
    if param:
        body["param"] = param
    return status, {"error": body}, JSON


def _create(standin: StripeStandIn, rec: Recorded, kind: str, required: tuple[str, ...]) -> tuple[int, Any, str]:
    with state(standin).lock:
        return _create_locked(standin, rec, kind, required)


def _create_locked(standin: StripeStandIn, rec: Recorded, kind: str, required: tuple[str, ...]) -> tuple[int, Any, str]:
    st = state(standin)
    key = rec.headers.get("idempotency-key")
    if key and (kind, key) in st.keys:
        first_form, answer = st.keys[(kind, key)]
        if first_form != rec.form:
            return _error(400, IDEMPOTENCY_MISMATCH, kind="idempotency_error")
        return 200, answer, JSON
    for name in required:
        if name not in rec.form:
            return _error(400, f"Missing required param: {name}.", name)
    if kind == "price":
        if rec.form["product"] not in st.products:
            return _error(400, f"No such product: '{rec.form['product']}'", "product")
        answer = price_object(st, f"price_{uuid.uuid4().hex[:24]}", rec.form)
        st.prices[answer["id"]] = answer
    else:
        answer = product_object(st, f"prod_{uuid.uuid4().hex[:14]}", rec.form)
        st.products[answer["id"]] = answer
    if key:
        st.keys[(kind, key)] = (dict(rec.form), answer)
    return 200, answer, JSON


def _update_product(standin: StripeStandIn, rec: Recorded, product_id: str) -> tuple[int, Any, str]:
    st = state(standin)
    product = st.products.get(product_id)
    if product is None:
        return _error(404, f"No such product: '{product_id}'", "id")
    form = rec.form
    for name in ("name", "description"):
        if name in form:
            product[name] = form[name] or None if name == "description" else form[name]
    if "active" in form:
        product["active"] = _bool(form["active"])
    images = _list(form, "images")
    if images is not None:
        product["images"] = images
    product["metadata"].update(nested_form(form, "metadata"))
    product["updated"] = st.tick()
    return 200, dict(product), JSON


def _update_price(standin: StripeStandIn, rec: Recorded, price_id: str) -> tuple[int, Any, str]:
    st = state(standin)
    price = st.prices.get(price_id)
    if price is None:
        return _error(404, f"No such price: '{price_id}'", "id")
    for immutable in ("unit_amount", "currency", "recurring[interval]", "product"):
        if immutable in rec.form:
            return _error(400, f"Received unknown parameter: {immutable}", immutable)
    if "active" in rec.form:
        price["active"] = _bool(rec.form["active"])
    if "nickname" in rec.form:
        price["nickname"] = rec.form["nickname"] or None
    price["metadata"].update(nested_form(rec.form, "metadata"))
    return 200, dict(price), JSON


def catalogue_routes(standin: StripeStandIn, rec: Recorded, path: str) -> tuple[int, Any, str] | None:
    if path == "/v1/products" and rec.method == "POST":
        return _create(standin, rec, "product", ("name",))
    if path == "/v1/prices" and rec.method == "POST":
        return _create(standin, rec, "price", ("currency", "product", "unit_amount"))
    found = re.fullmatch(r"/v1/(products|prices)/([^/]+)", path)
    if found is None:
        return None
    kind, object_id = found.groups()
    if rec.method == "GET":
        table = state(standin).products if kind == "products" else state(standin).prices
        obj = table.get(object_id)
        return (200, obj, JSON) if obj is not None else _error(404, f"No such {kind[:-1]}: '{object_id}'", "id")
    if kind == "products":
        return _update_product(standin, rec, object_id)
    return _update_price(standin, rec, object_id)


StripeStandIn.register_routes(catalogue_routes)
