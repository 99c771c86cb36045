"""The support desk (seed 004 tickets): customers open tickets and reply on their own; staff (SUPPORT, ADMIN) see
every ticket with the customer's context, assign, move the status, and reply or write internal notes.

Rules:
- A customer sees only their own tickets (another's id is "not found") and never an internal note.
- Status moves forward OPEN -> IN_PROGRESS -> RESOLVED -> CLOSED (steps may be skipped); staff may take a RESOLVED
  ticket back to IN_PROGRESS; CLOSED is final and takes no more replies (409 `ticket_closed`; staff may still
  add internal notes). A customer's reply to a RESOLVED ticket reopens it (OPEN, resolved_at cleared).
- Only an active SUPPORT or ADMIN user may be assigned.
- A staff change (status, priority, assignee, reply, note) is audited with old and new values in its transaction.
- New replies are mailed to the other side after the commit, through the mail service (its anti-spam window: one
  message of a type to an address per MAIL_MIN_INTERVAL_SECONDS): a staff reply to the customer (a note never);
  a customer's reply to the assignee, or, unassigned, to the `support_inbox_email` setting (empty: nobody).
- A ticket answer carries its latest MESSAGES_SHOWN messages, oldest first, and `messages_next_cursor` when older
  ones exist; the message list pages over all of them newest first by id (ids are UUIDv7, increasing in creation
  order), so that cursor goes on with the messages just older than the answer's. A customer's list holds no
  internal note at all (not filtered after the page is cut: page sizes and cursors say nothing of notes).
- A message cursor is signed for its ticket and its side (customer or staff): another ticket's, another list's or
  the other side's cursor is 400 `invalid_cursor`.
- Answers are views (frozen dataclasses of plain values made inside the unit of work), never ORM rows.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from tollgate import system_config
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import utcnow
from tollgate.errors import InvalidAssignee, InvalidTicketTransition, TicketClosed, TicketNotFound, ValidationFailed
from tollgate.mail import OutgoingMail, send_mail
from tollgate.models.commerce import Order
from tollgate.models.credits import CreditAccount, CreditTransaction
from tollgate.models.payments import Purchase
from tollgate.models.support import TICKET_PRIORITIES, TICKET_STATUSES, SupportTicket, TicketMessage
from tollgate.models.users import User, UserRole, UserStatus
from tollgate.pagination import Page, check_limit, decode_cursor, encode_cursor, keyset_page
from tollgate.services.authz import ADMIN, SUPPORT, Actor, audit, require_role
from tollgate.services.user_admin import OrderSummary, PurchaseSummary, order_summary, purchase_summary

# Where each status may move on a staff change (a customer's reply reopens RESOLVED -> OPEN on its own).
TRANSITIONS: Final[dict[str, frozenset[str]]] = {
    "OPEN": frozenset({"IN_PROGRESS", "RESOLVED", "CLOSED"}),
    "IN_PROGRESS": frozenset({"RESOLVED", "CLOSED"}),
    "RESOLVED": frozenset({"IN_PROGRESS", "CLOSED"}),
    "CLOSED": frozenset(),
}
STAFF_ROLES = frozenset({UserRole.SUPPORT.value, UserRole.ADMIN.value})
MESSAGES_SHOWN = 200  # the latest messages a ticket answer carries
CONTEXT_ROWS = 10  # recent orders, purchases and ledger entries shown to the agent
SUBJECT_MAX = 255  # email_logs.subject
# Control characters and line/paragraph separators: what a mail header may not carry.
CONTROL_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


# --- views: plain values made inside the unit of work (no ORM row outlives its session) ------------------------
@dataclass(frozen=True, slots=True)
class TicketView:
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


@dataclass(frozen=True, slots=True)
class MessageView:
    id: uuid.UUID
    ticket_id: uuid.UUID
    user_id: uuid.UUID
    from_staff: bool
    is_internal: bool
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TicketThread:
    """A ticket with the latest messages its reader may see (a customer: no internal note), oldest first, and the
    cursor of the message list for the older ones (None: `messages` holds them all)."""

    ticket: TicketView
    messages: tuple[MessageView, ...]
    messages_next_cursor: str | None


@dataclass(frozen=True, slots=True)
class CustomerView:
    id: uuid.UUID
    email: str
    name: str | None
    role: str
    status: str
    tier: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LedgerEntryView:
    id: uuid.UUID
    type: str
    amount: Decimal
    balance_after: Decimal
    operation: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CustomerContext:
    customer: CustomerView
    balance: Decimal
    held: Decimal
    debt: Decimal
    orders: tuple[OrderSummary, ...]
    purchases: tuple[PurchaseSummary, ...]
    transactions: tuple[LedgerEntryView, ...]


@dataclass(frozen=True, slots=True)
class StaffTicketView:
    ticket: TicketView
    messages: tuple[MessageView, ...]
    messages_next_cursor: str | None
    context: CustomerContext


def _ticket_view(t: SupportTicket) -> TicketView:
    return TicketView(
        id=t.id, customer_id=t.customer_id, assignee_id=t.assignee_id, subject=t.subject, description=t.description,
        status=t.status, priority=t.priority, created_at=t.created_at, updated_at=t.updated_at,
        resolved_at=t.resolved_at, closed_at=t.closed_at,
    )  # fmt: skip


def _message_view(m: TicketMessage) -> MessageView:
    return MessageView(
        id=m.id, ticket_id=m.ticket_id, user_id=m.user_id, from_staff=m.from_staff, is_internal=m.is_internal,
        content=m.content, created_at=m.created_at,
    )  # fmt: skip


def _customer_view(u: User) -> CustomerView:
    return CustomerView(
        id=u.id, email=u.email, name=u.name, role=u.role, status=u.status, tier=u.tier, created_at=u.created_at
    )


def _ledger_entry_view(t: CreditTransaction) -> LedgerEntryView:
    return LedgerEntryView(
        id=t.id, type=t.type, amount=t.amount, balance_after=t.balance_after, operation=t.operation,
        created_at=t.created_at,
    )  # fmt: skip


def _ticket_page(page: Page[SupportTicket]) -> Page[TicketView]:
    return Page(items=[_ticket_view(t) for t in page.items], next_cursor=page.next_cursor)


def _check_choice(field: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise ValidationFailed(f"{field} is one of {', '.join(allowed)}", details={"field": field})


def _locked_ticket(session: Session, ticket_id: uuid.UUID, *, customer_id: uuid.UUID | None = None) -> SupportTicket:
    statement = select(SupportTicket).where(SupportTicket.id == ticket_id).with_for_update()
    if customer_id is not None:  # the customer's routes: another's ticket does not exist for them
        statement = statement.where(SupportTicket.customer_id == customer_id)
    ticket = session.execute(statement).scalar_one_or_none()
    if ticket is None:
        raise TicketNotFound("no such ticket", details={"ticket_id": str(ticket_id)})
    return ticket


def _message_scope(ticket_id: uuid.UUID, *, internal: bool) -> str:
    # The list's order plus its ticket and side: a cursor pages only the list that issued it.
    return f"ticket_messages.id:desc:ticket={ticket_id}:{'staff' if internal else 'customer'}"


def _message_page(
    session: Session, ticket_id: uuid.UUID, *, internal: bool, after: uuid.UUID | None, size: int
) -> Page[MessageView]:
    """Up to `size` of the ticket's messages its reader may see, newest first, older than `after`."""
    statement = select(TicketMessage).where(TicketMessage.ticket_id == ticket_id)
    if not internal:  # in the statement, so a customer's page is full-sized and its cursor a public message's
        statement = statement.where(TicketMessage.is_internal.is_(False))
    if after is not None:
        statement = statement.where(TicketMessage.id < after)
    rows = session.execute(statement.order_by(TicketMessage.id.desc()).limit(size + 1)).scalars().all()
    items = rows[:size]
    more = len(rows) > size
    next_cursor = encode_cursor(_message_scope(ticket_id, internal=internal), [items[-1].id]) if more else None
    return Page(items=[_message_view(m) for m in items], next_cursor=next_cursor)


