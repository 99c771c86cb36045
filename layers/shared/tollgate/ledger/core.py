"""The credit ledger: every credit a user has or spends passes through here.

Every function takes an open SQLAlchemy `Session` inside a transaction and does NOT commit: the caller's
unit of work does, so a grant can ride in e.g. a registration's transaction. A refused call raises a domain
error and writes nothing the caller should keep (the caller's unit of work rolls back).

Rules (DESIGN.md §4, issue 3):
- The account row is the lock: every mutation first locks `credit_accounts` (created on first use, race-safe),
  then touches that user's grants in draw order. One lock order everywhere: no deadlock, no lost update.
- Credits live in grants. A deduction draws free grants (allowance, sign-up, promo, adjustments) before
  purchased packs, each class soonest expiry first, then oldest; purchased packs only when the user's bonus
  auto-use allows (when the deployment does not let users choose, packs are always used). What grants cannot
  cover comes from the account's credit line (floor < 0), recorded as debt that the next grant repays.
- The draw order, per-plan pricing, cost rounding and auto-use are each defined once, in SQL (the versioned
  files of migrations/sql/ledger: `tollgate_draw_candidates`, `tollgate_unit_cost`, `tollgate_cost`,
  `tollgate_allow_packs`); this module calls them and restates none of them.
- `credit_accounts.balance` is what the user owns, held credits included:
  `balance == sum(active grant remaining) - debt + held == sum(ledger amounts)`; spendable is `balance - held`.
- Holds reserve from grants in the same order (the reserved credits leave the grants); capture charges the
  captured amount and puts the rest back; release puts everything back. Credits put back into a grant that has
  expired meanwhile expire again at once (an `expiry` row).
- Idempotency keys are unique per user in the ledger itself, forever. The same key with the same request
  answers the original result; with a different request, `IdempotencyConflict`. Refusals store nothing.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import RowMapping, text
from sqlalchemy.orm import Session

from tollgate import request_origin
from tollgate.config import get_settings
from tollgate.db.base import new_id, utcnow
from tollgate.errors import (
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    NotFound,
    NotRefundable,
    RefundExceedsCharge,
    TransactionNotFound,
    UnknownOperation,
    ValidationFailed,
)
from tollgate.input_bounds import LEDGER_KEY_MAX_LENGTH
from tollgate.ledger.balance_events import STATE_CALL, after_charge, after_spend, state_params
from tollgate.ledger.results import (
    AccountMismatch,
    AdjustResult,
    CaptureResult,
    ChargeResult,
    ClawbackResult,
    ExpireResult,
    GrantResult,
    HoldResult,
    ReconcileReport,
    RefundResult,
    ReleaseResult,
)
from tollgate.outbox import EventType, emit

SCALE = Decimal("0.0001")  # credits are NUMERIC(18, 4)
MAX_CREDITS = Decimal("1000000000000")  # 1e12: far above any real grant, far below NUMERIC(18, 4)'s limit
MAX_HOLD_TTL_SECONDS = 86_400
INTERNAL_KEY_PREFIX = "\u00a7"  # "§": keys of internal operations, outside the printable ASCII of client keys

GRANT_KINDS: Mapping[str, str] = {
    # grant kind -> ledger type of the row that records it
    "signup": "signup",
    "purchase": "purchase",
    "allowance": "monthly_allowance",
    "promo": "promo",
    "adjustment": "adjustment",
    "refund": "refund",
}
# The grant kinds that are purchased packs (`credit_grants.is_pack`): the draw order takes them last, and only
# when auto-use allows (tollgate_draw_candidates).
PACK_KINDS = frozenset({"purchase"})
REFUNDABLE_TYPES = frozenset({"usage", "capture", "adjustment"})


# --- values ---------------------------------------------------------------------------------------------------
def credits(value: Any, field: str = "amount", *, allow_zero: bool = False, signed: bool = False) -> Decimal:
    """`value` as credits at the ledger's scale, or ValidationFailed (over-precise, non-positive, too big)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValidationFailed(f"{field} must be a decimal number", details={"field": field})
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValidationFailed(f"{field} must be a decimal number", details={"field": field}) from None
    if not amount.is_finite():
        raise ValidationFailed(f"{field} must be a finite number", details={"field": field})
    if amount != amount.quantize(SCALE, rounding="ROUND_DOWN"):
        raise ValidationFailed(
            f"{field} has more than 4 decimal places", details={"field": field, "max_decimal_places": 4}
        )
    if abs(amount) > MAX_CREDITS:
        raise ValidationFailed(f"{field} is too large", details={"field": field, "max": str(MAX_CREDITS)})
    if signed:
        if amount == 0:
            raise ValidationFailed(f"{field} must not be zero", details={"field": field})
    elif amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationFailed(f"{field} must be positive", details={"field": field})
    return amount.quantize(SCALE)


def _q(value: Decimal) -> Decimal:
    return value.quantize(SCALE)


