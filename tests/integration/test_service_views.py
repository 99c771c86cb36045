"""The credits, catalogue, billing, files, knowledge-base, conversation and profile services hand out views, never
ORM rows: every value they return, down to the last nested field, is a frozen dataclass or a plain value made
inside the unit of work, read here after that unit of work has closed. JSON values are copies: a view holds what
was true when it was made."""

# ruff: noqa: F401, F811  (fixtures imported by name and redefined as parameters)
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tests.files_support import FileEnv, files_env, upload_through_gateway
from tests.integration.test_commerce_catalogue_views import assert_plain
from tests.support import make_user
from tollgate import ledger
from tollgate.db import UnitOfWork
from tollgate.models.credits import Plan
from tollgate.models.payments import Invoice, Purchase, Subscription
from tollgate.models.rag import AiConversation, AiMessage
from tollgate.rag.embeddings import get_embedding_provider
from tollgate.services import billing, credits, credits_admin, files, identity, rag_ask, rag_ingest
from tollgate.services.authz import Actor
from tollgate.services.rag_ingest import QaDocument, qa_drafts
from tollgate.storage import get_storage

Db = Callable[[], UnitOfWork]
FEATURES = ["1,000 credits a month", {"line": "priority support", "tags": ["pro"]}]


def _user(db: Db, role: str = "USER", **fields: Any) -> uuid.UUID:
    with db() as uow:
        user = make_user(uow.session, role=role, **fields)
        uow.commit()
        return user.id


def test_every_credits_and_catalogue_answer_is_plain_values(db: Db) -> None:
    # Given an admin, and a customer holding a grant (so an account, a grant and a ledger line)
    staff = Actor.user(_user(db, "ADMIN"), "ADMIN")
    customer = _user(db)
    with db() as uow:
        ledger.grant(uow.session, customer, kind="promo", amount=Decimal("7.5"), source_key="promo:views")
        uow.commit()
    answers: dict[str, Any] = {}

    # When the admin creates and changes a plan and a pack, and everyone lists them
    plan = credits_admin.create_plan(
        db(), staff,
        {"tier": "VIEWS", "name": "Views", "monthly_credits": Decimal(1000), "price_monthly": Decimal("19.00"),
         "price_yearly": Decimal("190.00"), "rollover": "none", "features": FEATURES},
    )  # fmt: skip
    answers["create_plan"] = plan
    answers["update_plan"] = credits_admin.update_plan(db(), staff, plan.id, {"name": "Views Plus"})
    pack = credits_admin.create_pack(
        db(), staff, {"name": "Views pack", "credits": Decimal(100), "price": Decimal("5.00")}
    )
    answers["create_pack"] = pack
    answers["update_pack"] = credits_admin.update_pack(db(), staff, pack.id, {"expires_after_days": 30})
    answers["list_plans"] = credits_admin.list_plans(db(), staff, cursor=None, limit=10)
    answers["list_packs"] = credits_admin.list_packs(db(), staff, cursor=None, limit=10)
    answers["active_plans"] = credits.active_plans(db())
    answers["active_credit_packs"] = credits.active_credit_packs(db())
    # ... and reads the customer's account, and the customer their ledger
    answers["user_credits"] = credits_admin.user_credits(db(), staff, customer)
    answers["list_transactions"] = credits.list_transactions(db(), customer)

    # Then no answer holds an ORM instance, at any depth
    for name, answer in answers.items():
        assert_plain(answer, name)
    # And each carries what was written and read: Decimal amounts, the plan's features as plain JSON
    assert (plan.tier, plan.name, plan.monthly_credits, plan.price_monthly) == (
        "VIEWS", "Views", Decimal(1000), Decimal("19.00"),
    )  # fmt: skip
    assert plan.features == FEATURES and type(plan.features) is list and type(plan.features[1]) is dict
    assert answers["update_plan"].name == "Views Plus" and answers["update_plan"].id == plan.id
    assert (pack.price, pack.expires_after_days, answers["update_pack"].expires_after_days) == (
        Decimal("5.00"),
        None,
        30,
    )
    assert [p.name for p in answers["list_plans"].items] == [p.name for p in answers["active_plans"].items]
    assert [p.name for p in answers["list_plans"].items] == ["Views Plus"]
    assert [p.id for p in answers["list_packs"].items] == [p.id for p in answers["active_credit_packs"].items]
    account = answers["user_credits"].account
    assert account is not None and (account.balance, account.held) == (Decimal("7.5"), Decimal(0))
    assert [(g.kind, g.amount, g.remaining) for g in answers["user_credits"].grants] == [
        ("promo", Decimal("7.5"), Decimal("7.5"))
    ]
    ledger_lines = answers["list_transactions"].items
    assert [(t.type, t.amount, t.balance_after) for t in ledger_lines] == [("promo", Decimal("7.5"), Decimal("7.5"))]
    assert isinstance(ledger_lines[0].metadata, dict)