def _latest_messages(
    session: Session, ticket_id: uuid.UUID, *, internal: bool
) -> tuple[tuple[MessageView, ...], str | None]:
    """A ticket answer's messages (the latest MESSAGES_SHOWN, oldest first) and the cursor for older ones."""
    page = _message_page(session, ticket_id, internal=internal, after=None, size=MESSAGES_SHOWN)
    return tuple(reversed(page.items)), page.next_cursor


def _message_cursor(ticket_id: uuid.UUID, cursor: str | None, *, internal: bool) -> uuid.UUID | None:
    if not cursor:
        return None
    after: uuid.UUID = decode_cursor(cursor, _message_scope(ticket_id, internal=internal), "u")[0]
    return after


def _ticket_link(ticket: SupportTicket, *, staff: bool) -> str:
    base = get_settings().app_url.rstrip("/")
    return f"{base}/{'admin/' if staff else ''}support/tickets/{ticket.id}"


def _subject(prefix: str, ticket: SupportTicket) -> str:
    # The route refuses control characters in a subject; a line break here would fail every mail of the ticket.
    subject = "".join(" " if unicodedata.category(c) in CONTROL_CATEGORIES else c for c in ticket.subject)
    return f"{prefix}{subject}"[:SUBJECT_MAX]


def _staff_address(session: Session, ticket: SupportTicket) -> tuple[str, uuid.UUID | None] | None:
    """Who hears of a customer's message: the assignee, or unassigned the support inbox setting (or nobody)."""
    if ticket.assignee_id is not None:
        assignee = session.get(User, ticket.assignee_id)
        if assignee is not None and _is_active_staff(assignee):
            return assignee.email, assignee.id
        # Demoted, suspended or erased since being assigned: the customer's words go to the desk instead.
    inbox = system_config.get_string(session, system_config.SUPPORT_INBOX_EMAIL)
    return (inbox, None) if inbox else None


