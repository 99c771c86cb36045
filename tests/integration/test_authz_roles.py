"""Who may do what, route by route: every privileged route called through the gateway as USER, SUPPORT and ADMIN
answers 403 or 2xx exactly as the README's "Who may do what" table says, and that table is this one. The CLI's
operator is admitted only where a service names it, and its audit rows say who ran the command."""

# ruff: noqa: F401, F811
from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

import tests.commerce_catalogue_standin  # registers the stand-in's catalogue routes
from tests.commerce_refunds_standin import completed_order
from tests.conftest import REPO_ROOT
from tests.credits_support import funded_user
from tests.payments_support import Catalogue, catalogue, payments_env, send_stripe, stripe_api
from tests.support import api_call, make_user
from tollgate import ledger
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.errors import Forbidden
from tollgate.jobs.outbox_relay import OutboxRelay
from tollgate.models.commerce import Discount, ProductCategory
from tollgate.models.mail_events import EmailSuppression
from tollgate.models.payments import Price, Product
from tollgate.outbound_webhooks import SendResult
from tollgate.outbox import emit
from tollgate.rag.embeddings import get_embedding_provider
from tollgate.services import credits_admin, rag_ingest, webhooks
from tollgate.services.authz import Actor
from tollgate_local.cli import build_parser
from tollgate_local.webhooks_cli import stripe_checkout_session, stripe_event

ROLES = ("USER", "SUPPORT", "ADMIN")
# A sample command line of each operator command (the CLI's parser must accept it).
OPERATOR_ARGV = {"webhooks replay": ["evt_x"], "rag ingest": ["."], "rag reembed": []}
COSTS = {"chat": "1"}
STAFF = frozenset({"SUPPORT", "ADMIN"})
ADMINS = frozenset({"ADMIN"})
EVERYONE = frozenset(ROLES)


@dataclass(frozen=True)
class Group:
    """One row of the README table: who may call its routes, and the CLI commands the operator may run."""

    name: str
    allowed: frozenset[str]
    operator: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    group: str
    method: str
    path: str  # with {placeholders} filled from the world the test builds
    body: dict[str, Any] | None = None
    query: str = ""  # what a route needs past validation, e.g. the metric of /admin/analytics


GROUPS = [
    Group("Own account and usage", EVERYONE),
    Group("Read a customer's credit account", STAFF),
    Group("Move a customer's credits", ADMINS),
    Group("Credit policy", ADMINS),
    Group("Catalogue", ADMINS),
    Group("Ledger reconciliation", ADMINS),
    Group("Manual plans", ADMINS),
    Group("Provider webhook replay", ADMINS, ("webhooks replay",)),
    Group("Knowledge base", ADMINS, ("rag ingest", "rag reembed")),
    Group("Outbound webhooks and outbox", ADMINS),
    Group("Reports", ADMINS),
    Group("Audit trail and features", ADMINS),
    Group("Support desk", STAFF),
    Group("Goodwill credits", STAFF),
    Group("System config", ADMINS),
    Group("Read users", STAFF),
    Group("Manage users and GDPR", ADMINS),
    Group("Email suppressions", ADMINS),
    Group("Order refunds", ADMINS),
    Group("All orders", STAFF),
    Group("Discounts", ADMINS),
    Group("Products and categories", ADMINS),
    Group("Public catalogue", EVERYONE),
]

