# ruff: noqa: F811  (the auth_env fixture imported from auth_helpers is redefined as a parameter)
"""The support desk and user management services hand out views, never ORM rows: every value they return, down
to the last nested field (the ticket's messages, the customer's context, a user's plan, subscription, orders and
purchases), is a frozen dataclass or a plain value made inside the unit of work, so nothing a handler holds can
reach back into a closed session. The session-level helpers of user_admin (`find_user`, `lock_for_access_change`,
...) work inside other services' transactions and are not answers."""

from __future__ import annotations

import dataclasses
import inspect
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.integration.auth_helpers import AuthEnv, auth_env  # noqa: F401
from tests.integration.test_commerce_catalogue_views import assert_plain
from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.models.commerce import Order
from tollgate.models.credits import Plan
from tollgate.models.payments import Purchase, Subscription
from tollgate.services import gdpr, support_desk, user_admin
from tollgate.services.authz import Actor

Db = Callable[[], UnitOfWork]
# Every public function of the two services that opens a unit of work: each is called below and its answer checked.
ANSWERING = {
    support_desk: {
        "open_ticket", "list_own_tickets", "own_ticket", "customer_reply", "list_tickets", "staff_ticket",
        "update_ticket", "staff_reply", "own_ticket_messages", "staff_ticket_messages",
    },
    user_admin: {"list_users", "user_detail", "update_user"},
}  # fmt: skip
NOTE = "internal: refund approved by finance"


def _customer(db: Db) -> tuple[uuid.UUID, str]:
    """A customer on a named plan with credits, an order, a purchase and a subscription."""
    with db() as uow:
        s = uow.session
        s.add(Plan(tier="VIEWS_PRO", name="Views Pro"))
        user = make_user(s, name="Cus Tomer", tier="VIEWS_PRO")
        ledger.grant(s, user.id, kind="promo", amount=Decimal("12.5"), source_key="promo:views")
        s.add(
            Order(
                user_id=user.id, status="COMPLETED", payment_status="SUCCEEDED", currency="usd",
                subtotal=Decimal("49.00"), tax_amount=Decimal(0), discount_amount=Decimal(0),
                total_amount=Decimal("49.00"),
            )
        )  # fmt: skip
        s.add(
            Purchase(
                provider="stripe", provider_order_id=f"cs_views_{uuid.uuid4().hex}", user_id=user.id,
                credits=Decimal("100"), amount=Decimal("5.00"), currency="usd", status="completed",
                package_name="Pack",
            )
        )  # fmt: skip
        s.add(
            Subscription(
                provider="stripe", provider_subscription_id=f"sub_views_{uuid.uuid4().hex}", user_id=user.id,
                tier="VIEWS_PRO", interval="month", status="active",
            )
        )  # fmt: skip
        uow.commit()
        return user.id, user.email


def _staff(db: Db, role: str) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        return user.id


def test_every_answering_function_is_covered_here() -> None:
    # Given the public functions of each service that take a unit of work
    for module, covered in ANSWERING.items():
        found = {
            name
            for name, fn in inspect.getmembers(module, inspect.isfunction)
            if fn.__module__ == module.__name__
            and not name.startswith("_")
            and next(iter(inspect.signature(fn).parameters), None) == "uow"
        }
        # Then each is one the test below calls: a new one must be added there (and answer a view)
        assert found == covered, f"{module.__name__}: {sorted(found ^ covered)}"