def _to_staff(session: Session, ticket: SupportTicket, message: TicketMessage | None, kind: str) -> OutgoingMail | None:
    address = _staff_address(session, ticket)
    if address is None:
        return None
    body = message.content if message is not None else ticket.description
    opened = kind == "support_ticket_opened"
    return OutgoingMail(
        to=address[0],
        type=kind,
        subject=_subject("New ticket: " if opened else "Customer reply: ", ticket),
        text=f"{'A customer opened a ticket' if opened else 'The customer replied'}:\n\n{body}\n\n"
        f"{_ticket_link(ticket, staff=True)}\n",
        user_id=address[1],
        metadata={"ticket_id": str(ticket.id), **({"message_id": str(message.id)} if message else {})},
    )


def _to_customer(session: Session, ticket: SupportTicket, message: TicketMessage) -> OutgoingMail | None:
    customer = session.get(User, ticket.customer_id)
    if customer is None or customer.deleted_at is not None:
        return None
    return OutgoingMail(
        to=customer.email,
        type="support_reply",
        subject=_subject("Re: ", ticket),
        text=f"Support replied to your ticket:\n\n{message.content}\n\nReply at {_ticket_link(ticket, staff=False)}\n",
        user_id=customer.id,
        metadata={"ticket_id": str(ticket.id), "message_id": str(message.id)},
    )


def _send(uow: UnitOfWork, mail: OutgoingMail | None) -> None:
    if mail is not None:
        send_mail(uow, mail)


