"""API-key scopes, and the scope every authorized route needs (the one declaration per route).

A session (a Tollgate access token or a Clerk session token) holds every right of its user; an API key holds
only the scopes it was created with. The authorizer looks the request's route up here: a route declared
`SESSION_ONLY` (every credential route under /auth/, and anything not declared at all) never admits a key.
Roles still apply on top: a key with `admin` reaches /admin/* only while its user is an ADMIN (or SUPPORT
where a route admits support).

tests/integration/test_auth_security_scopes.py checks that every authorized route of template.yaml is declared
here and that nothing declared here is missing from the template.
"""

from __future__ import annotations

from typing import Final, Literal

Scope = Literal[
    "profile:read",
    "credits:read",
    "credits:write",
    "rag",
    "billing:read",
    "files:read",
    "files:write",
    "orders:read",
    "admin",
]
SCOPES: Final[tuple[Scope, ...]] = (
    "profile:read", "credits:read", "credits:write", "rag", "billing:read", "files:read", "files:write",
    "orders:read", "admin",
)  # fmt: skip
# The narrowest useful key: it can read the balance and say whose key it is, and spend nothing.
DEFAULT_SCOPES: Final[tuple[Scope, ...]] = ("profile:read", "credits:read")
# Scopes only a staff member may put on a key.
STAFF_SCOPES: Final[frozenset[str]] = frozenset({"admin"})
SESSION_ONLY: Final = "session"
ALL = "*"  # what a session holds