ENDPOINT = "/admin/webhook-endpoints/{endpoint_id}"
# In call order: an admin's call never removes what a later row needs (the plan is assigned before it is ended,
# the endpoint deleted last).
ROUTES = [
    Route("Own account and usage", "GET", "/credits/balance"),
    Route("Own account and usage", "GET", "/rag/conversations"),
    Route("Read a customer's credit account", "GET", "/admin/users/{user_id}/credits"),
    Route("Move a customer's credits", "POST", "/admin/users/{user_id}/credits/usage", {"operation": "chat"}),
    Route(
        "Move a customer's credits",
        "POST",
        "/admin/users/{user_id}/credits/adjustments",
        {"amount": "1", "reason": "goodwill"},
    ),
    Route(
        "Move a customer's credits",
        "POST",
        "/admin/credits/refunds",
        {"transaction_id": "{transaction_id}", "amount": "0.5", "reason": "outage"},
    ),
    Route("Move a customer's credits", "PUT", "/admin/users/{user_id}/credits/floor", {"floor": "-5", "reason": "vip"}),
    Route("Credit policy", "GET", "/admin/feature-costs"),
    Route("Credit policy", "PUT", "/admin/feature-costs", {"chat": "2"}),
    Route("Credit policy", "GET", "/admin/credits/settings"),
    Route("Credit policy", "PUT", "/admin/credits/settings", {"allow_bonus_auto_use_toggle": True}),
    Route("Catalogue", "GET", "/admin/plans"),
    Route("Catalogue", "POST", "/admin/plans", {"tier": "ROLES", "name": "Roles"}),
    Route("Catalogue", "PATCH", "/admin/plans/{plan_id}", {"badge": "Popular"}),
    Route("Catalogue", "GET", "/admin/credit-packs"),
    Route("Catalogue", "POST", "/admin/credit-packs", {"name": "Roles pack", "credits": "10", "price": "1.00"}),
    Route("Catalogue", "PATCH", "/admin/credit-packs/{pack_id}", {"price": "4.50"}),
    Route("Ledger reconciliation", "POST", "/admin/credits/reconcile"),
    Route("Manual plans", "PUT", "/admin/users/{user_id}/plan", {"plan_id": "{plan_id}", "interval": "month"}),
    Route("Manual plans", "DELETE", "/admin/users/{user_id}/plan"),
    Route("Provider webhook replay", "POST", "/admin/webhooks/{event_id}/replay"),
    Route(
        "Knowledge base",
        "POST",
        "/admin/rag/documents",
        {"documents": [{"question": "Who may ingest?", "answer": "Admins.", "category": "roles"}]},
    ),
    Route("Knowledge base", "GET", "/admin/rag/chunks"),
    Route("Knowledge base", "DELETE", "/admin/rag/chunks/{chunk_id}"),
    Route(
        "Outbound webhooks and outbox",
        "POST",
        "/admin/webhook-endpoints",
        {"url": "http://localhost:9/new", "events": ["*"]},
    ),
    Route("Outbound webhooks and outbox", "GET", "/admin/webhook-endpoints"),
    Route("Outbound webhooks and outbox", "GET", ENDPOINT + "/deliveries"),
    Route("Outbound webhooks and outbox", "POST", ENDPOINT + "/deliveries/{delivery_id}/replay"),
    Route("Outbound webhooks and outbox", "GET", "/admin/outbox/deliveries"),
    Route("Outbound webhooks and outbox", "DELETE", ENDPOINT),
    Route("Reports", "GET", "/admin/analytics", query="metric=mrr"),
    Route("Reports", "GET", "/admin/email-logs"),
    Route("Reports", "GET", "/admin/subscription-events"),
    Route("Reports", "GET", "/admin/refunds"),
    Route("Reports", "GET", "/admin/reports/low-balance"),
    Route("Audit trail and features", "GET", "/admin/audit-logs"),
    Route("Audit trail and features", "POST", "/admin/features", {"workspace_id": "roles", "name": "Roles"}),
    Route("Audit trail and features", "PATCH", "/admin/features/{feature_id}", {"tags": ["roles"]}),
    Route("Audit trail and features", "DELETE", "/admin/features/{feature_id}"),
    Route("Support desk", "GET", "/admin/support/tickets"),
    Route("Support desk", "GET", "/admin/support/tickets/{ticket_id}"),
    Route("Support desk", "GET", "/admin/support/tickets/{ticket_id}/messages"),
    Route("Support desk", "PATCH", "/admin/support/tickets/{ticket_id}", {"priority": "HIGH"}),
    Route("Support desk", "POST", "/admin/support/tickets/{ticket_id}/messages", {"content": "On it"}),
    Route("Goodwill credits", "POST", "/support/users/{user_id}/goodwill", {"amount": "1", "reason": "outage"}),
    Route("System config", "GET", "/admin/system-config"),
    Route("System config", "PUT", "/admin/system-config/{key}", {"value": "50", "type": "number"}),
    Route("Read users", "GET", "/admin/users"),
    Route("Read users", "GET", "/admin/users/{user_id}"),
    Route("Order refunds", "POST", "/admin/orders/{order_id}/refunds", {"amount": "1", "reason": "other"}),
    Route("All orders", "GET", "/admin/orders"),
    Route("Discounts", "GET", "/admin/discounts"),
    Route(
        "Discounts",
        "POST",
        "/admin/discounts",
        {"code": "ROLES10", "name": "Roles", "type": "percentage", "value": "10"},
    ),
    Route("Discounts", "PATCH", "/admin/discounts/{discount_id}", {"active": False}),
    Route("Public catalogue", "GET", "/products"),
    Route("Public catalogue", "GET", "/product-categories"),
    Route(
        "Products and categories",
        "POST",
        "/admin/products",
        {"name": "Roles new", "slug": "roles-new", "type": "SERVICE", "base_price": "1"},
    ),
    Route("Products and categories", "PATCH", "/admin/products/{product_id}", {"featured": True}),
    Route("Products and categories", "POST", "/admin/products/{product_id}/publish"),  # the Stripe stand-in
    Route("Public catalogue", "GET", "/products/{slug}"),  # published just above
    Route(
        "Products and categories",
        "POST",
        "/admin/products/{product_id}/prices",
        {"unit_amount": "2", "type": "one_time"},
    ),
    Route("Products and categories", "PATCH", "/admin/prices/{price_id}", {"nickname": "Roles"}),
    Route("Products and categories", "POST", "/admin/products/{product_id}/archive"),
    Route("Products and categories", "POST", "/admin/product-categories", {"name": "Roles", "slug": "roles-cat"}),
    Route("Products and categories", "PATCH", "/admin/product-categories/{category_id}", {"sort_order": 1}),
    Route("Email suppressions", "GET", "/admin/email-suppressions"),
    Route("Email suppressions", "DELETE", "/admin/email-suppressions/{email}"),
    # Keep these last: the erase anonymises the world's customer for good.
    Route("Manage users and GDPR", "PATCH", "/admin/users/{user_id}", {"role": "SUPPORT"}),
    Route("Manage users and GDPR", "POST", "/admin/users/{user_id}/export"),
    Route("Manage users and GDPR", "POST", "/admin/users/{user_id}/erase"),
]
ALLOWED = {g.name: g.allowed for g in GROUPS}


