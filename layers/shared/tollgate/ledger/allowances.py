"""Monthly allowances for many users at once: the rules of `issue_allowance`, in a fixed number of statements
per batch instead of per user (the MonthlyAllowance job issues them by the hundred thousand).

Per user, exactly as for one: idempotent per (user, period) by the grant's source key `allowance:<period>`;
before granting, earlier allowance grants are expired (rollover `none`), trimmed to the cap (`capped`, oldest
expire first) or kept (`full`); a new grant first repays credit-line debt. Accounts are locked in user-id order,
the one lock order of the ledger, so a batch never deadlocks with single-user operations.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from tollgate.db.base import new_id, utcnow
from tollgate.errors import ValidationFailed
from tollgate.ledger.core import GRANT_KINDS, as_json, credits
from tollgate.ledger.results import GrantResult
from tollgate.outbox import EventType, OutboxItem, emit_many

ROLLOVERS = frozenset({"none", "capped", "full"})


@dataclass(frozen=True, slots=True)
class AllowanceRequest:
    user_id: uuid.UUID
    period_key: str
    expires_at: datetime | None = None
    # Unless given, amount and rollover come from the active plan of the user's tier.
    amount: Decimal | None = None
    rollover: str | None = None
    rollover_cap: Decimal | None = None


@dataclass
class _Writes:
    expire_ids: list[uuid.UUID] = field(default_factory=list)
    trim_ids: list[uuid.UUID] = field(default_factory=list)
    trim_cuts: list[Decimal] = field(default_factory=list)
    grants: list[dict[str, Any]] = field(default_factory=list)
    txs: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[tuple[uuid.UUID, Decimal, Decimal]] = field(default_factory=list)

    def tx(self, user_id: uuid.UUID, type_: str, amount: Decimal, balance: Decimal, grant_id: uuid.UUID,
           metadata: dict[str, Any], now: datetime) -> uuid.UUID:  # fmt: skip
        tx_id = new_id()
        row = {"id": tx_id, "user_id": user_id, "type": type_, "amount": amount, "balance_after": balance}
        row.update(grant_id=grant_id, metadata=as_json(metadata), created_at=now)
        self.txs.append(row)
        return tx_id


def _rows(session: Session, sql: str, **params: Any) -> Sequence[Any]:
    return session.execute(text(sql), params).all()


def issue_allowance(
    session: Session,
    user_id: uuid.UUID,
    period_key: str,
    *,
    amount: Decimal | None = None,
    expires_at: datetime | None = None,
    rollover: str | None = None,
    rollover_cap: Decimal | None = None,
    now: datetime | None = None,
) -> GrantResult | None:
    """The tier allowance for one period (e.g. "2026-12"), idempotent per (user, period).

    Unless given, `amount`, `rollover` and `rollover_cap` come from the active plan of the user's tier. Before
    granting, earlier allowance grants are expired (rollover `none`), trimmed to the cap (`capped`, oldest
    expire first), or kept (`full`). Returns None when there is nothing to grant (no plan, or 0 credits).
    """
    request = AllowanceRequest(user_id, period_key, expires_at, amount, rollover, rollover_cap)
    return issue_allowances(session, [request], now=now or utcnow())[0]


def issue_allowances(
    session: Session, requests: Sequence[AllowanceRequest], *, now: datetime
) -> list[GrantResult | None]:
    """Issue each request's allowance (None where there is nothing to grant: no plan, or 0 credits).
    A request whose period was already issued answers the original grant with `created=False`."""
    if not requests:
        return []
    if len({r.user_id for r in requests}) != len(requests):
        raise ValidationFailed("one allowance request per user per call")
    user_ids = [r.user_id for r in requests]
    source_keys = [f"allowance:{r.period_key}" for r in requests]

    session.execute(
        text(
            "INSERT INTO credit_accounts (user_id, created_at, updated_at) "
            "SELECT u, :now, :now FROM unnest(CAST(:ids AS uuid[])) AS u ON CONFLICT DO NOTHING"
        ),
        {"ids": user_ids, "now": now},
    )
    accounts = {
        r.user_id: r
        for r in _rows(
            session,
            "SELECT user_id, balance, debt FROM credit_accounts WHERE user_id = ANY(CAST(:ids AS uuid[])) "
            "ORDER BY user_id FOR UPDATE",
            ids=user_ids,
        )
    }
    existing = {
        r.user_id: r
        for r in _rows(
            session,
            "SELECT user_id, id, amount FROM credit_grants WHERE (user_id, source_key) IN "
            "(SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:keys AS text[])))",
            ids=user_ids,
            keys=source_keys,
        )
    }
    # The ledger rows of grants already issued (a replay): looked up by user, where the ledger is indexed.
    issued_tx = (
        dict(
            _rows(
                session,
                # a grant's first ledger row is the one that created it (later ones expire or trim it)
                "SELECT DISTINCT ON (grant_id) grant_id, id FROM credit_transactions "
                "WHERE user_id = ANY(CAST(:users AS uuid[])) AND grant_id = ANY(CAST(:grants AS uuid[])) "
                "ORDER BY grant_id, created_at, id",
                users=list(existing),
                grants=[r.id for r in existing.values()],
            )
        )
        if existing
        else {}
    )
    plans = {
        r.user_id: r
        for r in _rows(
            session,
            "SELECT u.id AS user_id, p.monthly_credits, p.rollover, p.rollover_cap FROM users u "
            "JOIN plans p ON p.tier = u.tier AND p.active WHERE u.id = ANY(CAST(:ids AS uuid[]))",
            ids=user_ids,
        )
    }
    previous: dict[uuid.UUID, list[Any]] = {}
    for r in _rows(
        session,
        "SELECT user_id, id, remaining FROM credit_grants WHERE user_id = ANY(CAST(:ids AS uuid[])) "
        "AND kind = 'allowance' AND status = 'active' ORDER BY user_id, expires_at ASC NULLS LAST, created_at, id",
        ids=user_ids,
    ):
        previous.setdefault(r.user_id, []).append(r)

    writes = _Writes()
    results: list[GrantResult | None] = []
    for request, source_key in zip(requests, source_keys, strict=True):
        account = accounts[request.user_id]
        found = existing.get(request.user_id)
        if found is not None:
            results.append(GrantResult(found.id, issued_tx[found.id], found.amount, account.balance, created=False))
            continue
        plan = plans.get(request.user_id)
        amount = request.amount if request.amount is not None else (plan.monthly_credits if plan else Decimal(0))
        rollover, cap_value = request.rollover, request.rollover_cap
        if rollover is None:
            rollover = plan.rollover if plan else "none"
            cap_value = plan.rollover_cap if plan else None
        if rollover not in ROLLOVERS:
            raise ValidationFailed("rollover must be none, capped or full", details={"field": "rollover"})
        amount = credits(amount, allow_zero=True)
        balance: Decimal = account.balance
        if rollover != "full":
            cap = Decimal(0) if rollover == "none" else credits(cap_value or 0, "rollover_cap", allow_zero=True)
            grants = previous.get(request.user_id, [])
            excess = sum((g.remaining for g in grants), Decimal(0)) - cap
            for g in grants:
                cut = min(g.remaining, max(excess, Decimal(0)))
                if rollover == "none" or cut == g.remaining:
                    writes.expire_ids.append(g.id)
                    if g.remaining > 0:
                        balance -= g.remaining
                        writes.tx(request.user_id, "expiry", -g.remaining, balance, g.id,
                                  {"reason": "allowance_reset"}, now)  # fmt: skip
                elif cut > 0:
                    balance -= cut
                    writes.trim_ids.append(g.id)
                    writes.trim_cuts.append(cut)
                    writes.tx(request.user_id, "expiry", -cut, balance, g.id, {"reason": "rollover_cap"}, now)
                excess -= cut
        debt: Decimal = account.debt
        if amount == 0:
            if balance != account.balance:
                writes.accounts.append((request.user_id, balance, debt))
            results.append(None)
            continue
        repay = min(debt, amount)
        grant_id = new_id()
        new_grant = {"id": grant_id, "user_id": request.user_id, "amount": amount, "remaining": amount - repay}
        new_grant.update(
            source_key=source_key, expires_at=request.expires_at, metadata=as_json({"period": request.period_key})
        )
        writes.grants.append(new_grant)
        balance += amount
        meta: dict[str, Any] = {"period": request.period_key}
        if repay:
            meta["repaid_debt"] = str(repay)
        tx_id = writes.tx(request.user_id, GRANT_KINDS["allowance"], amount, balance, grant_id, meta, now)
        writes.accounts.append((request.user_id, balance, debt - repay))
        results.append(GrantResult(grant_id, tx_id, amount, balance, created=True))

    _apply(session, writes, now)
    # One `credits.granted` per new allowance grant, in the batch's transaction and in one statement.
    new_grants = {g["id"]: g for g in writes.grants}
    emit_many(
        session,
        [
            OutboxItem(
                EventType.CREDITS_GRANTED,
                user_id=g["user_id"],
                data={
                    "grant_id": r.grant_id,
                    "transaction_id": r.transaction_id,
                    "kind": "allowance",
                    "amount": r.amount,
                    "balance": r.balance,
                    "expires_at": g["expires_at"],
                    "metadata": {"period": g["source_key"].removeprefix("allowance:")},
                },
            )
            for r in results
            if r is not None and r.created
            for g in (new_grants[r.grant_id],)
        ],
    )
    return results


def _apply(session: Session, w: _Writes, now: datetime) -> None:
    if w.expire_ids:
        session.execute(
            text(
                "UPDATE credit_grants SET remaining = 0, status = 'expired', expired_at = :now, updated_at = :now "
                "WHERE id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": w.expire_ids, "now": now},
        )
    if w.trim_ids:
        session.execute(
            text(
                "UPDATE credit_grants g SET remaining = g.remaining - d.cut, updated_at = :now "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:cuts AS numeric[])) AS d(id, cut) WHERE g.id = d.id"
            ),
            {"ids": w.trim_ids, "cuts": w.trim_cuts, "now": now},
        )
    if w.grants:
        session.execute(
            text(
                "INSERT INTO credit_grants (id, user_id, kind, is_pack, amount, remaining, status, source_key, "
                "expires_at, metadata, created_at, updated_at) "
                "SELECT d.id, d.user_id, 'allowance', false, d.amount, d.remaining, 'active', d.source_key, "
                "d.expires_at, d.metadata, :now, :now "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS uuid[]), CAST(:amounts AS numeric[]), "
                "CAST(:remainings AS numeric[]), CAST(:keys AS text[]), CAST(:expires AS timestamptz[]), "
                "CAST(:metas AS jsonb[])) AS d(id, user_id, amount, remaining, source_key, expires_at, metadata)"
            ),
            {
                "ids": [g["id"] for g in w.grants],
                "users": [g["user_id"] for g in w.grants],
                "amounts": [g["amount"] for g in w.grants],
                "remainings": [g["remaining"] for g in w.grants],
                "keys": [g["source_key"] for g in w.grants],
                "expires": [g["expires_at"] for g in w.grants],
                "metas": [g["metadata"] for g in w.grants],
                "now": now,
            },
        )
    if w.txs:
        session.execute(
            text(
                "INSERT INTO credit_transactions (id, user_id, type, amount, balance_after, grant_id, metadata, "
                "created_at) SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:users AS uuid[]), "
                "CAST(:types AS text[]), CAST(:amounts AS numeric[]), CAST(:balances AS numeric[]), "
                "CAST(:grants AS uuid[]), CAST(:metas AS jsonb[]), CAST(:times AS timestamptz[]))"
            ),
            {
                "ids": [t["id"] for t in w.txs],
                "users": [t["user_id"] for t in w.txs],
                "types": [t["type"] for t in w.txs],
                "amounts": [t["amount"] for t in w.txs],
                "balances": [t["balance_after"] for t in w.txs],
                "grants": [t["grant_id"] for t in w.txs],
                "metas": [t["metadata"] for t in w.txs],
                "times": [t["created_at"] for t in w.txs],
            },
        )
    if w.accounts:
        session.execute(
            text(
                "UPDATE credit_accounts a SET balance = d.balance, debt = d.debt, updated_at = :now "
                "FROM unnest(CAST(:users AS uuid[]), CAST(:balances AS numeric[]), CAST(:debts AS numeric[])) "
                "AS d(user_id, balance, debt) WHERE a.user_id = d.user_id"
            ),
            {
                "users": [a[0] for a in w.accounts],
                "balances": [a[1] for a in w.accounts],
                "debts": [a[2] for a in w.accounts],
                "now": now,
            },
        )