def fingerprint(kind: str, **fields: Any) -> str:
    """A stable hash of a request, to tell a repeat of it from a different request under the same key."""

    def canon(value: Any) -> Any:
        if isinstance(value, Decimal):
            return format(value.quantize(SCALE), "f")
        if isinstance(value, uuid.UUID | datetime):
            return str(value)
        if isinstance(value, Mapping):
            return {str(k): canon(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [canon(v) for v in value]
        return value

    payload = json.dumps({"kind": kind, **canon(fields)}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _key(idempotency_key: str | None) -> str | None:
    if idempotency_key is None:
        return None
    if not 1 <= len(idempotency_key) <= LEDGER_KEY_MAX_LENGTH:
        raise ValidationFailed(
            f"the idempotency key must be 1-{LEDGER_KEY_MAX_LENGTH} characters", details={"field": "idempotency_key"}
        )
    return idempotency_key


def as_json(value: Mapping[str, Any] | None) -> str:
    """Metadata as the ledger stores it (compact JSON)."""
    return json.dumps(dict(value or {}), default=str, separators=(",", ":"))


def _operation(operation: str | None) -> str | None:
    if operation is None:
        return None
    if not operation or len(operation) > 64:
        raise ValidationFailed("operation must be 1-64 characters", details={"field": "operation"})
    return operation


# --- low-level steps (all under the account lock) -------------------------------------------------------------
def _lock(session: Session, user_id: uuid.UUID, now: datetime) -> RowMapping:
    row = (
        session.execute(text("SELECT * FROM tollgate_lock_account(:user_id, :now)"), {"user_id": user_id, "now": now})
        .mappings()
        .one()
    )
    if row["user_id"] is None:  # pragma: no cover - the FK to users refuses an unknown user first
        raise NotFound("no such user", details={"user_id": str(user_id)})
    return row


def _previous(session: Session, user_id: uuid.UUID, key: str | None, request_hash: str) -> RowMapping | None:
    """The ledger row an idempotency key already produced: None, the row (same request), or a conflict."""
    if key is None:
        return None
    row = (
        session.execute(
            text("SELECT * FROM credit_transactions WHERE user_id = :user_id AND idempotency_key = :key"),
            {"user_id": user_id, "key": key},
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    if row["request_hash"] != request_hash:
        raise IdempotencyConflict(
            "this idempotency key was already used for a different request",
            details={"transaction_id": str(row["id"])},
        )
    return row


def _pricing(
    session: Session, user_id: uuid.UUID, operation: str | None, quantity: Decimal
) -> tuple[Decimal | None, bool]:
    """(what `quantity` x `operation` costs the user, None when no cost is configured or no operation is
    given; whether the user's deductions may draw purchased packs), by the same SQL rules as a charge."""
    row = session.execute(
        text("SELECT amount, allow_packs FROM tollgate_pricing(:user_id, :operation, :quantity)"),
        {"user_id": user_id, "operation": operation, "quantity": quantity},
    ).one()
    return row.amount, bool(row.allow_packs)


def _insufficient(account: RowMapping, requested: Decimal, available: Decimal) -> InsufficientCredits:
    return InsufficientCredits(
        "not enough credits",
        details={
            "balance": str(account["balance"]),
            "available": str(max(available, Decimal(0)).quantize(SCALE)),
            "held": str(account["held"]),
            "requested": str(requested),
        },
    )


def _draw(
    session: Session,
    account: RowMapping,
    amount: Decimal,
    *,
    allow_packs: bool,
    now: datetime,
    origin: uuid.UUID,
    transaction_id: uuid.UUID | None,
    hold_id: uuid.UUID | None,
    write: Any,
) -> Decimal:
    """Plan a draw; raise InsufficientCredits before writing anything; else run `write()` (which inserts the
    row the draws reference), apply the draw and return the credit-line part."""
    plan = session.execute(
        text("SELECT * FROM tollgate_plan_draw(:user_id, :amount, :allow_packs, :now)"),
        {"user_id": account["user_id"], "amount": amount, "allow_packs": allow_packs, "now": now},
    ).one()
    if not plan.ok:
        raise _insufficient(account, amount, plan.available)
    write()
    session.execute(
        text(
            "SELECT tollgate_apply_draw(:user_id, :origin, :transaction_id, :hold_id, "
            "CAST(:grant_ids AS uuid[]), CAST(:takes AS numeric[]), :line, :now)"
        ),
        {
            "user_id": account["user_id"],
            "origin": origin,
            "transaction_id": transaction_id,
            "hold_id": hold_id,
            "grant_ids": [str(g) for g in plan.grant_ids],
            "takes": [str(t) for t in plan.takes],
            "line": plan.line,
            "now": now,
        },
    )
    line: Decimal = plan.line
    return line


_TICK = "tollgate.ledger.tick"


def _insert_tx(
    session: Session,
    *,
    user_id: uuid.UUID,
    type_: str,
    amount: Decimal,
    balance_after: Decimal,
    now: datetime,
    tx_id: uuid.UUID | None = None,
    operation: str | None = None,
    quantity: Decimal | None = None,
    grant_id: uuid.UUID | None = None,
    hold_id: uuid.UUID | None = None,
    reverses_id: uuid.UUID | None = None,
    key: str | None = None,
    request_hash: str | None = None,
    actor_id: uuid.UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    tx_id = tx_id or new_id()
    # Rows one operation writes share its `now`; each next one is a microsecond later, so the ledger's
    # (created_at, id) order is the order they were written in (ids made in one millisecond are random).
    last_now, tick = session.info.get(_TICK, (None, -1))
    tick = tick + 1 if last_now == now else 0
    session.info[_TICK] = (now, tick)
    created_at = now + timedelta(microseconds=tick)
    session.execute(
        text(
            "INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, operation, quantity, "
            "grant_id, hold_id, reverses_id, idempotency_key, request_hash, actor_id, metadata, created_at) "
            "VALUES (:id, :user_id, :type, :amount, :balance_after, :operation, :quantity, :grant_id, :hold_id, "
            ":reverses_id, :key, :request_hash, :actor_id, CAST(:metadata AS jsonb), :now)"
        ),
        {
            "id": tx_id,
            "user_id": user_id,
            "type": type_,
            "amount": amount,
            "balance_after": balance_after,
            "operation": operation,
            "quantity": quantity,
            "grant_id": grant_id,
            "hold_id": hold_id,
            "reverses_id": reverses_id,
            "key": key,
            "request_hash": request_hash if key is not None else None,
            "actor_id": actor_id,
            "metadata": as_json(metadata),
            "now": created_at,
        },
    )
    return tx_id


def _set_account(
    session: Session,
    user_id: uuid.UUID,
    now: datetime,
    *,
    balance: Decimal | None = None,
    held: Decimal | None = None,
    debt: Decimal | None = None,
) -> None:
    session.execute(
        text(
            "UPDATE credit_accounts SET balance = coalesce(:balance, balance), held = coalesce(:held, held), "
            "debt = coalesce(:debt, debt), updated_at = :now WHERE user_id = :user_id"
        ),
        {"balance": balance, "held": held, "debt": debt, "now": now, "user_id": user_id},
    )


def _put_back(
    session: Session,
    *,
    draws_where: str,
    params: Mapping[str, Any],
    amount: Decimal,
    now: datetime,
) -> tuple[Decimal, list[tuple[uuid.UUID, Decimal]], Decimal]:
    """Return `amount` to where the matching draws took it from, newest draw first.

    Returns (credit-line part returned, [(expired grant, credits that must expire again)], unplaced) where
    `unplaced` is what the credit line could not take back because the debt was already repaid.
    """
    draws = session.execute(
        text(
            "SELECT d.origin_id, d.seq, d.grant_id, d.amount, d.returned, g.status, g.expires_at "
            "FROM credit_draws d LEFT JOIN credit_grants g ON g.id = d.grant_id "
            f"WHERE {draws_where} AND d.returned < d.amount ORDER BY d.origin_id DESC, d.seq DESC"
        ),
        dict(params),
    ).all()
    left = amount
    line = Decimal(0)
    expired: list[tuple[uuid.UUID, Decimal]] = []
    for d in draws:
        if left <= 0:
            break
        give = min(d.amount - d.returned, left)
        left -= give
        session.execute(
            text("UPDATE credit_draws SET returned = returned + :give WHERE origin_id = :origin AND seq = :seq"),
            {"give": give, "origin": d.origin_id, "seq": d.seq},
        )
        if d.grant_id is None:
            line += give
        elif d.status != "active" or (d.expires_at is not None and d.expires_at <= now):
            expired.append((d.grant_id, give))
            if d.status == "active":  # past its expiry, not yet expired by the job: it still takes them back
                session.execute(
                    text("UPDATE credit_grants SET remaining = remaining + :give, updated_at = :now WHERE id = :id"),
                    {"give": give, "id": d.grant_id, "now": now},
                )
        else:
            session.execute(
                text("UPDATE credit_grants SET remaining = remaining + :give, updated_at = :now WHERE id = :id"),
                {"give": give, "id": d.grant_id, "now": now},
            )
    if left > 0:  # pragma: no cover - callers never ask back more than the draws hold
        raise RuntimeError("put-back exceeds the draws")
    return line, expired, Decimal(0)


def _plan_expiry(
    session: Session, expired: Sequence[tuple[uuid.UUID, Decimal]]
) -> list[tuple[uuid.UUID, Decimal, bool]]:
    """What must expire again among credits that came back to grants past their expiry (read only):
    [(grant, credits, grant still active)]. A grant past due but not yet expired by the job expires whole."""
    plan: list[tuple[uuid.UUID, Decimal, bool]] = []
    handled: set[uuid.UUID] = set()
    for grant_id, give in expired:
        if grant_id in handled:
            continue
        grant = session.execute(
            text("SELECT status, remaining FROM credit_grants WHERE id = :id"), {"id": grant_id}
        ).one()
        if grant.status == "active":
            handled.add(grant_id)
            plan.append((grant_id, grant.remaining, True))
        else:
            plan.append((grant_id, give, False))
    return plan


def _write_expiry(
    session: Session,
    *,
    user_id: uuid.UUID,
    plan: Sequence[tuple[uuid.UUID, Decimal, bool]],
    balance: Decimal,
    now: datetime,
    reason: str,
) -> Decimal:
    """Write the `expiry` rows of `_plan_expiry`; returns the balance after them."""
    for grant_id, give, still_active in plan:
        if still_active:
            session.execute(
                text(
                    "UPDATE credit_grants SET remaining = 0, status = 'expired', expired_at = :now, "
                    "updated_at = :now WHERE id = :id"
                ),
                {"id": grant_id, "now": now},
            )
        if give <= 0:
            continue
        balance -= give
        _insert_tx(
            session,
            user_id=user_id,
            type_="expiry",
            amount=-give,
            balance_after=balance,
            now=now,
            grant_id=grant_id,
            metadata={"reason": reason},
        )
    return balance


def _repay_debt(account: RowMapping, amount: Decimal) -> Decimal:
    """How much of a new grant goes to repay the account's credit-line debt."""
    debt: Decimal = account["debt"]
    return min(debt, amount)


def audit(
    session: Session,
    *,
    actor_id: uuid.UUID | None,
    action: str,
    target_type: str,
    target_id: str | None,
    details: Mapping[str, Any] | None = None,
    old_values: Mapping[str, Any] | None = None,
    new_values: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Write one audit_logs row (admin actions, security events) in the caller's transaction. The request's
    source IP and user agent come from `tollgate.request_origin` (bound by the HTTP edge; none outside a request).
    The table is append-only (migrations/sql/audit)."""
    origin = request_origin.current()
    session.execute(
        text(
            "INSERT INTO audit_logs (id, actor_id, action, target_type, target_id, details, old_values, new_values, "
            "ip_address, user_agent, created_at) "
            "VALUES (:id, :actor_id, :action, :target_type, :target_id, CAST(:details AS jsonb), "
            "CAST(:old_values AS jsonb), CAST(:new_values AS jsonb), :ip, :user_agent, :now)"
        ),
        {
            "id": new_id(),
            "actor_id": actor_id,
            "action": action,
            "target_type": target_type,
            "target_id": target_id,
            "details": as_json(details),
            "old_values": None if old_values is None else as_json(old_values),
            "new_values": None if new_values is None else as_json(new_values),
            "ip": origin.ip,
            "user_agent": origin.user_agent,
            "now": now or utcnow(),
        },
    )


# --- grants ---------------------------------------------------------------------------------------------------
def grant(
    session: Session,
    user_id: uuid.UUID,
    *,
    kind: str,
    amount: Decimal,
    source_key: str,
    expires_at: datetime | None = None,
    metadata: dict[str, Any] | None = None,
    actor_id: uuid.UUID | None = None,
    now: datetime | None = None,
) -> GrantResult:
    """Add a grant of `amount` credits. Idempotent per (user, source_key): a repeat with the same kind, amount
    and expiry answers the original grant; a different one is an IdempotencyConflict."""
    if kind not in GRANT_KINDS:
        raise ValidationFailed(f"unknown grant kind {kind!r}", details={"field": "kind", "allowed": list(GRANT_KINDS)})
    amount = credits(amount)
    if not source_key or len(source_key) > 255:
        raise ValidationFailed("source_key must be 1-255 characters", details={"field": "source_key"})
    now = now or utcnow()
    if expires_at is not None and expires_at <= now:
        raise ValidationFailed("expires_at must be in the future", details={"field": "expires_at"})
    account = _lock(session, user_id, now)
    # The unique (user, source key) index answers whether this grant exists; only a replay then looks up its
    # ledger row (by user, where the ledger is indexed).
    existing = session.execute(
        text(
            "SELECT id, kind, amount, expires_at FROM credit_grants "
            "WHERE user_id = :user_id AND source_key = :source_key"
        ),
        {"user_id": user_id, "source_key": source_key},
    ).first()
    if existing is not None:
        if existing.kind != kind or existing.amount != amount or existing.expires_at != expires_at:
            raise IdempotencyConflict(
                "this source key already granted different credits", details={"grant_id": str(existing.id)}
            )
        tx_id = session.execute(
            text(
                "SELECT id FROM credit_transactions WHERE user_id = :user_id AND grant_id = :grant_id "
                "AND type = :type ORDER BY created_at, id LIMIT 1"
            ),
            {"user_id": user_id, "grant_id": existing.id, "type": GRANT_KINDS[kind]},
        ).scalar_one()
        return GrantResult(existing.id, tx_id, existing.amount, account["balance"], created=False)
    return _new_grant(
        session, account, kind=kind, amount=amount, source_key=source_key, expires_at=expires_at,
        metadata=metadata, actor_id=actor_id, now=now,
    )  # fmt: skip


def _new_grant(
    session: Session,
    account: RowMapping,
    *,
    kind: str,
    amount: Decimal,
    source_key: str,
    expires_at: datetime | None,
    metadata: Mapping[str, Any] | None,
    actor_id: uuid.UUID | None,
    now: datetime,
    key: str | None = None,
    request_hash: str | None = None,
    type_: str | None = None,
) -> GrantResult:
    user_id: uuid.UUID = account["user_id"]
    repay = _repay_debt(account, amount)
    grant_id = new_id()
    session.execute(
        text(
            "INSERT INTO credit_grants (id, user_id, kind, is_pack, amount, remaining, status, source_key, "
            "expires_at, metadata, created_at, updated_at) VALUES (:id, :user_id, :kind, :is_pack, :amount, "
            ":remaining, 'active', :source_key, :expires_at, CAST(:metadata AS jsonb), :now, :now)"
        ),
        {
            "id": grant_id,
            "user_id": user_id,
            "kind": kind,
            "is_pack": kind in PACK_KINDS,
            "amount": amount,
            "remaining": amount - repay,
            "source_key": source_key,
            "expires_at": expires_at,
            "metadata": as_json(metadata),
            "now": now,
        },
    )
    balance = account["balance"] + amount
    meta = dict(metadata or {})
    if repay:
        meta["repaid_debt"] = str(repay)
    tx_id = _insert_tx(
        session,
        user_id=user_id,
        type_=type_ or GRANT_KINDS[kind],
        amount=amount,
        balance_after=balance,
        now=now,
        grant_id=grant_id,
        key=key,
        request_hash=request_hash,
        actor_id=actor_id,
        metadata=meta,
    )
    _set_account(session, user_id, now, balance=balance, debt=account["debt"] - repay)
    emit_granted(session, user_id, kind=kind, amount=amount, grant_id=grant_id, transaction_id=tx_id,
                 balance=balance, expires_at=expires_at, metadata=metadata)  # fmt: skip
    return GrantResult(grant_id, tx_id, amount, balance, created=True)


def emit_granted(
    session: Session,
    user_id: uuid.UUID,
    *,
    kind: str,
    amount: Decimal,
    grant_id: uuid.UUID,
    transaction_id: uuid.UUID,
    balance: Decimal,
    expires_at: datetime | None,
    metadata: Mapping[str, Any] | None,
) -> None:
    """`credits.granted` for one new grant, in its transaction (every grant kind: purchase, allowance, ...)."""
    emit(
        session,
        EventType.CREDITS_GRANTED,
        user_id=user_id,
        data={
            "grant_id": grant_id, "transaction_id": transaction_id, "kind": kind, "amount": amount,
            "balance": balance, "expires_at": expires_at, "metadata": dict(metadata or {}),
        },
    )  # fmt: skip


def grant_signup_credits(session: Session, user_id: uuid.UUID) -> None:
    """SIGNUP_CREDITS once per user (idempotent by the source key `signup`); nothing when it is 0."""
    amount = get_settings().signup_credits
    if amount <= 0:
        return
    grant(session, user_id, kind="signup", amount=amount, source_key="signup")


# --- charges --------------------------------------------------------------------------------------------------
CHARGE_SQL = "SELECT * FROM tollgate_charge({}, {}, {}, {}, {}, {}, {}, CAST({} AS jsonb), {})"
CHARGE_FIELDS = ("user_id", "tx", "operation", "quantity", "amount", "key", "hash", "metadata", "now")
CHARGE_WITH_STATE = text(
    "SELECT c.*, s.* FROM (" + CHARGE_SQL.format(*(f":{f}" for f in CHARGE_FIELDS)) + ") c "
    "LEFT JOIN LATERAL " + STATE_CALL + " s ON c.status = 'ok'"
)


def _charge_params(
    user_id: uuid.UUID,
    operation: str,
    quantity: Decimal,
    amount: Decimal | None,
    idempotency_key: str | None,
    metadata: dict[str, Any] | None,
    now: datetime | None,
) -> dict[str, Any]:
    operation = _operation(operation) or ""
    quantity = credits(quantity, "quantity")
    if amount is not None:
        amount = credits(amount, allow_zero=True)
    key = _key(idempotency_key)
    request_hash = (
        fingerprint("charge", operation=operation, quantity=quantity, amount=amount, metadata=metadata or {})
        if key is not None
        else None
    )
    return {
        "user_id": user_id,
        "tx": new_id(),
        "operation": operation,
        "quantity": quantity,
        "amount": amount,
        "key": key,
        "hash": request_hash,
        "metadata": as_json(metadata),
        "now": now or utcnow(),
    }


def _charge_result(row: Any, operation: str) -> ChargeResult:
    status, transaction_id, charged, balance, available = row
    if status in {"ok", "replay"}:
        return ChargeResult(transaction_id, _q(charged), _q(balance), replayed=status == "replay")
    if status == "conflict":
        raise IdempotencyConflict(
            "this idempotency key was already used for a different request",
            details={"transaction_id": str(transaction_id)},
        )
    if status == "unknown_operation":
        raise UnknownOperation(f"no cost is configured for operation {operation!r}", details={"operation": operation})
    raise InsufficientCredits(
        "not enough credits",
        details={
            "balance": str(_q(balance)),
            "available": str(_q(max(available if available is not None else Decimal(0), Decimal(0)))),
            "requested": str(_q(charged)),
        },
    )


def charge(
    session: Session,
    user_id: uuid.UUID,
    *,
    operation: str,
    quantity: Decimal = Decimal(1),
    amount: Decimal | None = None,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> ChargeResult:
    """Charge the cost of `quantity` units of `operation` (its plan's cost, else the default cost), or an
    explicit `amount`, in one statement inside the caller's transaction. Raises InsufficientCredits (402,
    nothing stored), UnknownOperation, IdempotencyConflict, ValidationFailed."""
    params = _charge_params(user_id, operation, quantity, amount, idempotency_key, metadata, now)
    if not get_settings().outbox_balance_events:
        row = session.execute(text(CHARGE_SQL.format(*(f":{f}" for f in CHARGE_FIELDS))), params).one()
        return _charge_result(tuple(row), params["operation"])
    # The account state credits.low/depleted need rides in the charge's own statement (no extra round trip).
    params.update(state_params(params["now"]))
    columns = tuple(session.execute(CHARGE_WITH_STATE, params).one())
    result = _charge_result(columns[:5], params["operation"])
    if not result.replayed and result.charged > 0:
        after_charge(session, user_id, params["now"], columns[5:], charged=result.charged, balance=result.balance)
    return result


# --- holds ----------------------------------------------------------------------------------------------------
def hold(
    session: Session,
    user_id: uuid.UUID,
    *,
    operation: str | None = None,
    quantity: Decimal = Decimal(1),
    amount: Decimal | None = None,
    ttl_seconds: int = 300,
    idempotency_key: str | None = None,
    metadata: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> HoldResult:
    """Reserve credits (the cost of `quantity` x `operation`, or `amount`) for `ttl_seconds`."""
    operation = _operation(operation)
    if amount is None and operation is None:
        raise ValidationFailed("give an operation or an amount", details={"field": "amount"})
    quantity = credits(quantity, "quantity")
    if amount is not None:
        amount = credits(amount)
    if isinstance(ttl_seconds, bool) or not 1 <= ttl_seconds <= MAX_HOLD_TTL_SECONDS:
        raise ValidationFailed(f"ttl_seconds must be 1-{MAX_HOLD_TTL_SECONDS}", details={"field": "ttl_seconds"})
    key = _key(idempotency_key)
    request_hash = fingerprint(
        "hold", operation=operation, quantity=quantity, amount=amount, ttl_seconds=ttl_seconds,
        metadata=metadata or {},
    )  # fmt: skip
    now = now or utcnow()
    account = _lock(session, user_id, now)
    previous = _previous(session, user_id, key, request_hash)
    if previous is not None:
        h = session.execute(
            text("SELECT id, amount, expires_at FROM credit_holds WHERE id = :id"), {"id": previous["hold_id"]}
        ).one()
        return HoldResult(h.id, h.amount, h.expires_at, replayed=True)
    cost, allow_packs = _pricing(session, user_id, operation, quantity)
    if amount is None:
        if cost is None:
            raise UnknownOperation(
                f"no cost is configured for operation {operation!r}", details={"operation": operation}
            )
        amount = cost
        if amount <= 0:
            raise ValidationFailed("the operation costs nothing: there is nothing to hold", details={"amount": "0"})
    hold_id = new_id()
    expires_at = now + timedelta(seconds=ttl_seconds)

    def write() -> None:
        session.execute(
            text(
                "INSERT INTO credit_holds (id, user_id, operation, quantity, amount, status, expires_at, metadata, "
                "created_at) VALUES (:id, :user_id, :operation, :quantity, :amount, 'active', :expires_at, "
                "CAST(:metadata AS jsonb), :now)"
            ),
            {
                "id": hold_id,
                "user_id": user_id,
                "operation": operation,
                "quantity": quantity if operation else None,
                "amount": amount,
                "expires_at": expires_at,
                "metadata": as_json(metadata),
                "now": now,
            },
        )
        _insert_tx(
            session, user_id=user_id, type_="hold", amount=Decimal(0), balance_after=account["balance"], now=now,
            operation=operation, quantity=quantity if operation else None, hold_id=hold_id, key=key,
            request_hash=request_hash, metadata={"held": str(amount), "expires_at": expires_at.isoformat()},
        )  # fmt: skip

    line = _draw(
        session, account, amount, allow_packs=allow_packs, now=now, origin=hold_id,
        transaction_id=None, hold_id=hold_id, write=write,
    )  # fmt: skip
    _set_account(session, user_id, now, held=account["held"] + amount, debt=account["debt"] + line)
    if get_settings().outbox_balance_events:
        after_spend(session, user_id, now)
    return HoldResult(hold_id, amount, expires_at)


def _locked_hold(session: Session, user_id: uuid.UUID, hold_id: uuid.UUID) -> RowMapping:
    h = (
        session.execute(
            text("SELECT * FROM credit_holds WHERE id = :id AND user_id = :user_id FOR UPDATE"),
            {"id": hold_id, "user_id": user_id},
        )
        .mappings()
        .first()
    )
    if h is None:  # another user's hold is not found either
        raise HoldNotFound("no such hold", details={"hold_id": str(hold_id)})
    return h


def _settle_hold(
    session: Session,
    account: RowMapping,
    h: RowMapping,
    *,
    capture_amount: Decimal,
    status: str,
    now: datetime,
    key: str | None = None,
    request_hash: str | None = None,
) -> tuple[uuid.UUID, Decimal, Decimal]:
    """Capture `capture_amount` of an active hold (0: release it all). Returns (tx id, released, balance)."""
    user_id: uuid.UUID = account["user_id"]
    held: Decimal = h["amount"]
    released = held - capture_amount
    line, expired, _ = _put_back(
        session, draws_where="d.origin_id = :hold_id", params={"hold_id": h["id"]}, amount=released, now=now
    )
    balance: Decimal = account["balance"] - capture_amount
    expiry = _plan_expiry(session, expired)
    final_balance = balance - sum((give for _, give, _ in expiry), Decimal(0))
    tx_type = "capture" if status == "captured" else "release"
    tx_id = _insert_tx(
        session, user_id=user_id, type_=tx_type, amount=-capture_amount, balance_after=balance, now=now,
        operation=h["operation"], hold_id=h["id"], key=key, request_hash=request_hash,
        metadata={
            "held": str(held), "charged": str(capture_amount), "released": str(released),
            "balance": str(final_balance),
        },
    )  # fmt: skip
    if capture_amount > 0:
        session.execute(
            text("UPDATE credit_draws SET transaction_id = :tx WHERE origin_id = :hold_id AND returned < amount"),
            {"tx": tx_id, "hold_id": h["id"]},
        )
    balance = _write_expiry(session, user_id=user_id, plan=expiry, balance=balance, now=now, reason="hold")
    session.execute(
        text(
            "UPDATE credit_holds SET status = :status, captured = :captured, released = :released, "
            "resolved_at = :now WHERE id = :id"
        ),
        {"status": status, "captured": capture_amount, "released": released, "now": now, "id": h["id"]},
    )
    _set_account(session, user_id, now, balance=balance, held=account["held"] - held, debt=account["debt"] - line)
    return tx_id, released, balance


def capture(
    session: Session,
    user_id: uuid.UUID,
    hold_id: uuid.UUID,
    *,
    amount: Decimal,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> CaptureResult:
    """Charge `amount` (<= held) of an active hold and put the rest back where it came from."""
    amount = credits(amount)
    key = _key(idempotency_key)
    request_hash = fingerprint("capture", hold_id=hold_id, amount=amount)
    now = now or utcnow()
    account = _lock(session, user_id, now)
    previous = _previous(session, user_id, key, request_hash)
    if previous is not None:
        meta = previous["metadata"]
        return CaptureResult(
            previous["id"], Decimal(meta["charged"]), Decimal(meta["released"]), Decimal(meta["balance"]), True
        )
    h = _locked_hold(session, user_id, hold_id)
    if h["status"] != "active" or h["expires_at"] <= now:
        raise HoldNotActive(
            "the hold is no longer active",
            details={"hold_id": str(hold_id), "status": "expired" if h["status"] == "active" else h["status"]},
        )
    if amount > h["amount"]:
        raise ValidationFailed("the capture exceeds the hold", details={"field": "amount", "held": str(h["amount"])})
    tx_id, released, balance = _settle_hold(
        session, account, h, capture_amount=amount, status="captured", now=now, key=key, request_hash=request_hash
    )
    if amount > 0 and get_settings().outbox_balance_events:
        after_spend(session, user_id, now)
    return CaptureResult(tx_id, amount, released, balance)


def release(session: Session, user_id: uuid.UUID, hold_id: uuid.UUID, *, now: datetime | None = None) -> ReleaseResult:
    """Give an active hold's credits back, all of them."""
    now = now or utcnow()
    account = _lock(session, user_id, now)
    h = _locked_hold(session, user_id, hold_id)
    if h["status"] != "active":
        raise HoldNotActive("the hold is no longer active", details={"hold_id": str(hold_id), "status": h["status"]})
    _, released, balance = _settle_hold(session, account, h, capture_amount=Decimal(0), status="released", now=now)
    return ReleaseResult(released, balance)


def expire_holds(session: Session, *, now: datetime | None = None, limit: int = 500) -> int:
    """Release holds past their expiry (the HoldExpiry job). Returns how many were expired."""
    now = now or utcnow()
    due = session.execute(
        text(
            "SELECT id, user_id FROM credit_holds WHERE status = 'active' AND expires_at <= :now "
            "ORDER BY expires_at LIMIT :limit"
        ),
        {"now": now, "limit": limit},
    ).all()
    done = 0
    # Accounts are locked in user order: two jobs running at once can never deadlock each other.
    for d in sorted(due, key=lambda row: (row.user_id, row.id)):
        account = _lock(session, d.user_id, now)
        h = _locked_hold(session, d.user_id, d.id)
        if h["status"] != "active":
            continue  # settled meanwhile
        _settle_hold(session, account, h, capture_amount=Decimal(0), status="expired", now=now)
        done += 1
    return done


# --- expiry, clawback -----------------------------------------------------------------------------------------
def _expire_locked(
    session: Session, user_id: uuid.UUID, grant_id: uuid.UUID, balance: Decimal, now: datetime, *, reason: str
) -> tuple[Decimal, Decimal]:
    g = session.execute(
        text("SELECT status, remaining FROM credit_grants WHERE id = :id AND user_id = :user_id"),
        {"id": grant_id, "user_id": user_id},
    ).one()
    if g.status != "active":
        return balance, Decimal(0)
    session.execute(
        text(
            "UPDATE credit_grants SET remaining = 0, status = 'expired', expired_at = :now, updated_at = :now "
            "WHERE id = :id"
        ),
        {"id": grant_id, "now": now},
    )
    if g.remaining > 0:
        balance -= g.remaining
        _insert_tx(
            session, user_id=user_id, type_="expiry", amount=-g.remaining, balance_after=balance, now=now,
            grant_id=grant_id, metadata={"reason": reason},
        )  # fmt: skip
    return balance, g.remaining


def expire_grant(
    session: Session, grant_id: uuid.UUID, *, now: datetime | None = None, force: bool = False
) -> ExpireResult:
    """Expire a grant whose `expires_at` has passed (or any active grant with `force`): its remaining credits
    leave the balance in an `expiry` row. Idempotent: an expired grant answers 0."""
    now = now or utcnow()
    g = session.execute(text("SELECT user_id, expires_at FROM credit_grants WHERE id = :id"), {"id": grant_id}).first()
    if g is None:
        raise NotFound("no such grant", details={"grant_id": str(grant_id)})
    account = _lock(session, g.user_id, now)
    if not force and (g.expires_at is None or g.expires_at > now):
        return ExpireResult(Decimal(0), account["balance"])
    balance, expired = _expire_locked(session, g.user_id, grant_id, account["balance"], now, reason="expired")
    if expired:
        _set_account(session, g.user_id, now, balance=balance)
    return ExpireResult(expired, balance)


def expire_due_grants(session: Session, *, now: datetime | None = None, limit: int = 500) -> int:
    """Expire up to `limit` grants past their expiry (the GrantExpiry job). Returns how many."""
    now = now or utcnow()
    due = session.execute(
        text(
            "SELECT id, user_id FROM credit_grants WHERE status = 'active' AND expires_at <= :now "
            "ORDER BY expires_at LIMIT :limit"
        ),
        {"now": now, "limit": limit},
    ).all()
    # Accounts are locked in user order: two jobs running at once can never deadlock each other.
    for row in sorted(due, key=lambda r: (r.user_id, r.id)):
        expire_grant(session, row.id, now=now)
    return len(due)


def clawback(
    session: Session,
    user_id: uuid.UUID,
    *,
    source_key: str,
    amount: Decimal,
    idempotency_key: str,
    reason: str | None = None,
    now: datetime | None = None,
) -> ClawbackResult:
    """Take back up to `amount` credits of the grant made under `source_key` (e.g. a refunded purchase), never
    below zero: what was already spent or is held stays spent. Answers what was actually clawed back.
    Idempotent per `idempotency_key` (e.g. the provider's refund id)."""
    amount = credits(amount)
    # Stored under a prefix no client key can carry (Idempotency-Key headers are printable ASCII), so a
    # client can never pre-empt a clawback by using its key first.
    key = _key(f"{INTERNAL_KEY_PREFIX}clawback:{idempotency_key}")
    request_hash = fingerprint("clawback", source_key=source_key, amount=amount)
    now = now or utcnow()
    account = _lock(session, user_id, now)
    previous = _previous(session, user_id, key, request_hash)
    if previous is not None:
        return ClawbackResult(previous["id"], -previous["amount"], previous["balance_after"], replayed=True)
    g = session.execute(
        text(
            "SELECT id, status, remaining FROM credit_grants WHERE user_id = :user_id AND source_key = :source_key "
            "FOR UPDATE"
        ),
        {"user_id": user_id, "source_key": source_key},
    ).first()
    if g is None:
        raise NotFound("no grant was made under this source key", details={"source_key": source_key})
    take = min(g.remaining, amount) if g.status == "active" else Decimal(0)
    if take > 0:
        session.execute(
            text("UPDATE credit_grants SET remaining = remaining - :take, updated_at = :now WHERE id = :id"),
            {"take": take, "id": g.id, "now": now},
        )
    balance: Decimal = account["balance"] - take
    tx_id = _insert_tx(
        session, user_id=user_id, type_="clawback", amount=-take, balance_after=balance, now=now, grant_id=g.id,
        key=key, request_hash=request_hash,
        metadata={"requested": str(amount), "reason": reason} if reason else {"requested": str(amount)},
    )  # fmt: skip
    if take > 0:
        _set_account(session, user_id, now, balance=balance)
    return ClawbackResult(tx_id, take, balance)


# --- refunds and adjustments ----------------------------------------------------------------------------------
def refund(
    session: Session,
    transaction_id: uuid.UUID,
    *,
    amount: Decimal | None = None,
    reason: str | None = None,
    actor_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> RefundResult:
    """Give back `amount` (default: all that is left) of a charge to the grants it came from. Refunds of one
    charge never exceed it in total (RefundExceedsCharge). With `user_id`, the charge must be that user's."""
    if amount is not None:
        amount = credits(amount)
    now = now or utcnow()
    tx = session.execute(text("SELECT user_id FROM credit_transactions WHERE id = :id"), {"id": transaction_id}).first()
    if tx is None or (user_id is not None and tx.user_id != user_id):
        raise TransactionNotFound("no such transaction", details={"transaction_id": str(transaction_id)})
    owner: uuid.UUID = tx.user_id
    key = _key(idempotency_key)
    request_hash = fingerprint("refund", transaction_id=transaction_id, amount=amount, reason=reason)
    account = _lock(session, owner, now)
    previous = _previous(session, owner, key, request_hash)
    if previous is not None:
        stored = previous["metadata"]
        return RefundResult(
            previous["id"], previous["amount"], Decimal(stored.get("expired", "0")), Decimal(stored["balance"]), True
        )
    original = (
        session.execute(text("SELECT * FROM credit_transactions WHERE id = :id"), {"id": transaction_id})
        .mappings()
        .one()
    )
    if original["type"] not in REFUNDABLE_TYPES or original["amount"] >= 0:
        raise NotRefundable(
            "only charges can be refunded", details={"transaction_id": str(transaction_id), "type": original["type"]}
        )
    charged = -original["amount"]
    refundable = session.execute(
        # A charge's draws are keyed by the charge itself, a capture's by its hold (the draws' origin).
        text(
            "SELECT coalesce(sum(amount - returned), 0) FROM credit_draws "
            "WHERE origin_id = :origin AND transaction_id = :id"
        ),
        {"origin": original["hold_id"] or transaction_id, "id": transaction_id},
    ).scalar_one()
    amount = refundable if amount is None else amount
    if amount <= 0 or amount > refundable:
        raise RefundExceedsCharge(
            "refunds would exceed the charge",
            details={
                "charged": str(charged),
                "refunded": str(charged - refundable),
                "refundable": str(refundable),
                "requested": str(amount),
            },
        )
    line, expired, _ = _put_back(
        session,
        draws_where="d.origin_id = :origin AND d.transaction_id = :tx",
        params={"origin": original["hold_id"] or transaction_id, "tx": transaction_id},
        amount=amount,
        now=now,
    )
    debt: Decimal = account["debt"]
    repaid = min(line, debt)
    unplaced = line - repaid  # the debt this charge made was repaid meanwhile: the credits come back as a grant
    balance: Decimal = account["balance"] + amount
    tx_id = new_id()
    meta: dict[str, Any] = {"reason": reason} if reason else {}
    if unplaced > 0:
        refund_grant = new_id()
        session.execute(
            text(
                "INSERT INTO credit_grants (id, user_id, kind, is_pack, amount, remaining, status, source_key, "
                "metadata, created_at, updated_at) VALUES (:id, :user_id, 'refund', false, :amount, :amount, 'active', "
                ":source_key, CAST(:metadata AS jsonb), :now, :now)"
            ),
            {
                "id": refund_grant,
                "user_id": owner,
                "amount": unplaced,
                "source_key": f"refund:{tx_id}",
                "metadata": as_json({"refund_of": str(transaction_id)}),
                "now": now,
            },
        )
    expiry = _plan_expiry(session, expired)
    expired_total = sum((give for _, give, _ in expiry), Decimal(0))
    _insert_tx(
        session, user_id=owner, type_="refund", amount=amount, balance_after=balance, now=now, tx_id=tx_id,
        operation=original["operation"], reverses_id=transaction_id, key=key, request_hash=request_hash,
        actor_id=actor_id,
        metadata={**meta, "expired": str(expired_total), "balance": str(balance - expired_total)},
    )  # fmt: skip
    balance = _write_expiry(
        session, user_id=owner, plan=expiry, balance=balance, now=now, reason="refund_to_expired_grant"
    )
    _set_account(session, owner, now, balance=balance, debt=debt - repaid)
    return RefundResult(tx_id, amount, expired_total, balance)


def adjust(
    session: Session,
    user_id: uuid.UUID,
    *,
    amount: Decimal,
    reason: str,
    actor_id: uuid.UUID | None,
    expires_at: datetime | None = None,
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> AdjustResult:
    """An admin correction: a positive amount adds an `adjustment` grant; a negative one draws like a charge
    (from every grant, purchased ones included, then the credit line). Audit-logged."""
    amount = credits(amount, signed=True)
    if not reason or not reason.strip():
        raise ValidationFailed("a reason is required", details={"field": "reason"})
    now = now or utcnow()
    if expires_at is not None and (amount < 0 or expires_at <= now):
        raise ValidationFailed(
            "expires_at applies to positive adjustments and must be in the future", details={"field": "expires_at"}
        )
    key = _key(idempotency_key)
    request_hash = fingerprint("adjust", amount=amount, reason=reason, expires_at=expires_at)
    account = _lock(session, user_id, now)
    previous = _previous(session, user_id, key, request_hash)
    if previous is not None:
        return AdjustResult(previous["id"], previous["amount"], previous["balance_after"], previous["grant_id"], True)
    reason_meta = {"reason": reason}
    if amount > 0:
        result = _new_grant(
            session, account, kind="adjustment", amount=amount, source_key=f"adjustment:{new_id()}",
            expires_at=expires_at, metadata=reason_meta, actor_id=actor_id, now=now, key=key, request_hash=request_hash,
        )  # fmt: skip
        tx_id, grant_id, balance = result.transaction_id, result.grant_id, result.balance
    else:
        tx_id = new_id()
        grant_id = None
        balance = account["balance"] + amount

        def write() -> None:
            _insert_tx(
                session, user_id=user_id, type_="adjustment", amount=amount, balance_after=balance, now=now,
                tx_id=tx_id, key=key, request_hash=request_hash, actor_id=actor_id, metadata=reason_meta,
            )  # fmt: skip

        line = _draw(
            session, account, -amount, allow_packs=True, now=now, origin=tx_id, transaction_id=tx_id,
            hold_id=None, write=write,
        )  # fmt: skip
        _set_account(session, user_id, now, balance=balance, debt=account["debt"] + line)
    audit(
        session, actor_id=actor_id, action="credits.adjust", target_type="user", target_id=str(user_id),
        details={"amount": str(amount), "reason": reason, "transaction_id": str(tx_id)}, now=now,
    )  # fmt: skip
    return AdjustResult(tx_id, amount, balance, grant_id)


def set_floor(
    session: Session, user_id: uuid.UUID, floor: Decimal, *, actor_id: uuid.UUID | None, reason: str,
    now: datetime | None = None,
) -> Decimal:  # fmt: skip
    """Open (floor < 0) or close (floor = 0) a credit line. A floor above what is already borrowed is refused.
    Audit-logged. Returns the new floor."""
    floor = credits(floor, "floor", allow_zero=True, signed=False) if floor >= 0 else -credits(-floor, "floor")
    if floor > 0:
        raise ValidationFailed("the floor must be zero or negative", details={"field": "floor"})
    now = now or utcnow()
    account = _lock(session, user_id, now)
    if account["debt"] > -floor:
        raise ValidationFailed(
            "the account already borrows more than this credit line", details={"debt": str(account["debt"])}
        )
    session.execute(
        text("UPDATE credit_accounts SET floor = :floor, updated_at = :now WHERE user_id = :user_id"),
        {"floor": floor, "now": now, "user_id": user_id},
    )
    audit(
        session, actor_id=actor_id, action="credits.set_floor", target_type="user", target_id=str(user_id),
        details={"floor": str(floor), "previous": str(account["floor"]), "reason": reason}, now=now,
    )  # fmt: skip
    return floor


def set_bonus_auto_use(session: Session, user_id: uuid.UUID, enabled: bool, *, now: datetime | None = None) -> bool:
    now = now or utcnow()
    _lock(session, user_id, now)
    session.execute(
        text("UPDATE credit_accounts SET bonus_auto_use = :enabled, updated_at = :now WHERE user_id = :user_id"),
        {"enabled": enabled, "now": now, "user_id": user_id},
    )
    return enabled


# --- reconciliation -------------------------------------------------------------------------------------------
RECONCILE_SQL = """
SELECT a.user_id, a.balance, a.held, a.debt, a.floor,
       coalesce((SELECT sum(t.amount) FROM credit_transactions t WHERE t.user_id = a.user_id), 0) AS ledger_sum,
       coalesce((SELECT sum(g.remaining) FROM credit_grants g WHERE g.user_id = a.user_id AND g.status = 'active'), 0)
           AS grants_remaining,
       coalesce((SELECT sum(h.amount) FROM credit_holds h WHERE h.user_id = a.user_id AND h.status = 'active'), 0)
           AS active_holds,
       coalesce((SELECT sum(d.amount - d.returned) FROM credit_holds h JOIN credit_draws d ON d.origin_id = h.id
                 WHERE h.user_id = a.user_id AND h.status = 'active'), 0) AS reserved
FROM credit_accounts a
WHERE (CAST(:user_ids AS uuid[]) IS NULL OR a.user_id = ANY(CAST(:user_ids AS uuid[])))
ORDER BY a.user_id
"""


def reconcile(
    session: Session, user_id: uuid.UUID | None = None, *, user_ids: Sequence[uuid.UUID] | None = None
) -> ReconcileReport:
    """Check every account (or one, or a batch `user_ids`): balance == sum(ledger) == sum(active grant
    remaining) - debt + held, held == sum(active holds) == what their draws still reserve.
    Read-only: answers the mismatches for the caller to record or alert on."""
    ids = [user_id] if user_id is not None else (list(user_ids) if user_ids is not None else None)
    rows = session.execute(text(RECONCILE_SQL), {"user_ids": ids}).mappings().all()
    mismatches: list[AccountMismatch] = []
    for r in rows:
        problems: list[str] = []
        if r["balance"] != r["ledger_sum"]:
            problems.append("balance != sum(ledger)")
        if r["balance"] != r["grants_remaining"] - r["debt"] + r["held"]:
            problems.append("balance != sum(grants remaining) - debt + held")
        if r["held"] != r["active_holds"]:
            problems.append("held != sum(active holds)")
        if r["active_holds"] != r["reserved"]:
            problems.append("active holds != credits their draws reserve")
        if problems:
            mismatches.append(
                AccountMismatch(
                    user_id=r["user_id"],
                    balance=r["balance"],
                    ledger_sum=r["ledger_sum"],
                    grants_remaining=r["grants_remaining"],
                    debt=r["debt"],
                    held=r["held"],
                    active_holds=r["active_holds"],
                    problems=tuple(problems),
                )
            )
    return ReconcileReport(users_checked=len(rows), mismatches=mismatches)