class NullSink:
    def put(self, messages: Any) -> list[str | None]:
        return [None] * len(messages)


def _fill(value: Any, world: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**world)
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, world) for v in value]
    return value


def stored_pack_event(customer: uuid.UUID, catalogue: Catalogue) -> dict[str, Any]:
    """A Stripe pack purchase by `customer`, delivered and stored."""
    session = stripe_checkout_session(
        user_id=str(customer), item_id=str(catalogue.pack_id), amount_minor=500, currency="usd"
    )
    event = stripe_event("checkout.session.completed", session)
    assert send_stripe(event).status == 200
    return event


def _world(db: Callable[[], UnitOfWork], catalogue: Catalogue) -> dict[str, str]:
    """A customer with a charge, the catalogue, a stored Stripe event, a chunk, an endpoint with a delivery."""
    customer = funded_user(db, "20", costs=COSTS)
    with db() as uow:
        charge = ledger.charge(uow.session, customer, operation="chat", idempotency_key="roles-charge")
        uow.commit()
    event = stored_pack_event(customer, catalogue)
    report_chunks = rag_ingest.ingest(
        db(), Actor.operator("tests"),
        rag_ingest.qa_drafts([rag_ingest.QaDocument("What is a role?", "What you may do.", "roles")]),
        get_embedding_provider(),
    )  # fmt: skip
    assert report_chunks.created == 1
    with db() as uow:
        chunk_id = uow.session.execute(text("SELECT id FROM faq_chunks")).scalar_one()
        staff = make_user(uow.session, role="ADMIN")
        uow.commit()
    created = api_call(
        "POST", "/admin/webhook-endpoints", body={"url": "http://localhost:9/h", "events": ["*"]}, as_user=staff
    )
    assert created.status == 201, created.json
    feature = api_call("POST", "/admin/features", body={"workspace_id": "roles", "name": "World"}, as_user=staff)
    assert feature.status == 201, feature.json
    ticket = api_call("POST", "/support/tickets", body={"subject": "Roles", "description": "?"}, as_user=customer)
    assert ticket.status == 201, ticket.json
    with db() as uow:
        emit(uow.session, "credits.granted", user_id=None, data={})
        uow.commit()
    failing = lambda *a: SendResult(False, 500, "", "HTTP 500")  # noqa: E731 - the endpoint is down
    settings = get_settings().model_copy(update={"outbox_delivery": "local"})
    OutboxRelay(settings, sink=NullSink(), sender=failing).run_once()
    with db() as uow:
        delivery_id = uow.session.execute(
            text("SELECT id FROM outbox_deliveries WHERE endpoint_id = :e ORDER BY id LIMIT 1"),
            {"e": created.json["id"]},
        ).scalar_one()
    return {
        "user_id": str(customer), "transaction_id": str(charge.transaction_id), "plan_id": str(catalogue.pro_id),
        "pack_id": str(catalogue.pack_id), "event_id": event["id"], "chunk_id": str(chunk_id),
        "endpoint_id": created.json["id"], "delivery_id": str(delivery_id), "feature_id": feature.json["id"],
        "ticket_id": ticket.json["id"], "key": "support_goodwill_cap",
    }  # fmt: skip