# --- the customer's own tickets -------------------------------------------------------------------------------
def open_ticket(
    uow: UnitOfWork, customer_id: uuid.UUID, *, subject: str, description: str, priority: str | None = None
) -> TicketThread:
    _check_choice("priority", priority, TICKET_PRIORITIES)
    with uow:
        session = uow.session
        ticket = SupportTicket(
            customer_id=customer_id, subject=subject, description=description, priority=priority or "MEDIUM",
            status="OPEN", metadata_={},
        )  # fmt: skip
        session.add(ticket)
        session.flush()
        mail = _to_staff(session, ticket, None, "support_ticket_opened")
        view = TicketThread(_ticket_view(ticket), (), None)
        uow.commit()
    _send(uow, mail)
    return view


def list_own_tickets(
    uow: UnitOfWork, customer_id: uuid.UUID, *, status: str | None, cursor: str | None, limit: int | None
) -> Page[TicketView]:
    _check_choice("status", status, TICKET_STATUSES)
    statement = select(SupportTicket).where(SupportTicket.customer_id == customer_id)
    if status is not None:
        statement = statement.where(SupportTicket.status == status)
    with uow:
        return _ticket_page(
            keyset_page(uow.session, statement, SupportTicket.id, cursor=cursor, limit=limit, descending=True)
        )


def own_ticket(uow: UnitOfWork, customer_id: uuid.UUID, ticket_id: uuid.UUID) -> TicketThread:
    with uow:
        ticket = uow.session.execute(
            select(SupportTicket).where(SupportTicket.id == ticket_id, SupportTicket.customer_id == customer_id)
        ).scalar_one_or_none()
        if ticket is None:
            raise TicketNotFound("no such ticket", details={"ticket_id": str(ticket_id)})
        messages, older = _latest_messages(uow.session, ticket_id, internal=False)
        return TicketThread(_ticket_view(ticket), messages, older)


def own_ticket_messages(
    uow: UnitOfWork, customer_id: uuid.UUID, ticket_id: uuid.UUID, *, cursor: str | None, limit: int | None
) -> Page[MessageView]:
    """The public messages of one of the customer's tickets, newest first (another's ticket is not found)."""
    size = check_limit(limit)
    after = _message_cursor(ticket_id, cursor, internal=False)
    with uow:
        owned = uow.session.execute(
            select(SupportTicket.id).where(SupportTicket.id == ticket_id, SupportTicket.customer_id == customer_id)
        ).scalar_one_or_none()
        if owned is None:
            raise TicketNotFound("no such ticket", details={"ticket_id": str(ticket_id)})
        return _message_page(uow.session, ticket_id, internal=False, after=after, size=size)


def customer_reply(uow: UnitOfWork, customer_id: uuid.UUID, ticket_id: uuid.UUID, *, content: str) -> MessageView:
    """The customer's public reply: refused on a CLOSED ticket, reopens a RESOLVED one, mailed to staff."""
    with uow:
        session = uow.session
        ticket = _locked_ticket(session, ticket_id, customer_id=customer_id)
        now = utcnow()  # after the lock: the history's times follow the order the changes took
        if ticket.status == "CLOSED":
            raise TicketClosed("the ticket is closed: open a new one", details={"ticket_id": str(ticket_id)})
        if ticket.status == "RESOLVED":
            ticket.status = "OPEN"
            ticket.resolved_at = None
        ticket.updated_at = now
        message = TicketMessage(
            ticket_id=ticket.id, user_id=customer_id, content=content, is_internal=False, from_staff=False,
            created_at=now,
        )  # fmt: skip
        session.add(message)
        session.flush()
        mail = _to_staff(session, ticket, message, "support_customer_reply")
        view = _message_view(message)
        uow.commit()
    _send(uow, mail)
    return view


