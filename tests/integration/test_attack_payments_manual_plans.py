"""Attacks on manual plans: two admins assigning at the same moment, and a manual plan on a locked account."""

# ruff: noqa: F403, F405
from __future__ import annotations

import threading
from decimal import Decimal

from sqlalchemy import text

from tests.integration.test_manual_plans import admin, manual_subs, put_plan, user_row
from tests.payments_support import *
from tests.support import ApiResponse


def test_two_identical_assignments_at_once_grant_one_allowance(db, catalogue, buyer):
    # Given two admins
    bosses = [admin(db), admin(db)]
    answers: list[ApiResponse] = []

    def assign(boss: object) -> None:
        answers.append(put_plan(buyer, boss, plan_id=str(catalogue.pro_id), interval="month"))  # type: ignore[arg-type]

    # When both give the user Pro monthly at the same moment
    threads = [threading.Thread(target=assign, args=(boss,)) for boss in bosses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then both answer 200, one made the plan and the other found it: one subscription, one allowance
    assert sorted(a.status for a in answers) == [200, 200], [a.body for a in answers]
    assert sorted(a.json["changed"] for a in answers) == [False, True]
    assert len(manual_subs(db, buyer)) == 1
    assert balance(db, buyer) == Decimal("1000") and len(grants(db, buyer, "allowance")) == 1
    assert ledger_is_consistent(db, buyer)


def test_two_different_assignments_at_once_leave_one_live_plan(db, catalogue, buyer):
    # When two admins give the user Pro and Business at the same moment
    answers: list[ApiResponse] = []

    def assign(plan_id: object) -> None:
        answers.append(put_plan(buyer, admin(db), plan_id=str(plan_id), interval="month"))

    threads = [threading.Thread(target=assign, args=(p,)) for p in (catalogue.pro_id, catalogue.business_id)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then both answer 200 and exactly one manual plan is live: the one applied last
    assert sorted(a.status for a in answers) == [200, 200]
    live = [s for s in manual_subs(db, buyer) if s["status"] == "active"]
    assert len(live) == 1 and user_row(db, buyer)["tier"] == live[0]["tier"]
    assert ledger_is_consistent(db, buyer)


def test_a_user_cannot_give_themselves_a_manual_plan_to_unlock_their_account(db, catalogue, buyer):
    # Given a locked account
    with db() as uow:
        uow.session.execute(text("UPDATE users SET status = 'LOCKED', trial_used = true WHERE id = :u"), {"u": buyer})
        uow.commit()
    # When the user (not an admin) assigns a plan to itself
    answer = put_plan(buyer, buyer, role="USER", plan_id=str(catalogue.pro_id), interval="month")
    # Then it is refused, nothing is made and the account stays locked
    assert answer.status == 403
    assert manual_subs(db, buyer) == [] and user_row(db, buyer)["status"] == "LOCKED" and balance(db, buyer) == 0