def test_every_privileged_route_answers_each_role_as_the_table_says(db, payments_env, catalogue, stripe_api):
    # Given a world where every route has something to act on, and a signed-in user of each role
    world = _world(db, catalogue)
    world["order_id"] = str(completed_order(db, uuid.UUID(world["user_id"]), stripe=stripe_api).order_id)
    with db() as uow:  # a discount for PATCH /admin/discounts/{discount_id}
        discount = Discount(code="ROLESPATCH", name="Roles", type="PERCENTAGE", value=Decimal(5))
        uow.session.add(discount)
        uow.commit()
        world["discount_id"] = str(discount.id)
    with db() as uow:  # a draft product with a price, and a category, for the catalogue's admin routes
        product = Product(name="Roles", slug="roles-product", type="ONE_TIME", base_price=Decimal(1))
        category = ProductCategory(name="Roles", slug="roles-category")
        uow.session.add_all([product, category])
        uow.session.flush()
        price = Price(product_id=product.id, unit_amount=Decimal(1), currency="usd", type="one_time")
        uow.session.add(price)
        uow.commit()
        world.update(
            product_id=str(product.id), price_id=str(price.id), category_id=str(category.id), slug="roles-product"
        )
    with db() as uow:  # a suppressed address for DELETE /admin/email-suppressions/{email}
        uow.session.add(EmailSuppression(email="roles-bounced@example.com", reason="bounce"))
        uow.commit()
        world["email"] = "roles-bounced@example.com"
    with db() as uow:
        callers = {role: make_user(uow.session, role=role).id for role in ROLES}
        uow.commit()
    answered: dict[tuple[str, str, str], int] = {}
    expected: dict[tuple[str, str, str], str] = {}
    for route in ROUTES:
        for role in ROLES:  # USER and SUPPORT first: a refused call changes nothing the ADMIN call needs
            # When the role calls the route through the gateway
            response = api_call(
                route.method, _fill(route.path, world), body=_fill(route.body, world), query=route.query,
                as_user=callers[role], role=role,
            )  # fmt: skip
            answered[(route.method, route.path, role)] = response.status
            expected[(route.method, route.path, role)] = "2xx" if role in ALLOWED[route.group] else "403"
    # Then each answer is the table's: 2xx where the role is allowed, 403 forbidden elsewhere
    seen = {key: "2xx" if 200 <= status < 300 else str(status) for key, status in answered.items()}
    assert seen == expected


