"""The ledger under real parallel connections: each worker thread has its own connection and transaction,
and they start together at a barrier, so the database sees the interleavings."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from tests.credits_support import assert_consistent, balance, funded_user, ledger_rows, set_costs
from tests.support import make_user
from tollgate import ledger
from tollgate.db.base import utcnow
from tollgate.errors import InsufficientCredits, TollgateError

D = Decimal
WORKERS = 8


def race(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run work(0..count-1) on WORKERS threads released together; answers results or the domain errors."""
    barrier = threading.Barrier(min(count, WORKERS))

    def run(i: int) -> Any:
        if i < WORKERS:
            barrier.wait(timeout=30)
        try:
            return work(i)
        except TollgateError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(run, range(count)))


def test_racing_charges_on_one_user_never_overdraw(db):
    # Given 10 credits and a cost of 1 per chat
    user_id = funded_user(db, "10", costs={"chat": "1"})

    # When 40 charges race
    def charge(_: int) -> Any:
        with db() as uow:
            result = ledger.charge(uow.session, user_id, operation="chat")
            uow.commit()
            return result

    results = race(40, charge)
    # Then exactly the affordable 10 succeed, the rest are refused, and the balance ends exactly at 0
    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"ChargeResult": 10, "InsufficientCredits": 30}
    assert sorted(r.balance for r in results if isinstance(r, ledger.ChargeResult)) == [D(i) for i in range(10)]
    assert balance(db, user_id) == D(0)
    assert_consistent(db, user_id)


def test_one_idempotency_key_from_many_workers_has_one_effect(db):
    user_id = funded_user(db, "100", costs={"chat": "1"})

    def charge(_: int) -> Any:
        with db() as uow:
            result = ledger.charge(uow.session, user_id, operation="chat", quantity=D(3), idempotency_key="same")
            uow.commit()
            return result

    results = race(24, charge)
    assert all(isinstance(r, ledger.ChargeResult) for r in results), results
    assert len({r.transaction_id for r in results}) == 1
    assert sum(1 for r in results if not r.replayed) == 1
    assert balance(db, user_id) == D(97)
    assert [r["type"] for r in ledger_rows(db, user_id)] == ["promo", "usage"]


def test_racing_first_use_creates_one_account(db):
    # Given a user with no credit account yet
    with db() as uow:
        set_costs(uow.session, {"chat": "1"})
        user = make_user(uow.session)
        uow.commit()

    def touch(i: int) -> Any:
        with db() as uow:
            result = ledger.grant(uow.session, user.id, kind="promo", amount=D(1), source_key=f"g{i}")
            uow.commit()
            return result

    results = race(16, touch)
    assert all(isinstance(r, ledger.GrantResult) for r in results), results
    assert balance(db, user.id) == D(16)
    assert_consistent(db, user.id)


def test_charges_racing_refunds_holds_and_grant_expiry_keep_the_books_exact(db):
    # Given two grants (one about to expire) and ten earlier charges
    now = utcnow()
    with db() as uow:
        set_costs(uow.session, {"chat": "1"})
        user = make_user(uow.session)
        soon = ledger.grant(
            uow.session, user.id, kind="promo", amount=D(30), source_key="soon", expires_at=now + timedelta(seconds=30)
        )
        ledger.grant(uow.session, user.id, kind="allowance", amount=D(30), source_key="later")
        earlier = [ledger.charge(uow.session, user.id, operation="chat", quantity=D(2)) for _ in range(10)]
        uow.commit()

    def work(i: int) -> Any:
        with db() as uow:
            s = uow.session
            if i == 5:
                result: Any = ledger.expire_grant(s, soon.grant_id, force=True)
            elif i % 4 == 0:
                result = ledger.refund(s, earlier[i % 10].transaction_id, amount=D(1))
            elif i % 4 == 1:
                held = ledger.hold(s, user.id, amount=D(2))
                result = ledger.capture(s, user.id, held.hold_id, amount=D(1))
            else:
                result = ledger.charge(s, user.id, operation="chat")
            uow.commit()
            return result

    results = race(48, work)
    unexpected = [r for r in results if isinstance(r, TollgateError) and not isinstance(r, InsufficientCredits)]
    # Refunds of one charge may meet its limit (2 refunds of 1 each are allowed; a third is refused)
    assert all(r.code == "refund_exceeds_charge" for r in unexpected), unexpected
    assert_consistent(db, user.id)
    with db() as uow:
        over = uow.session.execute(
            text(
                "SELECT c.id FROM credit_transactions c JOIN credit_transactions r ON r.reverses_id = c.id "
                "GROUP BY c.id, c.amount HAVING sum(r.amount) > -c.amount"
            )
        ).all()
        negative = uow.session.execute(text("SELECT count(*) FROM credit_grants WHERE remaining < 0")).scalar_one()
        expired = uow.session.execute(
            text("SELECT status, remaining FROM credit_grants WHERE id = :id"), {"id": soon.grant_id}
        ).one()
    assert over == [] and negative == 0
    assert expired.status == "expired" and expired.remaining == 0
    assert balance(db, user.id) >= 0