# --- the staff desk -------------------------------------------------------------------------------------------
def list_tickets(
    uow: UnitOfWork,
    actor: Actor,
    *,
    status: str | None = None,
    priority: str | None = None,
    assignee_id: uuid.UUID | None = None,
    customer_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Page[TicketView]:
    """Every ticket, newest first, filtered by status, priority, assignee and customer."""
    require_role(actor, ADMIN, SUPPORT)
    _check_choice("status", status, TICKET_STATUSES)
    _check_choice("priority", priority, TICKET_PRIORITIES)
    statement = select(SupportTicket)
    if status is not None:
        statement = statement.where(SupportTicket.status == status)
    if priority is not None:
        statement = statement.where(SupportTicket.priority == priority)
    if assignee_id is not None:
        statement = statement.where(SupportTicket.assignee_id == assignee_id)
    if customer_id is not None:
        statement = statement.where(SupportTicket.customer_id == customer_id)
    with uow:
        return _ticket_page(
            keyset_page(uow.session, statement, SupportTicket.id, cursor=cursor, limit=limit, descending=True)
        )


def _context(session: Session, customer_id: uuid.UUID) -> CustomerContext:
    customer = session.get(User, customer_id)
    if customer is None:  # the foreign key keeps the customer; defensive
        raise TicketNotFound("the ticket's customer is gone", details={"customer_id": str(customer_id)})
    account = session.get(CreditAccount, customer_id)
    orders = session.execute(
        select(Order).where(Order.user_id == customer_id).order_by(Order.id.desc()).limit(CONTEXT_ROWS)
    ).scalars()
    purchases = session.execute(
        select(Purchase)
        .where(Purchase.user_id == customer_id)
        .order_by(Purchase.created_at.desc(), Purchase.id.desc())
        .limit(CONTEXT_ROWS)
    ).scalars()
    transactions = session.execute(
        select(CreditTransaction)
        .where(CreditTransaction.user_id == customer_id)
        .order_by(CreditTransaction.created_at.desc(), CreditTransaction.id.desc())
        .limit(CONTEXT_ROWS)
    ).scalars()
    zero = Decimal(0)
    return CustomerContext(
        customer=_customer_view(customer),
        balance=account.balance if account else zero,
        held=account.held if account else zero,
        debt=account.debt if account else zero,
        orders=tuple(order_summary(o) for o in orders),
        purchases=tuple(purchase_summary(p) for p in purchases),
        transactions=tuple(_ledger_entry_view(t) for t in transactions),
    )


def staff_ticket(uow: UnitOfWork, actor: Actor, ticket_id: uuid.UUID) -> StaffTicketView:
    """One ticket with its latest messages (internal notes included) and the customer's recent history."""
    require_role(actor, ADMIN, SUPPORT)
    with uow:
        session = uow.session
        ticket = session.get(SupportTicket, ticket_id)
        if ticket is None:
            raise TicketNotFound("no such ticket", details={"ticket_id": str(ticket_id)})
        messages, older = _latest_messages(session, ticket_id, internal=True)
        return StaffTicketView(_ticket_view(ticket), messages, older, _context(session, ticket.customer_id))


def staff_ticket_messages(
    uow: UnitOfWork, actor: Actor, ticket_id: uuid.UUID, *, cursor: str | None, limit: int | None
) -> Page[MessageView]:
    """Every message of a ticket, internal notes included, newest first."""
    require_role(actor, ADMIN, SUPPORT)
    size = check_limit(limit)
    after = _message_cursor(ticket_id, cursor, internal=True)
    with uow:
        if uow.session.get(SupportTicket, ticket_id) is None:
            raise TicketNotFound("no such ticket", details={"ticket_id": str(ticket_id)})
        return _message_page(uow.session, ticket_id, internal=True, after=after, size=size)


def _is_active_staff(user: User) -> bool:
    return user.role in STAFF_ROLES and user.status == UserStatus.ACTIVE.value and user.deleted_at is None


def _check_assignee(session: Session, assignee_id: uuid.UUID) -> None:
    user = session.get(User, assignee_id)
    if user is None or not _is_active_staff(user):
        raise InvalidAssignee(
            "a ticket is assigned to an active SUPPORT or ADMIN user", details={"assignee_id": str(assignee_id)}
        )


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, uuid.UUID) else value


