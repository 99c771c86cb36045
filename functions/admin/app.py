"""User management and GDPR (API.md "Back office"): staff search and read users; admins change role and status,
export a user's data, erase a user, and take an address off the email suppression list. Each route validates its
input, calls one service function, returns a model; the services decide who may (services/user_admin.py,
services/gdpr.py, services/email_suppressions.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Path, Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, StringConstraints, model_validator

from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor
from tollgate.http.edge import Cursor, Limit, OptionalTimestampQuery, StrictBody, documented_errors
from tollgate.observability import logger, metrics, tracer
from tollgate.services import email_suppressions, gdpr, user_admin
from tollgate.storage import get_storage

app = create_app("admin")

SearchText = Annotated[str | None, Query(min_length=1, max_length=user_admin.MAX_QUERY)]
Word = Annotated[str | None, Query(max_length=32)]
EmailQuery = Annotated[str | None, Query(min_length=1, max_length=email_suppressions.MAX_EMAIL)]
EmailPath = Annotated[str, Path(min_length=1, max_length=email_suppressions.MAX_EMAIL)]


def _str(value: Decimal) -> str:
    return format(value, "f")


# --- bodies ---------------------------------------------------------------------------------------------------
class UserPatch(StrictBody):
    # Which roles and statuses exist and may be set is the service's to say (422 validation_error).
    role: Annotated[str, StringConstraints(min_length=1, max_length=16)] | None = None
    status: Annotated[str, StringConstraints(min_length=1, max_length=16)] | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> UserPatch:
        # An explicit null is not "leave it": it would be silently ignored.
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"{name} may not be null")
        return self


# --- answers --------------------------------------------------------------------------------------------------
class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the service's UserView (ProfileOut: ProfileView)

    id: uuid.UUID
    email: str
    name: str | None
    username: str | None
    role: str
    status: str
    tier: str
    email_verified: bool
    two_factor_enabled: bool
    erased: bool
    created_at: datetime
    last_login_at: datetime | None
    deleted_at: datetime | None


class UserPageOut(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


class ProfileOut(UserOut):
    image: str | None
    timezone: str
    language: str
    clerk_id: str | None
    stripe_customer_id: str | None
    trial_started_at: datetime | None
    trial_ends_at: datetime | None
    trial_used: bool
    downgrade_count: int
    last_plan_change_at: datetime | None
    updated_at: datetime


class BalanceOut(BaseModel):
    balance: str
    held: str
    debt: str
    floor: str
    bonus_auto_use: bool


class PlanOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the service's PlanView

    tier: str
    name: str | None


class SubscriptionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # read from the service's SubscriptionView

    id: uuid.UUID
    provider: str
    status: str
    tier: str | None
    interval: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    created_at: datetime


class OrderLineOut(BaseModel):
    id: uuid.UUID
    order_number: str
    status: str
    payment_status: str
    total_amount: str
    currency: str
    created_at: datetime


class PurchaseLineOut(BaseModel):
    id: uuid.UUID
    provider: str
    package_name: str | None
    credits: str
    amount: str
    currency: str
    status: str
    created_at: datetime


class UserDetailOut(BaseModel):
    profile: ProfileOut
    balance: BalanceOut | None
    plan: PlanOut
    subscription: SubscriptionOut | None
    recent_orders: list[OrderLineOut]
    recent_purchases: list[PurchaseLineOut]
    open_tickets: int  # OPEN or IN_PROGRESS


class ExportOut(BaseModel):
    user_id: uuid.UUID
    generated_at: datetime
    profile: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]]
    truncated: list[str]


class ExportLinkOut(BaseModel):
    """An export too large for one response: the same JSON, stored, behind a short-lived download URL."""

    user_id: uuid.UUID
    generated_at: datetime
    truncated: list[str]
    download_url: str
    expires_at: datetime
    bytes: int


class SuppressionOut(BaseModel):
    email: str
    reason: str
    mail_event_id: uuid.UUID | None
    created_at: datetime


class SuppressionPageOut(BaseModel):
    items: list[SuppressionOut]
    next_cursor: str | None


class EraseOut(BaseModel):
    user_id: uuid.UUID
    erased_at: datetime
    already_erased: bool
    removed: dict[str, int]
    files_removed: int
    exports_removed: int


def _detail_out(detail: user_admin.UserDetail) -> UserDetailOut:
    # Amounts leave as decimal strings, so these lines are spelled out; the rest is read from the views.
    account = detail.account
    balance = None
    if account is not None:
        balance = BalanceOut(
            balance=_str(account.balance),
            held=_str(account.held),
            debt=_str(account.debt),
            floor=_str(account.floor),
            bonus_auto_use=account.bonus_auto_use,
        )
    orders = [
        OrderLineOut(
            id=o.id,
            order_number=o.order_number,
            status=o.status,
            payment_status=o.payment_status,
            total_amount=_str(o.total_amount),
            currency=o.currency,
            created_at=o.created_at,
        )
        for o in detail.orders
    ]
    purchases = [
        PurchaseLineOut(
            id=p.id,
            provider=p.provider,
            package_name=p.package_name,
            credits=_str(p.credits),
            amount=_str(p.amount),
            currency=p.currency,
            status=p.status,
            created_at=p.created_at,
        )
        for p in detail.purchases
    ]
    return UserDetailOut(
        profile=ProfileOut.model_validate(detail.profile),
        balance=balance,
        plan=PlanOut.model_validate(detail.plan),
        subscription=SubscriptionOut.model_validate(detail.subscription) if detail.subscription is not None else None,
        recent_orders=orders,
        recent_purchases=purchases,
        open_tickets=detail.open_tickets,
    )


# --- routes ---------------------------------------------------------------------------------------------------
@app.get(
    "/admin/users",
    summary="Search users (email, name or username contains `q`, any case), newest first",
    responses=documented_errors({403: "forbidden (ADMIN or SUPPORT)", 422: "validation_failed"}),
)
def list_users(
    q: SearchText = None,
    status: Word = None,
    role: Word = None,
    tier: Word = None,
    created_since: OptionalTimestampQuery = None,
    created_until: OptionalTimestampQuery = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> UserPageOut:
    filters = user_admin.UserFilters(
        q=q, status=status, role=role, tier=tier, created_since=created_since, created_until=created_until
    )
    page = user_admin.list_users(UnitOfWork(), current_actor(app), filters, cursor=cursor, limit=limit)
    return UserPageOut(items=[UserOut.model_validate(u) for u in page.items], next_cursor=page.next_cursor)


@app.get(
    "/admin/users/<user_id>",
    summary="A user's profile, balance, plan and subscription, recent orders and purchases, open tickets",
    responses=documented_errors({403: "forbidden (ADMIN or SUPPORT)", 404: "user_not_found"}),
)
def get_user(user_id: uuid.UUID) -> UserDetailOut:
    return _detail_out(user_admin.user_detail(UnitOfWork(), current_actor(app), user_id))


@app.patch(
    "/admin/users/<user_id>",
    summary="Change a user's role and/or status; SUSPENDED revokes every session and API key at once",
    responses=documented_errors(
        {
            403: "forbidden (ADMIN)",
            404: "user_not_found",
            409: "cannot_change_own_access, last_admin or user_erased",
            422: "validation_failed",
        }
    ),
)
def update_user(user_id: uuid.UUID, body: UserPatch) -> UserOut:
    user = user_admin.update_user(UnitOfWork(), current_actor(app), user_id, role=body.role, status=body.status)
    return UserOut.model_validate(user)


@app.post(
    "/admin/users/<user_id>/export",
    summary="GDPR export: everything kept about the user, as JSON (no secrets or hashes); a large one as a "
    "short-lived download URL of that JSON",
    responses=documented_errors(
        {
            403: "forbidden (ADMIN)",
            404: "user_not_found",
            409: "user_erased (erased while a large export was being stored)",
            503: "storage_unavailable",
        }
    ),
)
def export_user(user_id: uuid.UUID) -> ExportOut | ExportLinkOut:
    found = gdpr.export_user(UnitOfWork(), get_storage(), current_actor(app), user_id)
    if isinstance(found, gdpr.StoredExport):
        return ExportLinkOut(
            user_id=found.user_id,
            generated_at=found.generated_at,
            truncated=found.truncated,
            download_url=found.download_url,
            expires_at=found.expires_at,
            bytes=found.bytes,
        )
    return ExportOut(
        user_id=found.user_id,
        generated_at=found.generated_at,
        profile=found.profile,
        sections=found.sections,
        truncated=found.truncated,
    )


@app.post(
    "/admin/users/<user_id>/erase",
    summary="GDPR erasure: anonymise the person, remove credentials and files, keep the ledger and orders",
    responses=documented_errors(
        {
            403: "forbidden (ADMIN)",
            404: "user_not_found",
            409: "cannot_change_own_access, last_admin or subscription_still_billing",
        }
    ),
)
def erase_user(user_id: uuid.UUID) -> EraseOut:
    done = gdpr.erase_user(UnitOfWork(), get_storage(), current_actor(app), user_id)
    return EraseOut(
        user_id=done.user_id,
        erased_at=done.erased_at,
        already_erased=done.already_erased,
        removed=done.removed,
        files_removed=done.files_removed,
        exports_removed=done.exports_removed,
    )


def _suppression_out(found: email_suppressions.Suppression) -> SuppressionOut:
    return SuppressionOut(
        email=found.email, reason=found.reason, mail_event_id=found.mail_event_id, created_at=found.created_at
    )


@app.get(
    "/admin/email-suppressions",
    summary="Addresses that get only essential mail (bounced for good or complained), in address order",
    responses=documented_errors({403: "forbidden (ADMIN)", 422: "validation_failed"}),
)
def list_email_suppressions(
    email: EmailQuery = None, reason: Word = None, cursor: Cursor = None, limit: Limit = 20
) -> SuppressionPageOut:
    page = email_suppressions.list_suppressions(
        UnitOfWork(), current_actor(app), email=email, reason=reason, cursor=cursor, limit=limit
    )
    return SuppressionPageOut(items=[_suppression_out(s) for s in page.items], next_cursor=page.next_cursor)


@app.delete(
    "/admin/email-suppressions/<email>",
    summary="Take an address off the suppression list: it gets every kind of mail again (audited)",
    responses=documented_errors(
        {403: "forbidden (ADMIN)", 404: "email_suppression_not_found", 422: "validation_failed"}, success=204
    ),
)
def remove_email_suppression(email: EmailPath) -> Response[str]:
    email_suppressions.remove_suppression(UnitOfWork(), current_actor(app), email)
    return Response(status_code=204, body="")


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
