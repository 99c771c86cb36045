"""The Stripe stand-in's Checkout Sessions for cart orders (metadata `tollgate_order_id`), as api.stripe.com
answers them at the pinned API version: form-encoded line items with `price_data`, `expires_at` at least 30
minutes ahead, idempotent on the Idempotency-Key, `amount_subtotal` / `amount_total` the sum of the lines.
Packs' and plans' sessions are left to the built-in route.

`standin.order_checkout_failures` > 0 makes that many order checkouts answer HTTP 500 (an outage)."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from tests.provider_standins import Recorded, StripeStandIn, nested_form


def _lines(form: dict[str, str]) -> list[dict[str, Any]]:
    indexes = sorted({int(m.group(1)) for key in form if (m := re.match(r"line_items\[(\d+)\]", key))})
    lines = []
    for i in indexes:
        prefix = f"line_items[{i}]"
        quantity = int(form.get(f"{prefix}[quantity]", "1"))
        unit = int(form[f"{prefix}[price_data][unit_amount]"])
        lines.append(
            {
                "id": f"li_{uuid.uuid4().hex[:12]}",
                "object": "item",
                "quantity": quantity,
                "amount_subtotal": unit * quantity,
                "amount_total": unit * quantity,
                "currency": form.get(f"{prefix}[price_data][currency]"),
                "description": form.get(f"{prefix}[price_data][product_data][name]"),
                "price": {
                    "id": f"price_{uuid.uuid4().hex[:14]}",
                    "object": "price",
                    "unit_amount": unit,
                    "recurring": (
                        {"interval": form[f"{prefix}[price_data][recurring][interval]"]}
                        if f"{prefix}[price_data][recurring][interval]" in form
                        else None
                    ),
                },
            }
        )
    return lines


def order_sessions(standin: StripeStandIn, rec: Recorded, path: str) -> tuple[int, Any, str] | None:
    if rec.method != "POST" or path != "/v1/checkout/sessions" or "metadata[tollgate_order_id]" not in rec.form:
        return None
    form = rec.form
    key = rec.headers.get("idempotency-key")
    if key and key in standin.idempotent:
        first_form, answer = standin.idempotent[key]
        if first_form != form:
            message = (
                "Keys for idempotent requests can only be used with the same parameters they were first used with."
            )
            return 400, {"error": {"type": "idempotency_error", "message": message}}, "application/json"
        return 200, answer, "application/json"
    failures = getattr(standin, "order_checkout_failures", 0)
    if failures > 0:
        setattr(standin, "order_checkout_failures", failures - 1)  # noqa: B010 - a knob tests set
        return 500, standin.error_body(500, "An unknown error occurred"), "application/json"
    expires_at = int(form.get("expires_at", "0"))
    if expires_at < int(time.time()) + 30 * 60 - 5:
        return 400, standin.error_body(400, "expires_at must be at least 30 minutes from now"), "application/json"
    lines = _lines(form)
    if not lines:
        return 400, standin.error_body(400, "Missing required param: line_items."), "application/json"
    total = sum(line["amount_total"] for line in lines)
    session_id = f"cs_test_{uuid.uuid4().hex}"
    session = {
        "id": session_id,
        "object": "checkout.session",
        "mode": form["mode"],
        "url": f"{standin.base_url}/c/pay/{session_id}",
        "client_reference_id": form.get("client_reference_id"),
        "metadata": nested_form(form, "metadata"),
        "customer": form.get("customer"),
        "customer_email": form.get("customer_email"),
        "success_url": form["success_url"],
        "cancel_url": form.get("cancel_url"),
        "currency": form.get("line_items[0][price_data][currency]"),
        "amount_subtotal": total,
        "amount_total": total,
        "expires_at": expires_at,
        "status": "open",
        "payment_status": "unpaid",
        "livemode": False,
    }
    standin.sessions[session_id] = session
    standin.line_item_prices[session_id] = [line["price"]["id"] for line in lines]
    setattr(standin, "order_lines", {**getattr(standin, "order_lines", {}), session_id: lines})  # noqa: B010
    if key:
        standin.idempotent[key] = (form, session)
    return 200, session, "application/json"


StripeStandIn.register_routes(order_sessions)
