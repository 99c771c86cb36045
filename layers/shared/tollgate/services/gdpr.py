"""GDPR (API.md "Back office", ADMIN only): one user's data as JSON, and erasure.

Export: every row Tollgate keeps about the person, section by section, as plain JSON values (decimals and times
as strings). Hashes and secrets (password, TOTP, refresh-token, key and code hashes) never appear; staff-only
order notes and internal ticket notes neither, nor what the audit trail holds of other people (see
`audit_view`; a staff member's replies on other customers' tickets are not in the staff member's export). A
section holds at most `EXPORT_MAX_ROWS` rows, newest first, and names itself in `truncated` when it holds more.
The answer is one Lambda response (at most 6 MB): an export whose JSON would take more than
`GDPR_EXPORT_INLINE_MAX_BYTES` of it is stored instead, as that very JSON, at `exports/<user>/<id>.json` in the
files store, and answered with a presigned GET valid `GDPR_EXPORT_URL_SECONDS` (S3 lifecycle removes it after a
day). Audited (`user.export`, saying which form): an inline export in its reading transaction, a stored one once
the object is stored (an export that failed to store leaves no audit row; its stray object nobody was given a URL
for expires with the rest). An erasure removes the person's stored exports, and an export that an erasure
overtook removes its own object and answers `UserErased`.

Erase: the person goes, the accounting stays.
- the user row stays (its id is what the ledger, grants, purchases, invoices, subscriptions, refunds and orders
  point at, and they are kept unchanged: the balance still reconciles); its email becomes a unique address
  under the reserved `.invalid` domain (the real one is free to register again), names, username and avatar
  are cleared (the Clerk id stays: a later Clerk event or token must find the erased row, not create it anew),
  the password hash and every second-factor secret removed, role USER, status DELETED (the authorizer and
  sign-in admit only ACTIVE and LOCKED accounts) and `deleted_at` set;
- sessions (with their IPs and user agents), API keys, OAuth links, every mailed token and code, recovery codes,
  sign-in challenges, the account's failed-sign-in counter, AI conversations and the auto top-up setting are
  deleted; stored answers of AI calls are cleared (the usage rows stay: they back the ledger);
- mail to the person (`email_logs` by user id or by address) keeps its type, status and times, with the
  recipient replaced and subject, error and metadata removed;
- support tickets and their messages are kept (the desk's history), as are product reviews (they show no name
  once the user row has none);
- files: every object and row, through `files.erase_user_files`, after the transaction above commits (the store
  is never called holding a row lock; the account is already unusable, so no new upload can start); and every
  stored export under `exports/<user>/`.
It refuses while a provider may still bill the person (`SubscriptionStillBilling`), an admin's own account
(`OwnAccessChange`) and the last active admin (`LastAdmin`). It is idempotent: a second call changes nothing in
the database, finishes removing files a first call could not, and is audited as a repeat. The audit row names
the user by id only (audit rows are append-only and would otherwise keep the address for ever).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, delete, func, inspect, or_, select, text, update
from sqlalchemy.orm import Session

from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.db.base import Base, new_id, utcnow
from tollgate.errors import SubscriptionStillBilling, UserErased
from tollgate.models.auth import (
    ApiKey,
    AuthSession,
    AuthThrottle,
    EmailLog,
    OAuthAccount,
    PasswordResetToken,
    RecoveryCode,
    SecurityLockToken,
    TwoFactorConfirmation,
    TwoFactorToken,
    VerificationToken,
)
from tollgate.models.auto_topup import AutoTopUpAttempt, AutoTopUpSetting
from tollgate.models.commerce import DiscountUsage, Order, OrderItem, ProductReview
from tollgate.models.credits import AuditLog, CreditAccount, CreditGrant, CreditHold, CreditTransaction
from tollgate.models.payments import Invoice, PaymentMethod, Purchase, Refund, Subscription, SubscriptionEvent
from tollgate.models.rag import AiConversation, AiMessage, AiUsage
from tollgate.models.storage import StorageObject
from tollgate.models.support import SupportTicket, TicketMessage
from tollgate.models.users import User, UserRole, UserStatus
from tollgate.payments.statuses import TERMINAL
from tollgate.services import authz, files
from tollgate.services.authz import ADMIN, Actor, require_role
from tollgate.services.user_admin import (
    current_admins,
    find_user,
    guard_access_loss,
    is_erased,
    lock_for_access_change,
    require_admin_now,
)
from tollgate.storage import WritableStorage

EXPORT_MAX_ROWS = 5000
EXPORT_PREFIX = "exports/"  # outside users' `users/` prefix: no file route can name it
EXPORT_CONTENT_TYPE = "application/json"
ERASED_DOMAIN = "erased.invalid"  # RFC 2606: never routable, so no mail can reach anyone
ERASED_SUBJECT = "[erased]"
# Columns that never leave the database, whichever table holds them.
SECRET_COLUMNS = frozenset(
    {"password_hash", "totp_secret", "totp_pending_secret", "totp_last_step", "refresh_token_hash", "key_hash",
     "token_hash", "code_hash", "code_verifier", "internal_notes"}
)  # fmt: skip
CANCELLED = frozenset({"canceled", "cancelled"})
OWN_ACCOUNT_ACTIONS = "auth."  # security events: the person acting on their own sessions, keys and sign-ins


def export_prefix(user_id: uuid.UUID) -> str:
    """Where the user's stored exports are (and only theirs: a user id is never a prefix of another)."""
    return f"{EXPORT_PREFIX}{user_id}/"