def test_every_support_desk_and_user_admin_answer_is_plain_values(db: Db, auth_env: AuthEnv) -> None:
    # Given a customer with history, a support agent and two admins
    auth_env.set(MAIL_MIN_INTERVAL_SECONDS=0)
    customer, email = _customer(db)
    agent, admin, other_admin = _staff(db, "SUPPORT"), _staff(db, "ADMIN"), _staff(db, "ADMIN")
    support, staff = Actor.user(agent, "SUPPORT"), Actor.user(admin, "ADMIN")
    answers: dict[str, Any] = {}

    # When every desk function runs: the customer opens, lists, reads and replies ...
    opened = support_desk.open_ticket(db(), customer, subject="Charged twice", description="Twice.", priority="HIGH")
    ticket_id = opened.ticket.id
    answers["open_ticket"] = opened
    answers["customer_reply"] = support_desk.customer_reply(db(), customer, ticket_id, content="Any news?")
    # ... staff list, read, assign, reply and note ...
    answers["list_tickets"] = support_desk.list_tickets(db(), support, status="OPEN", cursor=None, limit=10)
    answers["update_ticket"] = support_desk.update_ticket(
        db(), support, ticket_id, {"assignee_id": agent, "status": "IN_PROGRESS"}
    )
    answers["staff_reply"] = support_desk.staff_reply(db(), support, ticket_id, content="Refunded.")
    answers["staff_reply (note)"] = support_desk.staff_reply(db(), support, ticket_id, content=NOTE, internal=True)
    answers["staff_ticket"] = support_desk.staff_ticket(db(), support, ticket_id)
    answers["staff_ticket_messages"] = support_desk.staff_ticket_messages(
        db(), support, ticket_id, cursor=None, limit=10
    )
    answers["list_own_tickets"] = support_desk.list_own_tickets(db(), customer, status=None, cursor=None, limit=10)
    answers["own_ticket"] = support_desk.own_ticket(db(), customer, ticket_id)
    answers["own_ticket_messages"] = support_desk.own_ticket_messages(db(), customer, ticket_id, cursor=None, limit=10)
    # ... and user management: search, a user's page, a change and a change that changes nothing
    answers["list_users"] = user_admin.list_users(
        db(), support, user_admin.UserFilters(q="cus tomer"), cursor=None, limit=10
    )
    answers["user_detail"] = user_admin.user_detail(db(), support, customer)
    answers["update_user"] = user_admin.update_user(db(), staff, other_admin, role="SUPPORT")
    answers["update_user (no change)"] = user_admin.update_user(db(), staff, other_admin, role="SUPPORT")

    # Then every answering function was called, and no answer holds an ORM instance, at any depth
    assert {name.split(" ")[0] for name in answers} == set().union(*ANSWERING.values())
    for name, answer in answers.items():
        assert_plain(answer, name)
    # And the views carry what was read: the customer's thread has no note, the staff's has it and the context
    own = answers["own_ticket"]
    assert [m.content for m in own.messages] == ["Any news?", "Refunded."]
    assert own.ticket.status == "IN_PROGRESS" and own.ticket.assignee_id == agent
    desk = answers["staff_ticket"]
    assert [(m.content, m.is_internal) for m in desk.messages][-1] == (NOTE, True)
    assert [m.content for m in answers["own_ticket_messages"].items] == ["Refunded.", "Any news?"]
    assert [(m.content, m.is_internal) for m in answers["staff_ticket_messages"].items][:2] == [
        (NOTE, True),
        ("Refunded.", False),
    ]
    context = desk.context
    assert (context.customer.id, context.customer.email, context.balance) == (customer, email, Decimal("12.5"))
    assert [o.total_amount for o in context.orders] == [Decimal("49.00")]
    assert [p.package_name for p in context.purchases] == ["Pack"]
    assert [t.amount for t in context.transactions] == [Decimal("12.5")]
    assert [t.id for t in answers["list_tickets"].items] == [ticket_id]
    # And the user's page: profile, balance, the plan's name, the subscription, orders, purchases, open tickets
    detail = answers["user_detail"]
    assert (detail.profile.name, detail.profile.erased, detail.plan) == (
        "Cus Tomer", False, user_admin.PlanView(tier="VIEWS_PRO", name="Views Pro"),
    )  # fmt: skip
    assert detail.account is not None and detail.account.balance == Decimal("12.5")
    assert detail.subscription is not None and detail.subscription.status == "active"
    assert (len(detail.orders), len(detail.purchases), detail.open_tickets) == (1, 1, 1)
    assert [u.id for u in answers["list_users"].items] == [customer]
    assert answers["update_user"].role == answers["update_user (no change)"].role == "SUPPORT"


def test_a_view_is_a_frozen_snapshot_that_carries_no_secret(db: Db, auth_env: AuthEnv) -> None:
    # Given a customer's page read by an admin, and a ticket the customer opened
    customer, _ = _customer(db)
    admin = _staff(db, "ADMIN")
    staff = Actor.user(admin, "ADMIN")
    before = user_admin.user_detail(db(), staff, customer)
    thread = support_desk.open_ticket(db(), customer, subject="Help", description="Please.")
    # When the user is suspended and the ticket closed afterwards
    user_admin.update_user(db(), staff, customer, status="SUSPENDED")
    support_desk.update_ticket(db(), staff, thread.ticket.id, {"status": "CLOSED"})
    # Then the views read before still say what was true then: they share nothing with the rows
    assert before.profile.status == "ACTIVE" and thread.ticket.status == "OPEN"
    assert user_admin.user_detail(db(), staff, customer).profile.status == "SUSPENDED"
    # And no view can be changed by whoever holds it
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.profile.status = "ACTIVE"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        thread.ticket.status = "OPEN"  # type: ignore[misc]
    # And no view of a person has a field for a secret the database keeps (hashes, TOTP secrets, tokens)
    people = (user_admin.UserView, user_admin.ProfileView, support_desk.CustomerView)
    for view in people:
        names = {field.name for field in dataclasses.fields(view)}
        assert not names & gdpr.SECRET_COLUMNS, f"{view.__name__}: {sorted(names & gdpr.SECRET_COLUMNS)}"
