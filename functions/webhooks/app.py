"""Billing and provider webhooks: checkout, the customer portal, subscription/purchase/invoice history, the
Stripe / Lemon Squeezy / Clerk webhook receivers (public, signature-checked), the admin replay of a stored
event, and admins' manual plans. Each route validates its input, calls one service function and returns a typed
response."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import AwareDatetime, BaseModel, Field, HttpUrl

from tollgate.db import UnitOfWork
from tollgate.errors import BadRequest
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import Cursor, Limit, idempotency_key
from tollgate.observability import logger, metrics, tracer
from tollgate.services import billing, manual_plans, webhooks

app = create_app("webhooks")


# --- bodies and answers ----------------------------------------------------------------------------------------
class CheckoutIn(BaseModel):
    provider: Literal["stripe", "lemonsqueezy", "asaas"]
    kind: Literal["pack", "plan"]
    item_id: uuid.UUID
    success_url: HttpUrl
    cancel_url: HttpUrl
    interval: Literal["month", "year"] = "month"
    tax_id: str | None = Field(
        default=None,
        max_length=32,
        description="Asaas only: the buyer's CPF or CNPJ, required on the first Asaas checkout (Asaas charges "
        "only customers that have one); Tollgate passes it to Asaas and does not store it",
    )


class CheckoutOut(BaseModel):
    url: str
    provider: str
    session_id: str


class PortalIn(BaseModel):
    return_url: HttpUrl | None = None
    provider: Literal["stripe", "lemonsqueezy"] | None = None


class UrlOut(BaseModel):
    url: str


class SubscriptionOut(BaseModel):
    id: uuid.UUID
    provider: str
    status: str
    plan: str | None = Field(description="the plan's tier, e.g. PRO")
    plan_id: uuid.UUID | None
    plan_name: str | None
    interval: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    canceled_at: datetime | None
    trial_end: datetime | None
    quantity: int


class PurchaseOut(BaseModel):
    id: uuid.UUID
    provider: str
    order_id: str
    item_kind: str
    item_id: uuid.UUID | None
    package_name: str | None
    credits: Decimal
    amount: Decimal
    currency: str
    status: str
    refunded_amount: Decimal
    credits_clawed_back: Decimal
    expires_at: datetime | None
    paid_at: datetime | None
    created_at: datetime


class InvoiceOut(BaseModel):
    id: uuid.UUID
    provider: str
    invoice_id: str
    number: str | None
    status: str
    amount_due: Decimal
    amount_paid: Decimal
    currency: str
    period_start: datetime | None
    period_end: datetime | None
    credits_granted: Decimal
    refunded_amount: Decimal
    hosted_invoice_url: str | None
    paid_at: datetime | None
    created_at: datetime


class PurchasePage(BaseModel):
    items: list[PurchaseOut]
    next_cursor: str | None


class InvoicePage(BaseModel):
    items: list[InvoiceOut]
    next_cursor: str | None


class WebhookOut(BaseModel):
    received: bool
    id: uuid.UUID
    event_id: str
    type: str
    status: str
    duplicate: bool


class ReplayOut(WebhookOut):
    detail: dict[str, Any]


class ManualPlanIn(BaseModel):
    plan_id: uuid.UUID
    interval: Literal["month", "year"]
    until: AwareDatetime | None = Field(default=None, description="the plan ends then (ISO 8601 with offset)")


class ManualPlanOut(BaseModel):
    subscription_id: uuid.UUID
    user_id: uuid.UUID
    plan_id: uuid.UUID | None
    tier: str | None
    interval: str | None
    status: str
    current_period_start: datetime | None
    current_period_end: datetime | None
    until: datetime | None
    user_tier: str = Field(description="the user's tier after the change")
    credits_granted: Decimal = Field(description="allowance granted by this call (0 when nothing changed)")
    changed: bool


# --- edge helpers ----------------------------------------------------------------------------------------------
def _raw_body() -> bytes:
    event = app.current_event.raw_event
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            raise BadRequest("the body is not valid base64") from None
    return str(body).encode("utf-8")


def _receive(provider: str) -> WebhookOut:
    receipt = webhooks.receive_webhook(provider, _raw_body(), dict(app.current_event.headers))
    return WebhookOut(
        received=True,
        id=receipt.id,
        event_id=receipt.event_id,
        type=receipt.type,
        status=receipt.status,
        duplicate=receipt.duplicate,
    )


def _purchase_out(p: billing.PurchaseView) -> PurchaseOut:
    return PurchaseOut(
        id=p.id, provider=p.provider, order_id=p.provider_order_id, item_kind=p.item_kind, item_id=p.item_id,
        package_name=p.package_name, credits=p.credits, amount=p.amount, currency=p.currency, status=p.status,
        refunded_amount=p.refunded_amount, credits_clawed_back=p.credits_clawed_back, expires_at=p.expires_at,
        paid_at=p.paid_at, created_at=p.created_at,
    )  # fmt: skip


def _invoice_out(i: billing.InvoiceView) -> InvoiceOut:
    return InvoiceOut(
        id=i.id, provider=i.provider, invoice_id=i.provider_invoice_id, number=i.number, status=i.status,
        amount_due=i.amount_due, amount_paid=i.amount_paid, currency=i.currency, period_start=i.period_start,
        period_end=i.period_end, credits_granted=i.credits_granted, refunded_amount=i.refunded_amount,
        hosted_invoice_url=i.hosted_invoice_url, paid_at=i.paid_at, created_at=i.created_at,
    )  # fmt: skip


# --- billing (user) --------------------------------------------------------------------------------------------
@app.post("/billing/checkout", summary="Start a Stripe, Lemon Squeezy or Asaas checkout for a pack or a plan")
def checkout(body: CheckoutIn) -> CheckoutOut:
    result = billing.create_checkout(
        UnitOfWork(), current_principal(app).user_id, provider=body.provider, kind=body.kind, item_id=body.item_id,
        success_url=str(body.success_url), cancel_url=str(body.cancel_url), interval=body.interval,
        idempotency_key=idempotency_key(app), tax_id=body.tax_id,
    )  # fmt: skip
    return CheckoutOut(url=result.url, provider=result.provider, session_id=result.session_id)


@app.post("/billing/portal", summary="The provider's customer portal")
def portal(body: PortalIn | None = None) -> UrlOut:
    body = body or PortalIn()
    return_url = str(body.return_url) if body.return_url else None
    url = billing.create_portal(
        UnitOfWork(), current_principal(app).user_id, return_url=return_url, provider=body.provider
    )
    return UrlOut(url=url)


@app.get("/billing/subscription", summary="The current subscription, or null")
def subscription() -> SubscriptionOut | None:
    sub = billing.current_subscription(UnitOfWork(), current_principal(app).user_id)
    if sub is None:
        return None
    return SubscriptionOut(
        id=sub.id, provider=sub.provider, status=sub.status, plan=sub.tier, plan_id=sub.plan_id,
        plan_name=sub.plan_name, interval=sub.interval, current_period_start=sub.current_period_start,
        current_period_end=sub.current_period_end, cancel_at_period_end=sub.cancel_at_period_end,
        canceled_at=sub.canceled_at, trial_end=sub.trial_end, quantity=sub.quantity,
    )  # fmt: skip


@app.get("/billing/purchases", summary="The caller's one-time purchases, newest first")
def purchases(cursor: Cursor = None, limit: Limit = 20) -> PurchasePage:
    page = billing.list_purchases(UnitOfWork(), current_principal(app).user_id, cursor=cursor, limit=limit)
    return PurchasePage(items=[_purchase_out(p) for p in page.items], next_cursor=page.next_cursor)


@app.get("/billing/invoices", summary="The caller's subscription invoices, newest first")
def invoices(cursor: Cursor = None, limit: Limit = 20) -> InvoicePage:
    page = billing.list_invoices(UnitOfWork(), current_principal(app).user_id, cursor=cursor, limit=limit)
    return InvoicePage(items=[_invoice_out(i) for i in page.items], next_cursor=page.next_cursor)


# --- webhooks (public: the signature is the authentication) ----------------------------------------------------
@app.post("/webhooks/stripe", summary="Stripe events (Stripe-Signature)")
def stripe_webhook() -> WebhookOut:
    return _receive("stripe")


@app.post("/webhooks/lemonsqueezy", summary="Lemon Squeezy events (X-Signature)")
def lemonsqueezy_webhook() -> WebhookOut:
    return _receive("lemonsqueezy")


@app.post("/webhooks/clerk", summary="Clerk events (Svix headers)")
def clerk_webhook() -> WebhookOut:
    return _receive("clerk")


@app.post("/webhooks/asaas", summary="Asaas events (asaas-access-token header)")
def asaas_webhook() -> WebhookOut:
    return _receive("asaas")


# --- admin -----------------------------------------------------------------------------------------------------
def _manual_out(view: manual_plans.ManualPlan) -> ManualPlanOut:
    return ManualPlanOut(
        subscription_id=view.subscription_id, user_id=view.user_id, plan_id=view.plan_id, tier=view.tier,
        interval=view.interval, status=view.status, current_period_start=view.current_period_start,
        current_period_end=view.current_period_end, until=view.until, user_tier=view.user_tier,
        credits_granted=view.credits_granted, changed=view.changed,
    )  # fmt: skip


@app.put("/admin/users/<user_id>/plan", summary="Give a user a plan by hand (billing source manual)")
def assign_manual_plan(user_id: uuid.UUID, body: ManualPlanIn) -> ManualPlanOut:
    view = manual_plans.assign_plan(
        UnitOfWork(), current_actor(app), user_id, plan_id=body.plan_id, interval=body.interval, until=body.until
    )
    return _manual_out(view)


@app.delete("/admin/users/<user_id>/plan", summary="End a user's manual plan (nothing is clawed back)")
def end_manual_plan(user_id: uuid.UUID) -> ManualPlanOut:
    return _manual_out(manual_plans.end_plan(UnitOfWork(), current_actor(app), user_id))


@app.post("/admin/webhooks/<event_id>/replay", summary="Re-apply a stored webhook event")
def replay(event_id: str) -> ReplayOut:
    receipt = webhooks.replay_event(event_id, current_actor(app))
    return ReplayOut(
        received=True, id=receipt.id, event_id=receipt.event_id, type=receipt.type, status=receipt.status,
        duplicate=receipt.duplicate, detail=receipt.detail,
    )  # fmt: skip


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