def erased_email(user_id: uuid.UUID) -> str:
    return f"erased-{user_id.hex}@{ERASED_DOMAIN}"


def plain(value: Any) -> Any:
    """A column value as JSON has it: decimals exact as strings, times in ISO 8601."""
    if isinstance(value, Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def row_dict(row: Base) -> dict[str, Any]:
    """Every column of `row` by its column name, secrets left out."""
    mapper = inspect(type(row))
    out: dict[str, Any] = {}
    for prop in mapper.column_attrs:
        name = prop.columns[0].name
        if name not in SECRET_COLUMNS:
            out[name] = plain(getattr(row, prop.key))
    return out


# --- export ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Export:
    user_id: uuid.UUID
    generated_at: datetime
    profile: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]]
    truncated: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StoredExport:
    """An export too large to answer inline: stored, and fetched with a short-lived URL."""

    user_id: uuid.UUID
    generated_at: datetime
    truncated: list[str]
    download_url: str
    expires_at: datetime
    bytes: int


def json_time(value: datetime) -> str:
    """A UTC time as the API writes one (pydantic's form: `Z`, not `+00:00`)."""
    return value.isoformat().replace("+00:00", "Z")


def export_document(export: Export) -> dict[str, Any]:
    """The export as the inline answer carries it: the same fields in the same order."""
    return {
        "user_id": str(export.user_id),
        "generated_at": json_time(export.generated_at),
        "profile": export.profile,
        "sections": export.sections,
        "truncated": export.truncated,
    }


def export_json(export: Export) -> bytes:
    """The inline answer's body, byte for byte: compact, non-ASCII escaped, as the resolver serialises it."""
    return json.dumps(export_document(export), separators=(",", ":")).encode("ascii")


def response_bytes(body: bytes) -> int:
    """How much of Lambda's response `body` would take: the response is JSON too, so the body is one JSON string,
    its quotes and backslashes escaped once more (the body is ASCII without control characters: nothing else is).
    Data full of quotes or backslashes can nearly double, which a bound on the body alone would miss."""
    return len(body) + body.count(b'"') + body.count(b"\\") + 2


