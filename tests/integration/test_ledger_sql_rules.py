"""Per-plan pricing, cost rounding and auto-use each have one SQL definition (`tollgate_unit_cost`,
`tollgate_cost`, `tollgate_allow_packs`); a charge and a hold, the ledger's two ways to price a deduction,
both follow them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import text

from tests.credits_support import funded_user, set_costs
from tests.support import make_user
from tollgate import ledger
from tollgate.errors import InsufficientCredits, UnknownOperation

D = Decimal


@pytest.mark.parametrize(
    ("unit", "quantity", "expected"),
    [
        ("0.3333", "0.5", "0.1667"),  # 0.16665 rounds up, never down
        ("1", "3", "3.0000"),
        ("0.00001", "1", "0.0001"),  # below the scale: still costs the smallest unit
        ("2.5", "0.0001", "0.0003"),
        ("0", "7", "0.0000"),
    ],
)
def test_cost_is_quantity_times_unit_cost_rounded_up_to_the_ledgers_scale(db, unit, quantity, expected):
    with db() as uow:
        # When the rounding rule prices a quantity
        cost = uow.session.execute(
            text("SELECT tollgate_cost(:unit, :quantity)"), {"unit": D(unit), "quantity": D(quantity)}
        ).scalar_one()
    # Then it is the exact product rounded up to 4 decimals
    assert cost == D(expected)
    assert str(cost) == expected


def test_unit_cost_is_the_plan_override_else_the_default_else_none(db):
    costs = '{"chat": "1", "image": "5"}'
    plans = '{"PRO": {"chat": "0.5"}}'
    with db() as uow:

        def unit(tier: str, operation: str | None) -> Decimal | None:
            value: Decimal | None = uow.session.execute(
                text("SELECT tollgate_unit_cost(CAST(:c AS jsonb), CAST(:p AS jsonb), :tier, :op)"),
                {"c": costs, "p": plans, "tier": tier, "op": operation},
            ).scalar_one()
            return value

        # Then a plan's override wins, other operations and plans fall back to the default, unknown ones have none
        assert unit("PRO", "chat") == D("0.5")
        assert unit("PRO", "image") == D(5)
        assert unit("FREE", "chat") == D(1)
        assert unit("FREE", "search") is None
        assert unit("FREE", None) is None


@pytest.mark.parametrize(
    ("auto_use", "toggle_allowed", "expected"),
    [(False, True, False), (True, True, True), (False, False, True), (True, False, True), (False, None, True)],
)
def test_packs_are_drawn_when_the_user_chose_so_or_may_not_choose(db, auto_use, toggle_allowed, expected):
    with db() as uow:
        allowed = uow.session.execute(
            text("SELECT tollgate_allow_packs(:auto_use, :toggle)"), {"auto_use": auto_use, "toggle": toggle_allowed}
        ).scalar_one()
    assert allowed is expected


def test_a_hold_and_a_charge_price_an_operation_alike(db):
    # Given a plan override with an over-precise unit cost
    with db() as uow:
        set_costs(uow.session, {"chat": "1"}, plan_costs={"PRO": {"chat": "0.3333"}})
        uow.commit()
    user_id = funded_user(db, "10", tier="PRO")
    # When the same operation and quantity are held and charged
    with db() as uow:
        held = ledger.hold(uow.session, user_id, operation="chat", quantity=D("0.5"))
        charged = ledger.charge(uow.session, user_id, operation="chat", quantity=D("0.5"))
        uow.commit()
    # Then both cost the plan's price, rounded up alike
    assert held.amount == charged.charged == D("0.1667")


def test_a_hold_and_a_charge_refuse_an_unknown_operation_alike(db):
    user_id = funded_user(db, "10", costs={"chat": "1"})
    with db() as uow:
        with pytest.raises(UnknownOperation):
            ledger.hold(uow.session, user_id, operation="video")
        with pytest.raises(UnknownOperation):
            ledger.charge(uow.session, user_id, operation="video")


@pytest.mark.parametrize(
    ("toggle", "auto_use", "packs_used"), [(True, False, False), (True, True, True), (False, False, True)]
)
def test_a_hold_and_a_charge_follow_auto_use_alike(db, toggle, auto_use, packs_used):
    # Given a user whose only credits are a purchased pack
    with db() as uow:
        set_costs(uow.session, {"chat": "2"}, allow_toggle=toggle)
        user_id = make_user(uow.session).id
        ledger.grant(uow.session, user_id, kind="purchase", amount=D(10), source_key="order-1")
        ledger.set_bonus_auto_use(uow.session, user_id, auto_use)
        uow.commit()
    # When they hold and charge the same operation
    outcomes = []
    for deduct in (ledger.hold, ledger.charge):
        with db() as uow:
            try:
                deduct(uow.session, user_id, operation="chat")
                outcomes.append(True)
            except InsufficientCredits:
                outcomes.append(False)
    # Then both draw the pack exactly when auto-use allows it
    assert outcomes == [packs_used, packs_used]