# "METHOD /path" (as API Gateway's routeKey) -> the scope a key needs, or SESSION_ONLY.
ROUTE_SCOPES: Final[dict[str, str]] = {
    # account and credentials: sessions only (keys never reach credential routes)
    "POST /auth/logout": SESSION_ONLY,
    "POST /auth/password/change": SESSION_ONLY,
    "GET /auth/me": "profile:read",
    "PATCH /auth/me": SESSION_ONLY,
    "POST /auth/reauthenticate": SESSION_ONLY,
    "POST /auth/two-factor/email/enable": SESSION_ONLY,
    "POST /auth/two-factor/totp/setup": SESSION_ONLY,
    "POST /auth/two-factor/totp/enable": SESSION_ONLY,
    "POST /auth/two-factor/disable": SESSION_ONLY,
    "POST /auth/two-factor/recovery-codes": SESSION_ONLY,
    "GET /auth/sessions": SESSION_ONLY,
    "DELETE /auth/sessions/{session_id}": SESSION_ONLY,
    "POST /auth/api-keys": SESSION_ONLY,
    "GET /auth/api-keys": SESSION_ONLY,
    "DELETE /auth/api-keys/{key_id}": SESSION_ONLY,
    # credits
    "GET /credits/balance": "credits:read",
    "GET /credits/transactions": "credits:read",
    "GET /credits/usage/summary": "credits:read",
    "GET /credits/costs": "credits:read",
    "POST /credits/usage": "credits:write",
    "POST /credits/holds": "credits:write",
    "POST /credits/holds/{hold_id}/capture": "credits:write",
    "POST /credits/holds/{hold_id}/release": "credits:write",
    "PATCH /credits/settings": SESSION_ONLY,
    "GET /credits/auto-topup": "credits:read",
    "PUT /credits/auto-topup": SESSION_ONLY,  # it spends money with the saved card: the person decides
    # knowledge base
    "POST /rag/search": "rag",
    "POST /rag/ask": "rag",
    "GET /rag/conversations": "rag",
    "GET /rag/conversations/{conversation_id}": "rag",
    "DELETE /rag/conversations/{conversation_id}": "rag",
    # files: reading (lists, downloads, usage) and writing (uploads, delete, restore)
    "GET /files": "files:read",
    "GET /files/usage": "files:read",
    "GET /files/{file_id}": "files:read",
    "POST /files": "files:write",
    "POST /files/{file_id}/complete": "files:write",
    "DELETE /files/{file_id}": "files:write",
    "POST /files/{file_id}/restore": "files:write",
    # billing: reading history; paying and the customer portal need the person
    "GET /billing/subscription": "billing:read",
    "GET /billing/purchases": "billing:read",
    "GET /billing/invoices": "billing:read",
    "POST /billing/checkout": SESSION_ONLY,
    "POST /billing/portal": SESSION_ONLY,
    # back office (roles are checked by the services as well)
    "POST /admin/users/{user_id}/credits/usage": "admin",
    "POST /admin/users/{user_id}/credits/adjustments": "admin",
    "POST /admin/credits/refunds": "admin",
    "GET /admin/users/{user_id}/credits": "admin",
    "PUT /admin/users/{user_id}/credits/floor": "admin",
    "GET /admin/feature-costs": "admin",
    "PUT /admin/feature-costs": "admin",
    "GET /admin/credits/settings": "admin",
    "PUT /admin/credits/settings": "admin",
    "GET /admin/plans": "admin",
    "POST /admin/plans": "admin",
    "PATCH /admin/plans/{plan_id}": "admin",
    "GET /admin/credit-packs": "admin",
    "POST /admin/credit-packs": "admin",
    "PATCH /admin/credit-packs/{pack_id}": "admin",
    "POST /admin/credits/reconcile": "admin",
    "POST /admin/rag/documents": "admin",
    "GET /admin/rag/chunks": "admin",
    "DELETE /admin/rag/chunks/{chunk_id}": "admin",
    "POST /admin/webhooks/{event_id}/replay": "admin",
    "PUT /admin/users/{user_id}/plan": "admin",
    "DELETE /admin/users/{user_id}/plan": "admin",
    # outbound webhook endpoints (domain events out)
    "POST /admin/webhook-endpoints": "admin",
    "GET /admin/webhook-endpoints": "admin",
    "DELETE /admin/webhook-endpoints/{endpoint_id}": "admin",
    "GET /admin/webhook-endpoints/{endpoint_id}/deliveries": "admin",
    "POST /admin/webhook-endpoints/{endpoint_id}/deliveries/{delivery_id}/replay": "admin",
    "GET /admin/outbox/deliveries": "admin",
    # catalogue
    "POST /products/{slug}/reviews": SESSION_ONLY,
    "POST /reviews/{review_id}/helpful": SESSION_ONLY,
    "POST /admin/products": "admin",
    "PATCH /admin/products/{product_id}": "admin",
    "POST /admin/products/{product_id}/publish": "admin",
    "POST /admin/products/{product_id}/archive": "admin",
    "POST /admin/products/{product_id}/prices": "admin",
    "PATCH /admin/prices/{price_id}": "admin",
    "POST /admin/product-categories": "admin",
    "PATCH /admin/product-categories/{category_id}": "admin",
    # commerce
    "POST /orders/checkout": SESSION_ONLY,
    "GET /orders": "orders:read",
    "GET /orders/{order_id}": "orders:read",
    "GET /admin/orders": "admin",
    "POST /admin/discounts": "admin",
    "PATCH /admin/discounts/{discount_id}": "admin",
    "GET /admin/discounts": "admin",
    "POST /discounts/validate": SESSION_ONLY,
    # aftersales
    "GET /orders/{order_id}/items/{item_id}/download": "orders:read",
    "POST /admin/orders/{order_id}/refunds": "admin",
    # support
    "POST /support/tickets": SESSION_ONLY,
    "GET /support/tickets": SESSION_ONLY,
    "GET /support/tickets/{ticket_id}": SESSION_ONLY,
    "GET /support/tickets/{ticket_id}/messages": SESSION_ONLY,
    "POST /support/tickets/{ticket_id}/messages": SESSION_ONLY,
    "GET /admin/support/tickets": "admin",
    "GET /admin/support/tickets/{ticket_id}": "admin",
    "GET /admin/support/tickets/{ticket_id}/messages": "admin",
    "PATCH /admin/support/tickets/{ticket_id}": "admin",
    "POST /admin/support/tickets/{ticket_id}/messages": "admin",
    "POST /support/users/{user_id}/goodwill": "admin",
    "GET /admin/system-config": "admin",
    # run-time settings include the goodwill caps and the bonus toggle: the person changes them, not a key
    "PUT /admin/system-config/{key}": SESSION_ONLY,
    # admin
    "GET /admin/users": "admin",
    "GET /admin/users/{user_id}": "admin",
    # Access changes, a person's whole data and erasure need the admin in person: a leaked key must not
    # promote its holder, lock the admins out, copy a customer's data or erase anyone.
    "PATCH /admin/users/{user_id}": SESSION_ONLY,
    "POST /admin/users/{user_id}/export": SESSION_ONLY,
    "POST /admin/users/{user_id}/erase": SESSION_ONLY,
    "GET /admin/email-suppressions": "admin",
    # Lifting a suppression mails someone who bounced or complained again: the admin in person, as access changes.
    "DELETE /admin/email-suppressions/{email}": SESSION_ONLY,
    # audit
    "GET /admin/audit-logs": "admin",
    "POST /admin/features": "admin",
    "PATCH /admin/features/{feature_id}": "admin",
    "DELETE /admin/features/{feature_id}": "admin",
    # reports
    "GET /admin/analytics": "admin",
    "GET /admin/email-logs": "admin",
    "GET /admin/subscription-events": "admin",
    "GET /admin/refunds": "admin",
    "GET /admin/reports/low-balance": "admin",
    "GET /billing/payment-methods": "billing:read",
}

CredentialKind = Literal["session", "api_key"]


def required_scope(route_key: str) -> str:
    """The scope `route_key` needs from an API key (SESSION_ONLY when the route is not declared)."""
    return ROUTE_SCOPES.get(route_key, SESSION_ONLY)


def permits(credential: str, scopes: frozenset[str] | set[str], route_key: str) -> bool:
    """Whether a credential of this kind holding `scopes` may call `route_key`."""
    if credential != "api_key":
        return True
    needed = required_scope(route_key)
    return needed != SESSION_ONLY and needed in scopes


def encode(scopes: frozenset[str] | tuple[str, ...] | list[str]) -> str:
    """The authorizer context form (simple-response context values are strings)."""
    return " ".join(sorted(scopes))


def decode(value: str | None) -> frozenset[str]:
    return frozenset((value or "").split())