def _sections(user_id: uuid.UUID) -> list[tuple[str, type[Base], ColumnElement[bool], Sequence[Any]]]:
    """(section, model, which rows, newest-first order) for everything kept about the user."""
    order_ids = select(Order.id).where(Order.user_id == user_id)
    conversation_ids = select(AiConversation.id).where(AiConversation.user_id == user_id)
    ticket_ids = select(SupportTicket.id).where(SupportTicket.customer_id == user_id)

    def newest(model: Any) -> Sequence[Any]:
        return (model.created_at.desc(), model.id.desc())

    return [
        ("sessions", AuthSession, AuthSession.user_id == user_id, newest(AuthSession)),
        ("api_keys", ApiKey, ApiKey.user_id == user_id, newest(ApiKey)),
        ("oauth_accounts", OAuthAccount, OAuthAccount.user_id == user_id, newest(OAuthAccount)),
        ("credit_account", CreditAccount, CreditAccount.user_id == user_id, (CreditAccount.user_id,)),
        ("ledger", CreditTransaction, CreditTransaction.user_id == user_id, newest(CreditTransaction)),
        ("grants", CreditGrant, CreditGrant.user_id == user_id, newest(CreditGrant)),
        ("holds", CreditHold, CreditHold.user_id == user_id, newest(CreditHold)),
        ("purchases", Purchase, Purchase.user_id == user_id, newest(Purchase)),
        ("subscriptions", Subscription, Subscription.user_id == user_id, newest(Subscription)),
        ("subscription_events", SubscriptionEvent, SubscriptionEvent.user_id == user_id, newest(SubscriptionEvent)),
        ("invoices", Invoice, Invoice.user_id == user_id, newest(Invoice)),
        ("refunds", Refund, Refund.user_id == user_id, newest(Refund)),
        ("payment_methods", PaymentMethod, PaymentMethod.user_id == user_id, newest(PaymentMethod)),
        ("orders", Order, Order.user_id == user_id, newest(Order)),
        ("order_items", OrderItem, OrderItem.order_id.in_(order_ids), newest(OrderItem)),
        ("discount_usages", DiscountUsage, DiscountUsage.user_id == user_id, newest(DiscountUsage)),
        ("reviews", ProductReview, ProductReview.user_id == user_id, newest(ProductReview)),
        ("auto_topup_settings", AutoTopUpSetting, AutoTopUpSetting.user_id == user_id, (AutoTopUpSetting.user_id,)),
        ("auto_topup_attempts", AutoTopUpAttempt, AutoTopUpAttempt.user_id == user_id, newest(AutoTopUpAttempt)),
        ("ai_usage", AiUsage, AiUsage.user_id == user_id, newest(AiUsage)),
        ("ai_conversations", AiConversation, AiConversation.user_id == user_id, newest(AiConversation)),
        ("ai_messages", AiMessage, AiMessage.conversation_id.in_(conversation_ids), newest(AiMessage)),
        ("support_tickets", SupportTicket, SupportTicket.customer_id == user_id, newest(SupportTicket)),
        (
            "ticket_messages",
            TicketMessage,
            # The messages of their own tickets (theirs and the replies they were sent); staff-only notes are not
            # theirs to read, and a staff member's replies on other customers' tickets are those customers' data.
            TicketMessage.ticket_id.in_(ticket_ids) & TicketMessage.is_internal.is_(False),
            newest(TicketMessage),
        ),
        ("files", StorageObject, StorageObject.user_id == user_id, newest(StorageObject)),
        ("email_logs", EmailLog, EmailLog.user_id == user_id, newest(EmailLog)),
        (
            "audit_logs",
            AuditLog,
            or_(AuditLog.actor_id == user_id, (AuditLog.target_type == "user") & (AuditLog.target_id == str(user_id))),
            newest(AuditLog),
        ),
    ]


def audit_view(row: AuditLog, user_id: uuid.UUID) -> dict[str, Any]:
    """An audit row as the person's export shows it: only what is theirs.
    - done to them by someone else: the staff member's IP address and browser are the staff member's data;
    - done by them (as staff) to anything but their own account, outside their own sign-in events: the fact stays
      (action, kind of target, time, their address), whom it was about and what changed is another person's."""
    out = row_dict(row)
    if row.actor_id is not None and row.actor_id != user_id:
        out["ip_address"] = out["user_agent"] = None
    about_them = row.target_type == "user" and row.target_id == str(user_id)
    if row.actor_id == user_id and not about_them and not row.action.startswith(OWN_ACCOUNT_ACTIONS):
        out["target_id"] = out["details"] = out["old_values"] = out["new_values"] = None
    return out


