"""Support (API.md "Back office"): the caller's own tickets and replies; the staff desk (every ticket, the
customer's context, assignment, status, replies and internal notes); goodwill credits; run-time system settings.
Each route validates its input, calls one service function and returns a typed model. Amounts are decimal
strings."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StringConstraints, WithJsonSchema

from tollgate import system_config as config_values
from tollgate.db import UnitOfWork
from tollgate.http.api import create_app, current_actor, current_principal
from tollgate.http.edge import Cursor, Limit, StrictBody, documented_errors, idempotency_key
from tollgate.ledger import SCALE
from tollgate.models.support import CONFIG_DESCRIPTION_MAX_LENGTH, SUBJECT_MAX_LENGTH, TEXT_MAX_LENGTH
from tollgate.observability import logger, metrics, tracer
from tollgate.services import goodwill, support_desk, system_config

app = create_app("support")

Status = Literal["OPEN", "IN_PROGRESS", "RESOLVED", "CLOSED"]
Priority = Literal["LOW", "MEDIUM", "HIGH", "URGENT"]
ConfigType = Literal["string", "number", "boolean", "json"]
# One line of text: a subject becomes a mail header, which may carry no line break or control character (C0, DEL,
# C1 and the Unicode line and paragraph separators), spelled out so every regex dialect (OpenAPI's too) reads it.
ONE_LINE = "^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$"
Subject = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=SUBJECT_MAX_LENGTH, pattern=ONE_LINE),
]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=TEXT_MAX_LENGTH)]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
CreditsIn = Annotated[Decimal, Field(gt=0, allow_inf_nan=False, max_digits=18, decimal_places=4)]


def _credits_str(value: Decimal) -> str:
    return format(value.quantize(SCALE), "f")


def _decimal_str(value: Decimal) -> str:
    return format(value, "f")


CreditsOut = Annotated[
    Decimal, PlainSerializer(_credits_str, return_type=str), WithJsonSchema({"type": "string", "example": "1.5000"})
]
DecimalOut = Annotated[
    Decimal, PlainSerializer(_decimal_str, return_type=str), WithJsonSchema({"type": "string", "example": "19.00"})
]


# --- bodies ---------------------------------------------------------------------------------------------------
class TicketIn(StrictBody):
    subject: Subject
    description: LongText
    priority: Priority | None = None


class CustomerMessageIn(StrictBody):
    content: LongText


class StaffMessageIn(StrictBody):
    content: LongText
    internal: bool = False


class TicketPatch(StrictBody):
    status: Status | None = None
    priority: Priority | None = None
    assignee_id: uuid.UUID | None = None  # null: unassigned


class GoodwillIn(StrictBody):
    amount: CreditsIn
    reason: Reason


class ConfigIn(StrictBody):
    value: Any  # of `type`: checked by the service (422 `invalid_config_value`)
    type: ConfigType
    description: Annotated[str, StringConstraints(max_length=CONFIG_DESCRIPTION_MAX_LENGTH)] | None = None


# --- answers --------------------------------------------------------------------------------------------------
class TicketOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    customer_id: uuid.UUID
    assignee_id: uuid.UUID | None
    subject: str
    description: str
    status: str
    priority: str
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
    closed_at: datetime | None


class TicketPageOut(BaseModel):
    items: list[TicketOut]
    next_cursor: str | None


class MessageOut(BaseModel):
    """A message the customer may see (internal notes never take this shape)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    from_staff: bool
    content: str
    created_at: datetime


class StaffMessageOut(MessageOut):
    is_internal: bool


class CustomerTicketOut(TicketOut):
    messages: list[MessageOut]  # the latest 200, oldest first
    # GET .../messages?cursor= with it: the messages older than the oldest in `messages` (null: none are older)
    messages_next_cursor: str | None