def update_ticket(uow: UnitOfWork, actor: Actor, ticket_id: uuid.UUID, changes: Mapping[str, Any]) -> TicketView:
    """Change a ticket's `status`, `priority` and/or `assignee_id` (None: unassigned). Fields not given stay."""
    require_role(actor, ADMIN, SUPPORT)
    unknown = set(changes) - {"status", "priority", "assignee_id"}
    if unknown or not changes:
        raise ValidationFailed("give status, priority or assignee_id", details={"fields": sorted(unknown)})
    status, priority = changes.get("status"), changes.get("priority")
    if any(field in changes and changes[field] is None for field in ("status", "priority")):
        raise ValidationFailed("status and priority cannot be null")
    _check_choice("status", status, TICKET_STATUSES)
    _check_choice("priority", priority, TICKET_PRIORITIES)
    with uow:
        session = uow.session
        ticket = _locked_ticket(session, ticket_id)
        now = utcnow()  # after the lock: the history's times follow the order the changes took
        old: dict[str, Any] = {}
        new: dict[str, Any] = {}
        if status is not None and status != ticket.status:
            allowed = TRANSITIONS[ticket.status]
            if status not in allowed:
                raise InvalidTicketTransition(
                    f"a {ticket.status} ticket cannot become {status}",
                    details={"from": ticket.status, "to": status, "allowed": sorted(allowed)},
                )
            old["status"], new["status"] = ticket.status, status
            ticket.status = status
            if status == "RESOLVED":
                ticket.resolved_at = now
            elif status == "IN_PROGRESS":
                ticket.resolved_at = None
            elif status == "CLOSED":
                ticket.closed_at = now
        if priority is not None and priority != ticket.priority:
            old["priority"], new["priority"] = ticket.priority, priority
            ticket.priority = priority
        if "assignee_id" in changes and changes["assignee_id"] != ticket.assignee_id:
            assignee = changes["assignee_id"]
            if assignee is not None:
                _check_assignee(session, assignee)
            old["assignee_id"], new["assignee_id"] = _plain(ticket.assignee_id), _plain(assignee)
            ticket.assignee_id = assignee
        if new:
            ticket.updated_at = now
            session.flush()
            audit(
                session, actor, action="support.ticket_update", target_type="support_ticket",
                target_id=str(ticket.id), old_values=old, new_values=new,
            )  # fmt: skip
        view = _ticket_view(ticket)
        uow.commit()
    return view


def staff_reply(
    uow: UnitOfWork, actor: Actor, ticket_id: uuid.UUID, *, content: str, internal: bool = False
) -> MessageView:
    """A staff reply (mailed to the customer) or, `internal`, a note only staff ever see (never mailed)."""
    require_role(actor, ADMIN, SUPPORT)
    if actor.user_id is None:  # staff are users (the operator has no desk)
        raise ValidationFailed("a reply needs a user")
    with uow:
        session = uow.session
        ticket = _locked_ticket(session, ticket_id)
        now = utcnow()  # after the lock: the history's times follow the order the changes took
        if ticket.status == "CLOSED" and not internal:
            raise TicketClosed("the ticket is closed: no more replies", details={"ticket_id": str(ticket_id)})
        message = TicketMessage(
            ticket_id=ticket.id, user_id=actor.user_id, content=content, is_internal=internal, from_staff=True,
            created_at=now,
        )  # fmt: skip
        session.add(message)
        ticket.updated_at = now
        session.flush()
        audit(
            session, actor, action="support.ticket_note" if internal else "support.ticket_reply",
            target_type="support_ticket", target_id=str(ticket.id), old_values=None,
            new_values={"message_id": str(message.id), "internal": internal, "length": len(content)},
        )  # fmt: skip
        mail = None if internal else _to_customer(session, ticket, message)
        view = _message_view(message)
        uow.commit()
    _send(uow, mail)
    return view
