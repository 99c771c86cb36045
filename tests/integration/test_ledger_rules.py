"""The ledger's rules, one by one, against the real database (tollgate.ledger)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.credits_support import assert_consistent, balance, funded_user, grants, ledger_rows, set_costs
from tests.support import make_user
from tollgate import ledger
from tollgate.config import get_settings
from tollgate.db.base import utcnow
from tollgate.errors import (
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    NotRefundable,
    RefundExceedsCharge,
    TransactionNotFound,
    UnknownOperation,
    ValidationFailed,
)

D = Decimal
COSTS = {"chat": "1", "image_gen": "5", "faq_search": "0.2"}


# --- grants ---------------------------------------------------------------------------------------------------
def test_signup_credits_are_granted_once(db, monkeypatch):
    # Given SIGNUP_CREDITS = 25 and a new user
    monkeypatch.setenv("SIGNUP_CREDITS", "25")
    get_settings.cache_clear()
    try:
        with db() as uow:
            user = make_user(uow.session)
            # When the sign-up grant runs twice (e.g. a retried registration)
            ledger.grant_signup_credits(uow.session, user.id)
            ledger.grant_signup_credits(uow.session, user.id)
            uow.commit()
    finally:
        get_settings.cache_clear()
    # Then the user has 25 credits from one signup row
    assert balance(db, user.id) == D("25")
    rows = ledger_rows(db, user.id)
    assert [(r["type"], r["amount"]) for r in rows] == [("signup", D("25"))]
    assert_consistent(db)


def test_signup_credits_zero_grants_nothing(db, monkeypatch):
    # Given SIGNUP_CREDITS = 0
    monkeypatch.setenv("SIGNUP_CREDITS", "0")
    get_settings.cache_clear()
    try:
        with db() as uow:
            user = make_user(uow.session)
            # When the sign-up grant runs
            ledger.grant_signup_credits(uow.session, user.id)
            uow.commit()
    finally:
        get_settings.cache_clear()
    # Then nothing is written
    assert ledger_rows(db, user.id) == []


def test_grant_is_idempotent_per_source_key_and_conflicts_on_a_different_grant(db):
    # Given a purchase grant under an order id
    with db() as uow:
        user = make_user(uow.session)
        first = ledger.grant(uow.session, user.id, kind="purchase", amount=D("100"), source_key="stripe:cs_1")
        # When the same grant is repeated
        again = ledger.grant(uow.session, user.id, kind="purchase", amount=D("100"), source_key="stripe:cs_1")
        # Then it answers the original grant and adds nothing
        assert again.grant_id == first.grant_id and again.created is False
        # And a different grant under the same key is a conflict
        with pytest.raises(IdempotencyConflict):
            ledger.grant(uow.session, user.id, kind="purchase", amount=D("50"), source_key="stripe:cs_1")
        uow.commit()
    assert balance(db, user.id) == D("100")
    assert_consistent(db)


@pytest.mark.parametrize("amount", [D("0"), D("-1"), D("0.00001"), D("1e13")])
def test_grant_refuses_bad_amounts(db, amount):
    with db() as uow:
        user = make_user(uow.session)
        with pytest.raises(ValidationFailed):
            ledger.grant(uow.session, user.id, kind="promo", amount=amount, source_key="x")


# --- charges --------------------------------------------------------------------------------------------------
def test_charge_prices_from_the_cost_table_with_plan_override_first(db):
    # Given chat costs 1 by default and 0.5 on PRO, and a PRO user with 10 credits
    with db() as uow:
        set_costs(uow.session, COSTS, plan_costs={"PRO": {"chat": "0.5"}})
        user = make_user(uow.session, tier="PRO")
        other = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="promo", amount=D(10), source_key="p")
        ledger.grant(uow.session, other.id, kind="promo", amount=D(10), source_key="p")
        # When each charges 3 chats and 2 image generations
        pro = ledger.charge(uow.session, user.id, operation="chat", quantity=D(3))
        free = ledger.charge(uow.session, other.id, operation="chat", quantity=D(3))
        img = ledger.charge(uow.session, user.id, operation="image_gen", quantity=D(1))
        uow.commit()
    # Then the plan's price applies where it overrides, the default elsewhere
    assert (pro.charged, pro.balance) == (D("1.5"), D("8.5"))
    assert (free.charged, free.balance) == (D("3"), D("7"))
    assert img.charged == D("5")
    assert_consistent(db)


def test_charge_of_fractional_costs_is_exact(db):
    # Given faq_search costs 0.2
    user_id = funded_user(db, "1", costs=COSTS)
    # When it is charged five times
    with db() as uow:
        results = [ledger.charge(uow.session, user_id, operation="faq_search") for _ in range(5)]
        uow.commit()
    # Then exactly 1 credit went, and a sixth is refused
    assert results[-1].balance == D("0")
    with db() as uow, pytest.raises(InsufficientCredits):
        ledger.charge(uow.session, user_id, operation="faq_search")


def test_unknown_operation_and_bad_quantities_are_refused_and_write_nothing(db):
    user_id = funded_user(db, "10", costs=COSTS)
    with db() as uow:
        with pytest.raises(UnknownOperation):
            ledger.charge(uow.session, user_id, operation="teleport")
        for quantity in (D(0), D(-1), D("0.00001")):
            with pytest.raises(ValidationFailed):
                ledger.charge(uow.session, user_id, operation="chat", quantity=quantity)
        uow.commit()
    assert [r["type"] for r in ledger_rows(db, user_id)] == ["promo"]


def test_insufficient_credits_stores_nothing_and_reports_the_balance(db):
    # Given 3 credits
    user_id = funded_user(db, "3", costs=COSTS)
    # When a 5-credit operation is charged with an idempotency key
    with db() as uow:
        with pytest.raises(InsufficientCredits) as refused:
            ledger.charge(uow.session, user_id, operation="image_gen", idempotency_key="k1")
        uow.commit()
    # Then 402 details carry the balance, and nothing was stored
    assert refused.value.details["balance"] == "3.0000"
    assert refused.value.details["available"] == "3.0000"
    assert len(ledger_rows(db, user_id)) == 1
    assert grants(db, user_id)["promo:seed"]["remaining"] == D(3)
    # And once funded, the same key is free to succeed (a refusal was not stored as a result)
    with db() as uow:
        ledger.grant(uow.session, user_id, kind="promo", amount=D(10), source_key="more")
        ok = ledger.charge(uow.session, user_id, operation="image_gen", idempotency_key="k1")
        uow.commit()
    assert ok.balance == D(8)


def test_idempotency_same_request_replays_and_different_request_conflicts(db):
    user_id = funded_user(db, "10", costs=COSTS)
    with db() as uow:
        first = ledger.charge(uow.session, user_id, operation="chat", quantity=D(2), idempotency_key="req-1")
        uow.commit()
    with db() as uow:
        again = ledger.charge(uow.session, user_id, operation="chat", quantity=D("2.0"), idempotency_key="req-1")
        with pytest.raises(IdempotencyConflict):
            ledger.charge(uow.session, user_id, operation="chat", quantity=D(3), idempotency_key="req-1")
        with pytest.raises(IdempotencyConflict):
            ledger.hold(uow.session, user_id, operation="chat", idempotency_key="req-1")
        uow.commit()
    assert again.replayed and again.transaction_id == first.transaction_id
    assert (again.charged, again.balance) == (first.charged, first.balance)
    assert balance(db, user_id) == D(8)
    # The key is unique per user: another user may use it
    other = funded_user(db, "10")
    with db() as uow:
        assert ledger.charge(uow.session, other, operation="chat", idempotency_key="req-1").replayed is False
        uow.commit()


def test_draw_order_free_grants_before_packs_soonest_expiry_first(db):
    # Given a pack (no expiry), an allowance expiring in 10 days and a promo expiring in 2 days, auto-use on
    now = utcnow()
    with db() as uow:
        set_costs(uow.session, COSTS)
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="purchase", amount=D(10), source_key="pack")
        ledger.grant(
            uow.session, user.id, kind="allowance", amount=D(5), source_key="allow", expires_at=now + timedelta(days=10)
        )
        ledger.grant(
            uow.session, user.id, kind="promo", amount=D(3), source_key="promo", expires_at=now + timedelta(days=2)
        )
        ledger.set_bonus_auto_use(uow.session, user.id, True)
        # When 10 credits are charged
        charged = ledger.charge(uow.session, user.id, operation="chat", quantity=D(10))
        draws = uow.session.execute(
            text(
                "SELECT g.source_key, d.amount FROM credit_draws d JOIN credit_grants g ON g.id = d.grant_id "
                "WHERE d.transaction_id = :t ORDER BY d.seq"
            ),
            {"t": charged.transaction_id},
        ).all()
        uow.commit()
    # Then the promo (soonest) goes first, then the allowance, then the pack; each draw is recorded
    assert [(k, a) for k, a in draws] == [("promo", D(3)), ("allow", D(5)), ("pack", D(2))]
    remaining = {k: g["remaining"] for k, g in grants(db, user.id).items()}
    assert remaining == {"pack": D(8), "allow": D(0), "promo": D(0)}
    assert_consistent(db)


def test_purchased_credits_wait_for_auto_use_where_users_may_choose(db):
    # Given users may choose (the default), a user with only a pack has auto-use off
    with db() as uow:
        set_costs(uow.session, COSTS, allow_toggle=True)
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="purchase", amount=D(10), source_key="pack")
        uow.commit()
    # When they charge, the pack is not used
    with db() as uow, pytest.raises(InsufficientCredits) as refused:
        ledger.charge(uow.session, user.id, operation="chat")
    assert refused.value.details["balance"] == "10.0000" and refused.value.details["available"] == "0.0000"
    # When they turn auto-use on, it is
    with db() as uow:
        ledger.set_bonus_auto_use(uow.session, user.id, True)
        assert ledger.charge(uow.session, user.id, operation="chat").balance == D(9)
        uow.commit()


def test_purchased_credits_are_always_used_where_users_may_not_choose(db):
    with db() as uow:
        set_costs(uow.session, COSTS, allow_toggle=False)
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="purchase", amount=D(10), source_key="pack")
        assert ledger.charge(uow.session, user.id, operation="chat").balance == D(9)
        uow.commit()


def test_expired_but_unprocessed_grants_are_not_drawn(db):
    # Given a grant whose expiry has passed (the job has not run yet)
    now = utcnow()
    with db() as uow:
        set_costs(uow.session, COSTS)
        user = make_user(uow.session)
        ledger.grant(
            uow.session, user.id, kind="promo", amount=D(5), source_key="old", expires_at=now + timedelta(seconds=1),
            now=now - timedelta(seconds=10),
        )  # fmt: skip
        uow.commit()
    # When a charge comes after the expiry
    with db() as uow, pytest.raises(InsufficientCredits):
        ledger.charge(uow.session, user.id, operation="chat", now=now + timedelta(seconds=5))


# --- holds ----------------------------------------------------------------------------------------------------
def test_hold_reserves_and_capture_charges_part_and_puts_the_rest_back(db):
    user_id = funded_user(db, "10", costs=COSTS)
    with db() as uow:
        held = ledger.hold(uow.session, user_id, operation="image_gen")  # 5 credits
        uow.commit()
    # Held credits are not available
    with db() as uow, pytest.raises(InsufficientCredits):
        ledger.charge(uow.session, user_id, operation="chat", quantity=D(6))
    with db() as uow:
        captured = ledger.capture(uow.session, user_id, held.hold_id, amount=D("3.5"))
        uow.commit()
    assert (captured.charged, captured.released, captured.balance) == (D("3.5"), D("1.5"), D("6.5"))
    assert grants(db, user_id)["promo:seed"]["remaining"] == D("6.5")
    # A second capture or a release is refused: the hold is settled
    with db() as uow:
        with pytest.raises(HoldNotActive):
            ledger.capture(uow.session, user_id, held.hold_id, amount=D(1))
        with pytest.raises(HoldNotActive):
            ledger.release(uow.session, user_id, held.hold_id)
    assert_consistent(db)


def test_capture_more_than_held_or_other_users_hold_is_refused(db):
    user_id = funded_user(db, "10", costs=COSTS)
    other_id = funded_user(db, "10")
    with db() as uow:
        held = ledger.hold(uow.session, user_id, amount=D(2))
        uow.commit()
    with db() as uow:
        with pytest.raises(ValidationFailed):
            ledger.capture(uow.session, user_id, held.hold_id, amount=D("2.0001"))
        with pytest.raises(HoldNotFound):
            ledger.capture(uow.session, other_id, held.hold_id, amount=D(1))
        with pytest.raises(HoldNotFound):
            ledger.release(uow.session, other_id, held.hold_id)
    assert_consistent(db)


def test_release_gives_everything_back_and_expiry_releases_stale_holds(db):
    user_id = funded_user(db, "10", costs=COSTS)
    now = utcnow()
    with db() as uow:
        first = ledger.hold(uow.session, user_id, amount=D(4), ttl_seconds=60, now=now)
        ledger.hold(uow.session, user_id, amount=D(3), ttl_seconds=1, now=now)
        released = ledger.release(uow.session, user_id, first.hold_id)
        uow.commit()
    assert (released.released, released.balance) == (D(4), D(10))
    # When the expiry job runs after the second hold's ttl
    with db() as uow:
        assert ledger.expire_holds(uow.session, now=now + timedelta(seconds=5)) == 1
        uow.commit()
    with db() as uow:
        held = uow.session.execute(text("SELECT held FROM credit_accounts WHERE user_id = :u"), {"u": user_id})
        assert held.scalar_one() == D(0)
    assert grants(db, user_id)["promo:seed"]["remaining"] == D(10)
    assert_consistent(db)


def test_capture_of_an_expired_hold_is_refused(db):
    user_id = funded_user(db, "10")
    now = utcnow()
    with db() as uow:
        held = ledger.hold(uow.session, user_id, amount=D(4), ttl_seconds=1, now=now)
        uow.commit()
    with db() as uow, pytest.raises(HoldNotActive):
        ledger.capture(uow.session, user_id, held.hold_id, amount=D(1), now=now + timedelta(seconds=2))


def test_credits_released_into_an_expired_grant_expire_at_once(db):
    # Given a hold that drew from a grant which then expired
    now = utcnow()
    with db() as uow:
        user = make_user(uow.session)
        g = ledger.grant(
            uow.session, user.id, kind="promo", amount=D(10), source_key="promo", expires_at=now + timedelta(hours=1),
            now=now,
        )  # fmt: skip
        held = ledger.hold(uow.session, user.id, amount=D(6), now=now, ttl_seconds=86_400)
        ledger.expire_grant(uow.session, g.grant_id, now=now + timedelta(hours=2))
        uow.commit()
    assert balance(db, user.id) == D(6)  # the 4 unheld credits expired
    # When the hold is captured for 2
    with db() as uow:
        result = ledger.capture(uow.session, user.id, held.hold_id, amount=D(2), now=now + timedelta(minutes=150))
        uow.commit()
    # Then the 4 released credits went back to the expired grant and expired again
    assert result.balance == D(0)
    assert [r["type"] for r in ledger_rows(db, user.id)][-2:] == ["capture", "expiry"]
    assert_consistent(db)


# --- refunds --------------------------------------------------------------------------------------------------
def test_refund_returns_credits_to_their_grants_and_never_exceeds_the_charge(db):
    with db() as uow:
        set_costs(uow.session, COSTS)
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="promo", amount=D(3), source_key="a")
        ledger.grant(uow.session, user.id, kind="allowance", amount=D(10), source_key="b")
        charge = ledger.charge(uow.session, user.id, operation="image_gen")  # 3 from a (oldest), 2 from b
        uow.commit()
    with db() as uow:
        first = ledger.refund(uow.session, charge.transaction_id, amount=D(1), reason="bad answer")
        rest = ledger.refund(uow.session, charge.transaction_id)  # the remaining 4
        with pytest.raises(RefundExceedsCharge):
            ledger.refund(uow.session, charge.transaction_id, amount=D("0.0001"))
        uow.commit()
    assert (first.refunded, rest.refunded, rest.balance) == (D(1), D(4), D(13))
    remaining = {k: g["remaining"] for k, g in grants(db, user.id).items()}
    assert remaining == {"a": D(3), "b": D(10)}
    rows = [r for r in ledger_rows(db, user.id) if r["type"] == "refund"]
    assert all(r["reverses_id"] == charge.transaction_id for r in rows)
    assert_consistent(db)


def test_refund_refuses_non_charges_and_foreign_transactions(db):
    user_id = funded_user(db, "5", costs=COSTS)
    other_id = funded_user(db, "5")
    with db() as uow:
        grant_tx = ledger_rows(db, user_id)[0]["id"]
        charge = ledger.charge(uow.session, user_id, operation="chat")
        uow.commit()
    with db() as uow:
        with pytest.raises(NotRefundable):
            ledger.refund(uow.session, grant_tx)
        with pytest.raises(TransactionNotFound):
            ledger.refund(uow.session, charge.transaction_id, user_id=other_id)
        with pytest.raises(ValidationFailed):
            ledger.refund(uow.session, charge.transaction_id, amount=D(0))


def test_refund_into_an_expired_grant_expires_at_once(db):
    now = utcnow()
    with db() as uow:
        set_costs(uow.session, COSTS)
        user = make_user(uow.session)
        g = ledger.grant(
            uow.session, user.id, kind="promo", amount=D(5), source_key="p", expires_at=now + timedelta(hours=1),
            now=now,
        )  # fmt: skip
        charge = ledger.charge(uow.session, user.id, operation="chat", quantity=D(2), now=now)
        ledger.expire_grant(uow.session, g.grant_id, now=now + timedelta(hours=2))
        refunded = ledger.refund(uow.session, charge.transaction_id, now=now + timedelta(hours=3))
        uow.commit()
    assert (refunded.refunded, refunded.expired, refunded.balance) == (D(2), D(2), D(0))
    assert [r["type"] for r in ledger_rows(db, user.id)] == ["promo", "usage", "expiry", "refund", "expiry"]
    assert_consistent(db)


# --- adjustments, floor, clawback, allowance, expiry ------------------------------------------------------------
def test_adjust_adds_or_draws_and_is_audit_logged(db):
    user_id = funded_user(db, "5")
    with db() as uow:
        actor = make_user(uow.session, role="ADMIN")
        plus = ledger.adjust(uow.session, user_id, amount=D(3), reason="goodwill", actor_id=actor.id)
        minus = ledger.adjust(uow.session, user_id, amount=D(-7), reason="abuse", actor_id=actor.id)
        with pytest.raises(InsufficientCredits):
            ledger.adjust(uow.session, user_id, amount=D(-2), reason="too much", actor_id=actor.id)
        with pytest.raises(ValidationFailed):
            ledger.adjust(uow.session, user_id, amount=D(0), reason="nothing", actor_id=actor.id)
        uow.commit()
        actions = uow.session.execute(text("SELECT action, actor_id FROM audit_logs")).all()
    assert (plus.balance, minus.balance) == (D(8), D(1)) and plus.grant_id is not None
    assert [a for a, _ in actions] == ["credits.adjust", "credits.adjust"]
    assert_consistent(db)


def test_credit_line_lets_the_balance_go_to_the_floor_and_the_next_grant_repays_it(db):
    user_id = funded_user(db, "2", costs=COSTS)
    with db() as uow:
        ledger.set_floor(uow.session, user_id, D(-5), actor_id=None, reason="trusted customer")
        charged = ledger.charge(uow.session, user_id, operation="image_gen", quantity=D(1))  # 2 + 3 borrowed
        with pytest.raises(InsufficientCredits):
            ledger.charge(uow.session, user_id, operation="chat", quantity=D(3))
        uow.commit()
    assert charged.balance == D(-3)
    with db() as uow:
        after = ledger.grant(uow.session, user_id, kind="purchase", amount=D(10), source_key="order-1")
        uow.commit()
    assert after.balance == D(7)
    assert grants(db, user_id)["order-1"]["remaining"] == D(7)
    assert_consistent(db)
    # The database refuses a balance below the floor however it is attempted
    with db() as uow, pytest.raises(DBAPIError):
        uow.session.execute(text("UPDATE credit_accounts SET balance = -100 WHERE user_id = :u"), {"u": user_id})


def test_clawback_takes_back_what_is_left_never_below_zero(db):
    with db() as uow:
        set_costs(uow.session, COSTS, allow_toggle=False)
        user = make_user(uow.session)
        ledger.grant(uow.session, user.id, kind="purchase", amount=D(10), source_key="order-9")
        ledger.charge(uow.session, user.id, operation="chat", quantity=D(7))
        clawed = ledger.clawback(uow.session, user.id, source_key="order-9", amount=D(10), idempotency_key="re_1")
        again = ledger.clawback(uow.session, user.id, source_key="order-9", amount=D(10), idempotency_key="re_1")
        uow.commit()
    assert (clawed.clawed_back, clawed.balance) == (D(3), D(0))
    assert again.replayed and again.clawed_back == D(3)
    assert_consistent(db)


def test_issue_allowance_is_idempotent_per_period_and_applies_the_rollover_rule(db):
    with db() as uow:
        user = make_user(uow.session)
        one = ledger.issue_allowance(uow.session, user.id, "2026-11", amount=D(50), rollover="none")
        same = ledger.issue_allowance(uow.session, user.id, "2026-11", amount=D(50), rollover="none")
        assert same is not None and one is not None and same.grant_id == one.grant_id
        ledger.charge(uow.session, user.id, operation="x", amount=D(20))
        # none: the 30 left expire when the next period's allowance arrives
        ledger.issue_allowance(uow.session, user.id, "2026-12", amount=D(50), rollover="none")
        assert balance_in(uow, user.id) == D(50)
        # capped at 20: 30 of the 50 expire
        ledger.issue_allowance(uow.session, user.id, "2027-01", amount=D(50), rollover="capped", rollover_cap=D(20))
        assert balance_in(uow, user.id) == D(70)
        # full: everything stays
        ledger.issue_allowance(uow.session, user.id, "2027-02", amount=D(50), rollover="full")
        assert balance_in(uow, user.id) == D(120)
        uow.commit()
    assert_consistent(db)


def test_issue_allowance_takes_the_plan_of_the_users_tier(db):
    with db() as uow:
        uow.session.execute(
            text(
                "INSERT INTO plans (id, tier, name, monthly_credits, rollover) "
                "VALUES (gen_random_uuid(), 'PRO', 'Pro', 1000, 'full')"
            )
        )
        user = make_user(uow.session, tier="PRO")
        result = ledger.issue_allowance(uow.session, user.id, "2026-11")
        uow.commit()
    assert result is not None and result.amount == D(1000)


def balance_in(uow, user_id):
    return uow.session.execute(
        text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": user_id}
    ).scalar_one()


def test_expire_grant_removes_what_is_left_once(db):
    now = utcnow()
    with db() as uow:
        user = make_user(uow.session)
        g = ledger.grant(
            uow.session, user.id, kind="promo", amount=D(5), source_key="p", expires_at=now + timedelta(days=1), now=now
        )
        early = ledger.expire_grant(uow.session, g.grant_id, now=now)
        assert early.expired == D(0)  # not due yet
        assert ledger.expire_due_grants(uow.session, now=now + timedelta(days=2)) == 1
        again = ledger.expire_grant(uow.session, g.grant_id, now=now + timedelta(days=3))
        uow.commit()
    assert again.expired == D(0) and again.balance == D(0)
    assert [r["type"] for r in ledger_rows(db, user.id)] == ["promo", "expiry"]
    assert_consistent(db)


# --- the database's own guards ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE credit_transactions SET amount = 1000",
        "DELETE FROM credit_transactions",
        "TRUNCATE credit_transactions CASCADE",
    ],
)
def test_the_ledger_refuses_update_delete_and_truncate(db, statement):
    user_id = funded_user(db, "5")
    with db() as uow, pytest.raises(DBAPIError, match="append-only"):
        uow.session.execute(text(statement))
    assert len(ledger_rows(db, user_id)) == 1


def test_grant_remaining_cannot_leave_its_bounds(db):
    user_id = funded_user(db, "5")
    with db() as uow, pytest.raises(DBAPIError):
        uow.session.execute(text("UPDATE credit_grants SET remaining = 6 WHERE user_id = :u"), {"u": user_id})


def test_reconcile_reports_a_tampered_account(db):
    user_id = funded_user(db, "5")
    assert_consistent(db)
    # Given someone bypassed the ledger
    with db() as uow:
        uow.session.execute(text("UPDATE credit_accounts SET balance = 50 WHERE user_id = :u"), {"u": user_id})
        uow.commit()
    # When reconciling
    with db() as uow:
        report = ledger.reconcile(uow.session)
    # Then the account is reported with what disagrees
    assert report.users_checked == 1
    assert [m.user_id for m in report.mismatches] == [user_id]
    assert "balance != sum(ledger)" in report.mismatches[0].problems


def test_charge_committed_only_by_the_callers_commit_and_refusals_keep_nothing(db):
    """Given a user with 3 credits
    When a charge runs in a unit of work that commits, another in one that does not, and refusals follow
    Then only the committed charge is kept (a charge never commits on its own), a repeat of its key replays it,
    and the refusals store nothing."""
    user_id = funded_user(db, "3", costs=COSTS)
    with db() as uow:
        kept = ledger.charge(uow.session, user_id, operation="chat", idempotency_key="one")
        uow.commit()
    with db() as uow:
        dropped = ledger.charge(uow.session, user_id, operation="chat", idempotency_key="two")
        assert dropped.balance == D(1)
    assert kept.balance == D(2) and balance(db, user_id) == D(2)
    with db() as uow:
        again = ledger.charge(uow.session, user_id, operation="chat", idempotency_key="one")
        assert again.replayed and again.transaction_id == kept.transaction_id
        with pytest.raises(InsufficientCredits):
            ledger.charge(uow.session, user_id, operation="image_gen")
        uow.commit()
    assert [r["type"] for r in ledger_rows(db, user_id)] == ["promo", "usage"]
    assert balance(db, user_id) == D(2)
    assert not hasattr(ledger, "charge_committed")  # one way to run a charge: in the caller's transaction


def test_refund_of_a_credit_line_charge_after_the_debt_was_repaid_comes_back_as_a_grant(db):
    # Given a charge that borrowed 3 on the credit line, then a purchase that repaid the debt
    user_id = funded_user(db, "2", costs=COSTS)
    with db() as uow:
        ledger.set_floor(uow.session, user_id, D(-5), actor_id=None, reason="line")
        charged = ledger.charge(uow.session, user_id, operation="image_gen")  # 2 from the grant, 3 borrowed
        ledger.grant(uow.session, user_id, kind="purchase", amount=D(10), source_key="order")  # repays 3
        # When the charge is refunded in full
        refunded = ledger.refund(uow.session, charged.transaction_id)
        uow.commit()
    # Then the 5 credits come back (3 as a refund grant, 2 to the original grant) and the books balance
    assert (refunded.refunded, refunded.balance) == (D(5), D(12))
    kinds = {g["kind"]: g["remaining"] for g in grants(db, user_id).values()}
    assert kinds == {"promo": D(2), "purchase": D(7), "refund": D(3)}
    assert_consistent(db)


def test_due_grants_and_holds_are_expired_by_the_jobs_helpers(db):
    now = utcnow()
    with db() as uow:
        users = [make_user(uow.session) for _ in range(3)]
        for user in users:
            ledger.grant(
                uow.session, user.id, kind="promo", amount=D(2), source_key="p", expires_at=now + timedelta(minutes=1),
                now=now,
            )  # fmt: skip
            ledger.hold(uow.session, user.id, amount=D(1), ttl_seconds=30, now=now)
        uow.commit()
    with db() as uow:
        assert ledger.expire_due_grants(uow.session, now=now + timedelta(minutes=2)) == 3
        # the held credits come back to expired grants: they expire at once
        assert ledger.expire_holds(uow.session, now=now + timedelta(minutes=2)) == 3
        uow.commit()
    for user in users:
        assert balance(db, user.id) == D(0)
    assert_consistent(db)