def test_a_catalogue_view_is_a_snapshot_its_holder_cannot_change(db: Db) -> None:
    # Given a plan's view, as created
    staff = Actor.user(_user(db, "ADMIN"), "ADMIN")
    created = credits_admin.create_plan(
        db(), staff, {"tier": "SNAP", "name": "Snap", "rollover": "none", "features": FEATURES}
    )
    # When its holder changes the features list it was handed, and the plan is renamed afterwards
    created.features.append("added by the holder")
    credits_admin.update_plan(db(), staff, created.id, {"name": "Snap 2"})
    # Then the stored plan is untouched by the holder's change, and the old view still says what was true then
    with db() as uow:
        stored = uow.session.get(Plan, created.id)
        assert stored is not None and stored.features == FEATURES and stored.name == "Snap 2"
    assert created.name == "Snap"
    # And no field of a view can be assigned
    with pytest.raises(dataclasses.FrozenInstanceError):
        created.name = "Snap 3"  # type: ignore[misc]


def test_every_billing_answer_is_plain_values(db: Db) -> None:
    # Given a customer on a named plan, with a subscription, a purchase and an invoice
    with db() as uow:
        s = uow.session
        plan = Plan(tier="BILLVIEWS", name="Bill Views")
        s.add(plan)
        user = make_user(s, tier="BILLVIEWS")
        s.flush()
        s.add(
            Subscription(
                provider="stripe", provider_subscription_id=f"sub_{uuid.uuid4().hex}", user_id=user.id,
                plan_id=plan.id, tier="BILLVIEWS", interval="month", status="active",
            )
        )  # fmt: skip
        s.add(
            Purchase(
                provider="stripe", provider_order_id=f"cs_{uuid.uuid4().hex}", user_id=user.id,
                credits=Decimal(100), amount=Decimal("5.00"), currency="usd", status="completed", package_name="Pack",
            )
        )  # fmt: skip
        s.add(
            Invoice(
                provider="stripe", provider_invoice_id=f"in_{uuid.uuid4().hex}", user_id=user.id, status="paid",
                amount_due=Decimal("19.00"), amount_paid=Decimal("19.00"), currency="usd",
                credits_granted=Decimal(1000),
            )
        )  # fmt: skip
        uow.commit()
        customer = user.id
    # When the customer reads their subscription, purchases and invoices
    answers: dict[str, Any] = {
        "current_subscription": billing.current_subscription(db(), customer),
        "list_purchases": billing.list_purchases(db(), customer),
        "list_invoices": billing.list_invoices(db(), customer),
    }
    # Then no answer holds an ORM instance, and each carries what was stored
    for name, answer in answers.items():
        assert_plain(answer, name)
    sub = answers["current_subscription"]
    assert sub is not None and (sub.tier, sub.plan_name, sub.status, sub.quantity) == (
        "BILLVIEWS", "Bill Views", "active", 1,
    )  # fmt: skip
    assert [(p.package_name, p.amount, p.refunded_amount) for p in answers["list_purchases"].items] == [
        ("Pack", Decimal("5.00"), Decimal(0))
    ]
    assert [(i.amount_paid, i.credits_granted) for i in answers["list_invoices"].items] == [
        (Decimal("19.00"), Decimal(1000))
    ]
    # And a user without a subscription has none
    assert billing.current_subscription(db(), _user(db)) is None