class MessagePageOut(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class StaffMessagePageOut(BaseModel):
    items: list[StaffMessageOut]
    next_cursor: str | None


class CustomerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    name: str | None
    role: str
    status: str
    tier: str
    created_at: datetime


class OrderSummaryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    order_number: str
    status: str
    payment_status: str
    total_amount: DecimalOut
    currency: str
    created_at: datetime


class PurchaseSummaryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    provider: str
    package_name: str | None
    credits: CreditsOut
    amount: DecimalOut
    currency: str
    status: str
    created_at: datetime


class LedgerEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    type: str
    amount: CreditsOut
    balance_after: CreditsOut
    operation: str | None
    created_at: datetime


class CustomerContextOut(BaseModel):
    customer: CustomerOut
    balance: CreditsOut
    held: CreditsOut
    debt: CreditsOut
    recent_orders: list[OrderSummaryOut]
    recent_purchases: list[PurchaseSummaryOut]
    recent_ledger_entries: list[LedgerEntryOut]


class StaffTicketOut(TicketOut):
    messages: list[StaffMessageOut]  # the latest 200, oldest first
    messages_next_cursor: str | None  # as CustomerTicketOut's, for GET /admin/support/tickets/{ticket_id}/messages
    context: CustomerContextOut


class GoodwillOut(BaseModel):
    transaction_id: uuid.UUID
    amount: CreditsOut
    balance: CreditsOut
    grant_id: uuid.UUID | None


class ConfigOut(BaseModel):
    key: str
    type: str
    value: Any  # number: a decimal string; string, boolean, json: as JSON
    description: str | None
    is_default: bool
    updated_by: uuid.UUID | None
    updated_at: datetime | None


class ConfigPageOut(BaseModel):
    items: list[ConfigOut]
    next_cursor: str | None


def _config_out(entry: config_values.Entry) -> ConfigOut:
    return ConfigOut(
        key=entry.key,
        type=entry.type,
        value=_json_value(entry.value),
        description=entry.description,
        is_default=entry.is_default,
        updated_by=entry.updated_by,
        updated_at=entry.updated_at,
    )


def _json_value(value: Any) -> Any:
    # Numbers leave as decimal strings, exact (inside JSON values too).
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _user_id() -> uuid.UUID:
    return current_principal(app).user_id


TICKET_ERRORS = {404: "No such ticket (or not the caller's)"}
MESSAGE_PAGE_ERRORS = {
    400: "Not a cursor this ticket's list issued (`invalid_cursor`)",
    404: "No such ticket (or not the caller's)",
    422: "limit outside 1-100 (`validation_error`)",
}
REPLY_ERRORS = {404: "No such ticket (or not the caller's)", 409: "The ticket is closed (`ticket_closed`)"}


# --- the caller's own tickets ---------------------------------------------------------------------------------
@app.post("/support/tickets", summary="Open a support ticket", responses=documented_errors({}, success=201))
def open_ticket(body: TicketIn) -> tuple[CustomerTicketOut, int]:
    view = support_desk.open_ticket(
        UnitOfWork(), _user_id(), subject=body.subject, description=body.description, priority=body.priority
    )
    out = CustomerTicketOut(
        **TicketOut.model_validate(view.ticket).model_dump(), messages=[], messages_next_cursor=None
    )
    return out, 201


@app.get("/support/tickets", summary="The caller's tickets, newest first")
def list_tickets(
    status: Annotated[Status | None, Query()] = None, cursor: Cursor = None, limit: Limit = 20
) -> TicketPageOut:
    page = support_desk.list_own_tickets(UnitOfWork(), _user_id(), status=status, cursor=cursor, limit=limit)
    return TicketPageOut(items=[TicketOut.model_validate(t) for t in page.items], next_cursor=page.next_cursor)


@app.get(
    "/support/tickets/<ticket_id>",
    summary="One of the caller's tickets with its replies",
    responses=documented_errors(TICKET_ERRORS),
)
def get_ticket(ticket_id: uuid.UUID) -> CustomerTicketOut:
    view = support_desk.own_ticket(UnitOfWork(), _user_id(), ticket_id)
    return CustomerTicketOut(
        **TicketOut.model_validate(view.ticket).model_dump(),
        messages=[MessageOut.model_validate(m) for m in view.messages],
        messages_next_cursor=view.messages_next_cursor,
    )


@app.get(
    "/support/tickets/<ticket_id>/messages",
    summary="The replies on one of the caller's tickets, newest first",
    responses=documented_errors(MESSAGE_PAGE_ERRORS),
)
def list_messages(ticket_id: uuid.UUID, cursor: Cursor = None, limit: Limit = 20) -> MessagePageOut:
    page = support_desk.own_ticket_messages(UnitOfWork(), _user_id(), ticket_id, cursor=cursor, limit=limit)
    return MessagePageOut(items=[MessageOut.model_validate(m) for m in page.items], next_cursor=page.next_cursor)


@app.post(
    "/support/tickets/<ticket_id>/messages",
    summary="Reply on one of the caller's tickets (reopens a resolved one)",
    responses=documented_errors(REPLY_ERRORS, success=201),
)
def reply(ticket_id: uuid.UUID, body: CustomerMessageIn) -> tuple[MessageOut, int]:
    message = support_desk.customer_reply(UnitOfWork(), _user_id(), ticket_id, content=body.content)
    return MessageOut.model_validate(message), 201


# --- the staff desk -------------------------------------------------------------------------------------------
@app.get("/admin/support/tickets", summary="Every ticket, newest first (staff)")
def admin_list_tickets(
    status: Annotated[Status | None, Query()] = None,
    priority: Annotated[Priority | None, Query()] = None,
    assignee_id: Annotated[uuid.UUID | None, Query()] = None,
    customer_id: Annotated[uuid.UUID | None, Query()] = None,
    cursor: Cursor = None,
    limit: Limit = 20,
) -> TicketPageOut:
    page = support_desk.list_tickets(
        UnitOfWork(), current_actor(app), status=status, priority=priority, assignee_id=assignee_id,
        customer_id=customer_id, cursor=cursor, limit=limit,
    )  # fmt: skip
    return TicketPageOut(items=[TicketOut.model_validate(t) for t in page.items], next_cursor=page.next_cursor)


@app.get(
    "/admin/support/tickets/<ticket_id>",
    summary="A ticket with internal notes and the customer's recent orders, purchases and ledger (staff)",
    responses=documented_errors(TICKET_ERRORS),
)
def admin_get_ticket(ticket_id: uuid.UUID) -> StaffTicketOut:
    view = support_desk.staff_ticket(UnitOfWork(), current_actor(app), ticket_id)
    context = view.context
    return StaffTicketOut(
        **TicketOut.model_validate(view.ticket).model_dump(),
        messages=[StaffMessageOut.model_validate(m) for m in view.messages],
        messages_next_cursor=view.messages_next_cursor,
        context=CustomerContextOut(
            customer=CustomerOut.model_validate(context.customer),
            balance=context.balance,
            held=context.held,
            debt=context.debt,
            recent_orders=[OrderSummaryOut.model_validate(o) for o in context.orders],
            recent_purchases=[PurchaseSummaryOut.model_validate(p) for p in context.purchases],
            recent_ledger_entries=[LedgerEntryOut.model_validate(t) for t in context.transactions],
        ),
    )


@app.get(
    "/admin/support/tickets/<ticket_id>/messages",
    summary="Every message of a ticket, internal notes marked, newest first (staff)",
    responses=documented_errors(MESSAGE_PAGE_ERRORS),
)
def admin_list_messages(ticket_id: uuid.UUID, cursor: Cursor = None, limit: Limit = 20) -> StaffMessagePageOut:
    page = support_desk.staff_ticket_messages(UnitOfWork(), current_actor(app), ticket_id, cursor=cursor, limit=limit)
    return StaffMessagePageOut(
        items=[StaffMessageOut.model_validate(m) for m in page.items], next_cursor=page.next_cursor
    )


@app.patch(
    "/admin/support/tickets/<ticket_id>",
    summary="Change a ticket's status, priority or assignee (staff)",
    responses=documented_errors(
        {404: "No such ticket", 409: "Not a transition the status allows", 422: "Not an active SUPPORT/ADMIN"}
    ),
)
def admin_update_ticket(ticket_id: uuid.UUID, body: TicketPatch) -> TicketOut:
    ticket = support_desk.update_ticket(
        UnitOfWork(), current_actor(app), ticket_id, body.model_dump(exclude_unset=True)
    )
    return TicketOut.model_validate(ticket)


@app.post(
    "/admin/support/tickets/<ticket_id>/messages",
    summary="Reply to the customer, or add an internal note (staff)",
    responses=documented_errors({404: "No such ticket", 409: "The ticket is closed"}, success=201),
)
def admin_reply(ticket_id: uuid.UUID, body: StaffMessageIn) -> tuple[StaffMessageOut, int]:
    message = support_desk.staff_reply(
        UnitOfWork(), current_actor(app), ticket_id, content=body.content, internal=body.internal
    )
    return StaffMessageOut.model_validate(message), 201


# --- goodwill credits -----------------------------------------------------------------------------------------
@app.post(
    "/support/users/<user_id>/goodwill",
    summary="Give a customer goodwill credits, up to the support_goodwill_cap setting (staff)",
    responses=documented_errors(
        {403: "Over the cap (`over_goodwill_cap`) or not staff", 404: "No such user"}, success=201
    ),
)
def grant_goodwill(user_id: uuid.UUID, body: GoodwillIn) -> tuple[GoodwillOut, int]:
    result = goodwill.grant_goodwill(
        UnitOfWork(), current_actor(app), user_id, amount=body.amount, reason=body.reason,
        idempotency_key=idempotency_key(app),
    )  # fmt: skip
    out = GoodwillOut(
        transaction_id=result.transaction_id, amount=result.amount, balance=result.balance, grant_id=result.grant_id
    )
    return out, 201


# --- system config --------------------------------------------------------------------------------------------
@app.get("/admin/system-config", summary="Every run-time setting, by key (known keys with their defaults)")
def admin_list_config(cursor: Cursor = None, limit: Limit = 20) -> ConfigPageOut:
    page = system_config.list_settings(UnitOfWork(), current_actor(app), cursor=cursor, limit=limit)
    return ConfigPageOut(items=[_config_out(e) for e in page.items], next_cursor=page.next_cursor)


@app.put(
    "/admin/system-config/<key>",
    summary="Set a run-time setting (known keys have a fixed type and bounds)",
    responses=documented_errors({422: "Not of its type, or outside the key's bounds (`invalid_config_value`)"}),
)
def admin_put_config(key: str, body: ConfigIn) -> ConfigOut:
    entry = system_config.put_setting(
        UnitOfWork(), current_actor(app), key, type_=body.type, value=body.value, description=body.description
    )
    return _config_out(entry)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
