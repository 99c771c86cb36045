"""Property: random sequences of grant / charge / hold / capture / release / refund / expire against a simple
model of the ledger; after every step the database agrees with the model and the invariants hold."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
from sqlalchemy import text

from tests.credits_support import set_costs
from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.errors import InsufficientCredits, RefundExceedsCharge

D = Decimal
amounts = st.decimals(min_value=D("0.0001"), max_value=D("50"), places=4)
fractions = st.sampled_from([D(0), D("0.25"), D("0.5"), D(1)])


@dataclass
class Grant:
    id: uuid.UUID
    index: int
    is_pack: bool
    remaining: Decimal
    active: bool = True


@dataclass
class Draws:
    """Where a charge or hold took credits: [(grant index, amount, returned)] in draw order."""

    parts: list[list[object]] = field(default_factory=list)

    def outstanding(self) -> Decimal:
        return sum((D(str(a)) - D(str(r)) for _, a, r in self.parts), D(0))


class LedgerModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        with UnitOfWork() as uow:
            # Purchased credits are always usable here (the bonus toggle is covered by unit rules).
            set_costs(uow.session, {"op": "1"}, allow_toggle=False)
            self.user_id = make_user(uow.session).id
            uow.commit()
        self.grants: list[Grant] = []
        self.balance = D(0)
        self.held = D(0)
        self.holds: dict[uuid.UUID, tuple[Decimal, Draws]] = {}
        self.charges: dict[uuid.UUID, Draws] = {}

    # --- the model's draw and put-back ----------------------------------------------------------------------
    def _available(self) -> Decimal:
        return sum((g.remaining for g in self.grants if g.active), D(0))

    def _draw(self, amount: Decimal) -> Draws:
        draws = Draws()
        need = amount
        for g in sorted((g for g in self.grants if g.active and g.remaining > 0), key=lambda g: (g.is_pack, g.index)):
            take = min(g.remaining, need)
            g.remaining -= take
            draws.parts.append([g.index, take, D(0)])
            need -= take
            if need == 0:
                break
        assert need == 0
        return draws

    def _put_back(self, draws: Draws, amount: Decimal) -> Decimal:
        """Returns what expired again (went back to an expired grant)."""
        expired = D(0)
        for part in reversed(draws.parts):
            if amount == 0:
                break
            index, taken, returned = part
            give = min(D(str(taken)) - D(str(returned)), amount)
            part[2] = D(str(returned)) + give
            amount -= give
            grant = self.grants[int(str(index))]
            if grant.active:
                grant.remaining += give
            else:
                expired += give
        return expired

    # --- rules ------------------------------------------------------------------------------------------------
    @rule(amount=amounts, kind=st.sampled_from(["promo", "allowance", "purchase"]))
    def grant(self, amount: Decimal, kind: str) -> None:
        with UnitOfWork() as uow:
            result = ledger.grant(uow.session, self.user_id, kind=kind, amount=amount, source_key=str(uuid.uuid4()))
            uow.commit()
        self.grants.append(Grant(result.grant_id, len(self.grants), kind == "purchase", amount))
        self.balance += amount

    @rule(amount=amounts)
    def charge(self, amount: Decimal) -> None:
        with UnitOfWork() as uow:
            try:
                result = ledger.charge(uow.session, self.user_id, operation="op", amount=amount)
                uow.commit()
            except InsufficientCredits:
                assert amount > self._available()
                return
        assert amount <= self._available()
        self.charges[result.transaction_id] = self._draw(amount)
        self.balance -= amount
        assert result.balance == self.balance

    @rule(amount=amounts)
    def hold(self, amount: Decimal) -> None:
        with UnitOfWork() as uow:
            try:
                result = ledger.hold(uow.session, self.user_id, amount=amount, ttl_seconds=3600)
                uow.commit()
            except InsufficientCredits:
                assert amount > self._available()
                return
        self.holds[result.hold_id] = (amount, self._draw(amount))
        self.held += amount

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data(), fraction=fractions)
    def capture(self, data: st.DataObject, fraction: Decimal) -> None:
        hold_id = data.draw(st.sampled_from(sorted(self.holds)))
        amount, draws = self.holds.pop(hold_id)
        take = (amount * fraction).quantize(D("0.0001"))
        with UnitOfWork() as uow:
            if take == 0:
                ledger.release(uow.session, self.user_id, hold_id)
            else:
                result = ledger.capture(uow.session, self.user_id, hold_id, amount=take)
            uow.commit()
        expired = self._put_back(draws, amount - take)
        self.held -= amount
        self.balance -= take + expired
        if take:
            self.charges[result.transaction_id] = draws

    @precondition(lambda self: bool(self.charges))
    @rule(data=st.data(), fraction=st.sampled_from([D("0.5"), D(1), D(2)]))
    def refund(self, data: st.DataObject, fraction: Decimal) -> None:
        tx_id = data.draw(st.sampled_from(sorted(self.charges)))
        draws = self.charges[tx_id]
        outstanding = draws.outstanding()
        amount = (outstanding * fraction).quantize(D("0.0001"))
        if amount == 0 and outstanding > 0:
            amount = outstanding  # a fraction below the scale: refund what is left
        if amount == 0:
            with UnitOfWork() as uow:  # nothing left to refund: refused
                try:
                    ledger.refund(uow.session, tx_id)
                    raise AssertionError("a fully refunded charge was refunded again")
                except RefundExceedsCharge:
                    return
        with UnitOfWork() as uow:
            try:
                ledger.refund(uow.session, tx_id, amount=amount)
                uow.commit()
            except RefundExceedsCharge:
                assert amount > outstanding
                return
        assert 0 < amount <= outstanding
        expired = self._put_back(draws, amount)
        self.balance += amount - expired

    @precondition(lambda self: any(g.active for g in self.grants))
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        grant = data.draw(st.sampled_from([g for g in self.grants if g.active]))
        with UnitOfWork() as uow:
            result = ledger.expire_grant(uow.session, grant.id, force=True)
            uow.commit()
        assert result.expired == grant.remaining
        self.balance -= grant.remaining
        grant.remaining = D(0)
        grant.active = False

    # --- invariants -------------------------------------------------------------------------------------------
    @invariant()
    def database_agrees_with_the_model(self) -> None:
        with UnitOfWork() as uow:
            account = uow.session.execute(
                text("SELECT balance, held FROM credit_accounts WHERE user_id = :u"), {"u": self.user_id}
            ).first()
            remaining: dict[Any, Any] = dict(
                uow.session.execute(
                    text("SELECT id, remaining FROM credit_grants WHERE user_id = :u"), {"u": self.user_id}
                ).all()
            )
            report = ledger.reconcile(uow.session, self.user_id)
        if account is not None:
            assert (account.balance, account.held) == (self.balance, self.held)
        assert remaining == {g.id: g.remaining for g in self.grants}
        assert report.mismatches == []
        assert self.balance - self.held >= 0


def test_ledger_matches_a_simple_model(db):
    run_state_machine_as_test(
        LedgerModel,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        ),
    )