def export_user(uow: UnitOfWork, storage: WritableStorage, actor: Actor, user_id: uuid.UUID) -> Export | StoredExport:
    """The user's data as JSON values, read in one snapshot: inline when it fits one response (audited in the same
    transaction), else stored and linked (audited once stored; the store is called outside any transaction)."""
    require_role(actor, ADMIN)
    settings = get_settings()
    with uow:
        session = uow.session
        # One snapshot for every section; SET TRANSACTION lasts one transaction, so a pooler loses nothing.
        session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        require_admin_now(actor, current_admins(session, lock=False))
        user = find_user(session, user_id)
        erased_before = is_erased(user)
        profile = row_dict(user)
        profile["has_password"] = user.password_hash is not None
        sections: dict[str, list[dict[str, Any]]] = {}
        truncated: list[str] = []
        for name, model, where, order in _sections(user_id):
            rows = session.execute(select(model).where(where).order_by(*order).limit(EXPORT_MAX_ROWS + 1)).scalars()
            found = [audit_view(r, user_id) if isinstance(r, AuditLog) else row_dict(r) for r in rows]
            if len(found) > EXPORT_MAX_ROWS:
                truncated.append(name)
                found = found[:EXPORT_MAX_ROWS]
            sections[name] = found
        now = utcnow()
        export = Export(user_id=user_id, generated_at=now, profile=profile, sections=sections, truncated=truncated)
        body = export_json(export)
        counts = {name: len(found) for name, found in sections.items()}
        if response_bytes(body) <= settings.gdpr_export_inline_max_bytes:
            authz.audit(
                session, actor, action="user.export", target_type="user", target_id=str(user_id),
                details={"rows": counts, "truncated": truncated, "form": "inline", "bytes": len(body)}, now=now,
            )  # fmt: skip
            uow.commit()
            return export
    key = f"{export_prefix(user_id)}{new_id()}.json"
    storage.put(key, body, content_type=EXPORT_CONTENT_TYPE)
    with uow:
        # An erasure that committed since the snapshot may have looked for this user's exports before this one was
        # stored: the erased person's data must not stay behind it. The row lock orders the two: an erasure that
        # commits after this transaction lists its exports later still, so finds this one (stored already).
        status = uow.session.execute(select(User.status).where(User.id == user_id).with_for_update(read=True))
        erased_meanwhile = status.scalar_one() == UserStatus.DELETED and not erased_before
        if not erased_meanwhile:
            authz.audit(
                uow.session, actor, action="user.export", target_type="user", target_id=str(user_id),
                details={"rows": counts, "truncated": truncated, "form": "stored", "bytes": len(body), "key": key},
            )  # fmt: skip
            uow.commit()
    if erased_meanwhile:
        storage.delete([key])
        raise UserErased("the user was erased while the export was being made", details={"user_id": str(user_id)})
    expires_in = settings.gdpr_export_url_seconds
    # Whole seconds, taken before signing (which also counts in whole seconds): never later than the URL's own.
    expires_at = utcnow().replace(microsecond=0) + timedelta(seconds=expires_in)
    url = storage.presign_get(
        key, expires_in=expires_in, filename=f"export-{user_id}.json", content_type=EXPORT_CONTENT_TYPE
    )
    return StoredExport(
        user_id=user_id, generated_at=now, truncated=truncated, download_url=url, expires_at=expires_at,
        bytes=len(body),
    )  # fmt: skip


# --- erase ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Erasure:
    user_id: uuid.UUID
    erased_at: datetime
    already_erased: bool
    removed: dict[str, int]
    files_removed: int
    exports_removed: int = 0


def _still_billing(session: Session, user_id: uuid.UUID) -> list[Subscription]:
    """Subscriptions a provider may charge again: not ended, not terminal, not cancelled or set to cancel."""
    rows = session.execute(
        select(Subscription).where(
            Subscription.user_id == user_id,
            Subscription.provider != "manual",  # an admin's plan bills nobody
            Subscription.ended_at.is_(None),
            Subscription.cancel_at_period_end.is_(False),
        )
    ).scalars()
    return [s for s in rows if s.status not in TERMINAL.get(s.provider, frozenset()) | CANCELLED]