def test_the_table_covers_every_admin_route_of_the_template():
    # Given the template's routes
    template = (REPO_ROOT / "template.yaml").read_text()
    admin_routes = {(p, m) for m, p in re.findall(r"Method: (\w+)\s+Path: (/admin/\S+)", template)}
    # When they are compared with the table's routes
    tabled = {(r.path, r.method) for r in ROUTES if r.path.startswith("/admin")}
    # Then no admin route is left out of the table (a new one needs a row here and in the README)
    assert admin_routes and admin_routes - tabled == set()


def _readme_table() -> dict[str, list[str]]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Who may do what", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Route group")]
    cells = [[c.strip() for c in row.strip().strip("|").split(" | ")] for row in rows]
    return {c[0]: c[1:] for c in cells}


def test_the_readme_table_is_this_table():
    # Given the README's "Who may do what" table
    table = _readme_table()
    # When each of its rows is read as (routes, USER, SUPPORT, ADMIN, operator)
    assert list(table) == [g.name for g in GROUPS]
    for group in GROUPS:
        routes, *verdicts, operator = table[group.name]
        # Then the verdicts, the routes named and the operator's commands are this test's
        assert verdicts == ["yes" if role in group.allowed else "no" for role in ROLES], group.name
        named = set(re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (\S+)`", routes))
        assert named == {(r.method, r.path) for r in ROUTES if r.group == group.name}, group.name
        wanted = ", ".join(f"`tollgate {c}`" for c in group.operator) if group.operator else "no"
        assert operator == wanted, group.name


def test_the_operator_commands_exist_in_the_cli():
    # Given the CLI's parser
    parser = build_parser()
    commands = [c for g in GROUPS for c in g.operator]
    assert sorted(commands) == sorted(OPERATOR_ARGV)
    for command in commands:
        # When the operator's command is parsed, Then it names a real command
        args = parser.parse_args([*command.split(), *OPERATOR_ARGV[command]])
        assert callable(args.func), command


def test_the_operator_replays_with_an_audit_row_naming_it_but_may_not_move_credits(db, payments_env, catalogue):
    # Given a stored Stripe event and a customer
    customer = funded_user(db, "5")
    event = stored_pack_event(customer, catalogue)
    operator = Actor.operator("cli:alice")
    # When the operator replays it, and tries an admin-only credit adjustment
    receipt = webhooks.replay_event(event["id"], operator)
    with pytest.raises(Forbidden):
        credits_admin.adjust_user(
            UnitOfWork(), operator, customer, amount=Decimal("5"), reason="no", expires_at=None, idempotency_key=None
        )
    # Then the replay ran and is audited without a user id, naming the operator; no credits moved
    assert receipt.status == "processed"
    with db() as uow:
        rows = uow.session.execute(text("SELECT actor_id, details FROM audit_logs WHERE action = 'webhook.replay'"))
        audits = [(r.actor_id, r.details["operator"]) for r in rows]
        balance = uow.session.execute(
            text("SELECT balance FROM credit_accounts WHERE user_id = :u"), {"u": customer}
        ).scalar_one()
    assert audits == [(None, "cli:alice")]
    assert balance == Decimal("105")  # the pack's 100 once, despite the replay; no adjustment


def test_an_actor_is_either_a_user_or_the_operator():
    # Given the two ways to make an actor, When one is made inconsistently, Then it is refused at once
    with pytest.raises(ValueError):
        Actor(user_id=None, role="ADMIN")
    with pytest.raises(ValueError):
        Actor(user_id=uuid.uuid4(), role="OPERATOR")
    with pytest.raises(ValueError):
        Actor.user(uuid.uuid4(), "ROOT")
    assert Actor.operator().user_id is None and Actor.user(uuid.uuid4(), "USER").role == "USER"