def test_every_files_answer_is_plain_values(db: Db, files_env: FileEnv) -> None:
    # Given a user and the local store
    user = _user(db)
    storage = get_storage()
    answers: dict[str, Any] = {}
    # When they start an upload with metadata, the bytes arrive, and it is completed, listed, read, deleted, restored
    started = files.start_upload(
        db(), storage, user, name="notes.txt", content_type="text/plain", size=4, metadata={"tags": ["a"]}
    )
    answers["start_upload"] = started
    posted = upload_through_gateway({"url": started.post.url, "fields": started.post.fields}, b"data")
    assert posted.status == 204, posted.body
    answers["complete_upload"] = files.complete_upload(db(), storage, user, started.file.id)
    answers["complete_upload (again)"] = files.complete_upload(db(), storage, user, started.file.id)
    answers["list_files"] = files.list_files(db(), user, limit=10, cursor=None)
    answers["get_file"] = files.get_file(db(), storage, user, started.file.id)
    files.delete_file(db(), user, started.file.id)
    answers["restore_file"] = files.restore_file(db(), user, started.file.id)
    answers["restore_file (not deleted)"] = files.restore_file(db(), user, started.file.id)

    # Then no answer holds an ORM instance, at any depth
    for name, answer in answers.items():
        assert_plain(answer, name)
    # And each carries the file as it was at that moment
    assert (started.file.status, started.file.size, started.file.metadata) == ("PENDING", 4, {"tags": ["a"]})
    assert started.file.key == f"users/{user}/{started.file.id}"
    completed = answers["complete_upload"].file
    assert (completed.status, completed.original_name, completed.checksum is not None) == ("READY", "notes.txt", True)
    assert answers["complete_upload (again)"].file == completed
    assert [f.file.id for f in answers["list_files"].items] == [started.file.id]
    one = answers["get_file"]
    assert one.download_url is not None and one.file.completed_at == completed.completed_at
    assert answers["restore_file"].file.status == "READY" and answers["restore_file"].file.deleted_at is None
    # And the upload's view, made before completion, still says PENDING
    assert started.file.status == "PENDING"


def test_every_knowledge_base_and_conversation_answer_is_plain_values(db: Db) -> None:
    # Given a knowledge base of two entries, and a user's conversation of two messages
    rag_ingest.ingest(
        db(), Actor.operator(),
        qa_drafts([QaDocument("How do I search?", "POST /rag/search.", "kb", {"lang": "en"}),
                   QaDocument("How much?", "0.2 credits.", "kb")]),
        get_embedding_provider(),
    )  # fmt: skip
    admin = Actor.user(_user(db, "ADMIN"), "ADMIN")
    user = _user(db)
    sources = [{"number": 1, "id": str(uuid.uuid4()), "question": "How do I search?"}]
    with db() as uow:
        conversation = AiConversation(user_id=user, title="Searching", model="extractive", message_count=2)
        uow.session.add(conversation)
        uow.session.flush()
        uow.session.add_all([
            AiMessage(conversation_id=conversation.id, position=0, role="user", content="How do I search?"),
            AiMessage(conversation_id=conversation.id, position=1, role="assistant", content="POST /rag/search. [1]",
                      sources=sources, model="extractive", input_tokens=12, output_tokens=5, credits=Decimal("0.017")),
        ])  # fmt: skip
        uow.commit()
        conversation_id = conversation.id
    # When an admin lists the chunks, and the user lists and opens their conversations
    answers: dict[str, Any] = {
        "list_chunks": rag_ingest.list_chunks(db(), admin, limit=10, category="kb"),
        "list_conversations": rag_ask.list_conversations(db(), user, limit=10, cursor=None),
        "get_conversation": rag_ask.get_conversation(db(), user, conversation_id),
    }
    # Then no answer holds an ORM instance (a chunk's view has no embedding), and each carries what was stored
    for name, answer in answers.items():
        assert_plain(answer, name)
    chunks = answers["list_chunks"].items
    assert sorted(c.question or "" for c in chunks) == ["How do I search?", "How much?"]
    assert {c.question: c.metadata.get("lang") for c in chunks}["How do I search?"] == "en"
    assert not hasattr(chunks[0], "embedding")
    assert [(c.id, c.title, c.message_count) for c in answers["list_conversations"].items] == [
        (conversation_id, "Searching", 2)
    ]
    found, messages = answers["get_conversation"]
    assert found.id == conversation_id and found.credits_used == Decimal(0)
    assert [(m.role, m.credits) for m in messages] == [("user", Decimal(0)), ("assistant", Decimal("0.017"))]
    assert messages[1].sources == sources and messages[1].sources is not sources


def test_the_profile_answers_are_plain_values(db: Db) -> None:
    # Given a user
    user = _user(db, name="Before", timezone="Europe/Lisbon")
    # When they read their profile and change their name
    before = identity.get_profile(db(), user)
    after = identity.update_profile(db(), user, {"name": "After", "language": "pt"})
    # Then both answers are plain views carrying the profile of their moment
    assert_plain(before, "get_profile")
    assert_plain(after, "update_profile")
    assert (before.id, before.name, before.timezone, before.language) == (user, "Before", "Europe/Lisbon", "en")
    assert (after.name, after.language, after.email_verified, after.two_factor_enabled) == ("After", "pt", False, False)
    assert identity.get_profile(db(), user).name == "After"