def _count(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def _anonymise(session: Session, user: User, now: datetime) -> dict[str, int]:
    old_email = user.email
    removed: dict[str, int] = {}
    for name, model in (
        ("sessions", AuthSession), ("api_keys", ApiKey), ("oauth_accounts", OAuthAccount),
        ("verification_tokens", VerificationToken), ("password_reset_tokens", PasswordResetToken),
        ("two_factor_tokens", TwoFactorToken), ("two_factor_confirmations", TwoFactorConfirmation),
        ("recovery_codes", RecoveryCode), ("security_lock_tokens", SecurityLockToken),
        ("ai_conversations", AiConversation), ("auto_topup_settings", AutoTopUpSetting),
    ):  # fmt: skip
        removed[name] = _count(session.execute(delete(model).where(model.user_id == user.id)))
    session.execute(
        delete(AuthThrottle).where(AuthThrottle.scope == "account", AuthThrottle.key == old_email.strip().lower())
    )
    session.execute(update(AiUsage).where(AiUsage.user_id == user.id).values(response=None))
    removed["email_logs_redacted"] = _count(
        session.execute(
            update(EmailLog)
            .where(or_(EmailLog.user_id == user.id, func.lower(EmailLog.recipient) == old_email.strip().lower()))
            .values(recipient=erased_email(user.id), subject=ERASED_SUBJECT, error=None, metadata_=None)
        )
    )
    user.email = erased_email(user.id)
    user.email_verified_at = None
    user.name = None
    user.username = None
    user.image = None
    user.password_hash = None
    user.password_changed_at = None
    user.password_login_at = None
    user.two_factor_enabled = False
    user.two_factor_method = None
    user.two_factor_enrolled_at = None
    user.totp_secret = None
    user.totp_pending_secret = None
    user.totp_last_step = None
    # The Clerk id stays (like the payment providers' customer ids): it is what tells a later Clerk event or a
    # still-valid Clerk session token that this person was erased, instead of creating them again.
    user.last_login_at = None
    user.timezone = "UTC"
    user.language = "en"
    user.role = UserRole.USER
    user.status = UserStatus.DELETED
    user.deleted_at = user.deleted_at or now
    user.updated_at = now
    return removed


def erase_user(uow: UnitOfWork, storage: WritableStorage, actor: Actor, user_id: uuid.UUID) -> Erasure:
    """Erase the person, keep the accounting (see the module's docstring). Idempotent."""
    require_role(actor, ADMIN)
    with uow:
        session = uow.session
        user, admins = lock_for_access_change(session, user_id)
        require_admin_now(actor, admins)
        already = is_erased(user)
        removed: dict[str, int] = {}
        now = utcnow()
        if not already:
            guard_access_loss(actor, user, admins, keeps_admin=False)
            billing = _still_billing(session, user_id)
            if billing:
                raise SubscriptionStillBilling(
                    "a subscription may still be charged: cancel it at the provider first",
                    details={"subscriptions": [{"id": str(s.id), "provider": s.provider, "status": s.status}
                                               for s in billing]},
                )  # fmt: skip
            old_values = {"role": user.role, "status": user.status}
            removed = _anonymise(session, user, now)
            new_values = {"role": user.role, "status": user.status}
        else:
            old_values = new_values = {"status": user.status}
        authz.audit(
            session, actor, action="user.erase", target_type="user", target_id=str(user_id),
            old_values=old_values, new_values=new_values, details={"repeat": already, "removed": removed}, now=now,
        )  # fmt: skip
        erased_at = user.deleted_at or now
        uow.commit()
    files_removed = files.erase_user_files(uow, storage, user_id)
    # Stored exports too: each is the person's data whole (found by listing, so one whose audit row never got
    # written goes as well).
    exports = storage.list_keys(export_prefix(user_id))
    storage.delete(exports)
    return Erasure(
        user_id=user_id, erased_at=erased_at, already_erased=already, removed=removed, files_removed=files_removed,
        exports_removed=len(exports),
    )  # fmt: skip
