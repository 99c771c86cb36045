"""The audit trail (issue 14): rows carry old and new values, the request's IP and user agent; they are written in
the transaction of their change (a change that fails leaves none); the database refuses to rewrite or remove
them; GET /admin/audit-logs filters them, newest first, with signed cursors, for admins only."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.support import api_call, make_user
from tollgate import ledger, request_origin
from tollgate.db import UnitOfWork
from tollgate.models import User
from tollgate.pagination import encode_cursor
from tollgate.services import authz
from tollgate.services.authz import Actor

Db = Callable[[], UnitOfWork]
AGENT = "tollgate-tests/1.0 (audit)"
SOURCE_IP = "203.0.113.9"  # the address tests.support.api_call sends from


def _admin(db: Db, role: str = "ADMIN") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
        return user


def _rows(db: Db, where: str = "TRUE", **params: Any) -> list[dict[str, Any]]:
    with db() as uow:
        found = uow.session.execute(text(f"SELECT * FROM audit_logs WHERE {where} ORDER BY created_at, id"), params)
        return [dict(r._mapping) for r in found]


def _logs(admin: User, query: str = "") -> Any:
    return api_call("GET", "/admin/audit-logs", query=query, as_user=admin)


def _write(db: Db, actor: Actor, action: str, target_type: str, target_id: str, at: datetime) -> None:
    with db() as uow:
        authz.audit(uow.session, actor, action=action, target_type=target_type, target_id=target_id, now=at)
        uow.commit()


# --- what a row carries ---------------------------------------------------------------------------------------
def test_a_change_through_the_api_records_old_and_new_values_ip_and_user_agent(db: Db) -> None:
    # Given an admin
    admin = _admin(db)
    headers = {"user-agent": AGENT}
    # When they create a feature, then rename it, through the gateway with their user agent
    created = api_call(
        "POST", "/admin/features", body={"workspace_id": "ws-1", "name": "Search", "tags": ["ai"]},
        as_user=admin, headers=headers,
    )  # fmt: skip
    assert created.status == 201, created.json
    feature_id = created.json["id"]
    renamed = api_call(
        "PATCH", f"/admin/features/{feature_id}", body={"name": "Semantic search"}, as_user=admin, headers=headers
    )
    assert renamed.status == 200, renamed.json
    # Then two rows name the admin, the feature, the values and where the requests came from
    rows = _rows(db, "target_type = 'feature'")
    assert [(r["action"], r["actor_id"], r["target_id"]) for r in rows] == [
        ("feature.create", admin.id, feature_id),
        ("feature.update", admin.id, feature_id),
    ]
    assert rows[0]["old_values"] is None
    assert rows[0]["new_values"] == {"workspace_id": "ws-1", "name": "Search", "description": None, "tags": ["ai"]}
    assert rows[1]["old_values"] == {"name": "Search"} and rows[1]["new_values"] == {"name": "Semantic search"}
    assert {(r["ip_address"], r["user_agent"]) for r in rows} == {(SOURCE_IP, AGENT)}
    # And the admin reads the same through GET /admin/audit-logs, newest first
    listed = _logs(admin, f"resource=feature&resource_id={feature_id}").json["items"]
    assert [i["action"] for i in listed] == ["feature.update", "feature.create"]
    assert listed[0]["old_values"] == {"name": "Search"} and listed[0]["new_values"] == {"name": "Semantic search"}
    assert listed[0]["ip_address"] == SOURCE_IP and listed[0]["user_agent"] == AGENT
    assert listed[0]["actor_id"] == str(admin.id) and listed[0]["resource"] == "feature"


def test_rows_written_outside_a_request_carry_no_origin_and_a_request_leaves_none_bound(db: Db) -> None:
    # Given a request served through the gateway
    admin = _admin(db)
    assert _logs(admin).status == 200
    # Then nothing of it stays bound afterwards
    assert request_origin.current() == request_origin.RequestOrigin()
    # When the CLI operator's change is audited outside any request
    _write(db, Actor.operator("tests"), "cli.thing", "thing", "t1", datetime.now(UTC))
    # Then its row has no IP or user agent, and names the operator
    (row,) = _rows(db, "action = 'cli.thing'")
    assert row["ip_address"] is None and row["user_agent"] is None and row["actor_id"] is None
    assert row["details"] == {"operator": "tests"}


def test_concurrent_requests_on_threads_each_record_their_own_user_agent(db: Db) -> None:
    # Given an admin and eight requests at once, each with its own user agent (the local gateway serves on threads)
    admin = _admin(db)
    barrier = threading.Barrier(8)
    statuses: list[int] = []

    def create(n: int) -> None:
        barrier.wait()
        response = api_call(
            "POST", "/admin/features", body={"workspace_id": "ws-threads", "name": f"f{n}"}, as_user=admin,
            headers={"user-agent": f"agent-{n}"},
        )  # fmt: skip
        statuses.append(response.status)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every feature's row carries the user agent of the request that made it
    assert statuses == [201] * 8
    rows = _rows(db, "action = 'feature.create'")
    assert sorted((r["new_values"]["name"], r["user_agent"]) for r in rows) == [
        (f"f{n}", f"agent-{n}") for n in range(8)
    ]


def test_an_overlong_or_unprintable_user_agent_is_cut_to_the_column(db: Db) -> None:
    # Given a user agent of 2,000 characters with a control character in it
    admin = _admin(db)
    agent = "x\x07" + "y" * 2000
    # When an audited change arrives with it
    created = api_call(
        "POST", "/admin/features", body={"workspace_id": "ws-ua", "name": "n"}, as_user=admin,
        headers={"user-agent": agent},
    )  # fmt: skip
    # Then the change succeeds and the row keeps 512 printable characters
    assert created.status == 201, created.json
    (row,) = _rows(db, "action = 'feature.create'")
    assert row["user_agent"] == ("x" + "y" * 2000)[:512]


# --- atomic with the change -----------------------------------------------------------------------------------
def _crash_after_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every audit write succeed and the change fail right after it, before its commit."""
    real = ledger.audit

    def audit_then_fail(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        raise RuntimeError("the change fails after its audit row was written")

    monkeypatch.setattr(ledger, "audit", audit_then_fail)


def test_a_credit_policy_change_that_fails_after_its_audit_call_leaves_no_row(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an admin, the credit policy as it is, and a change that fails after writing its audit row
    admin = _admin(db)
    before = api_call("GET", "/admin/credits/settings", as_user=admin).json
    _crash_after_audit(monkeypatch)
    # When the admin changes the policy
    response = api_call(
        "PUT", "/admin/credits/settings",
        body={"allow_bonus_auto_use_toggle": not before["allow_bonus_auto_use_toggle"]}, as_user=admin,
    )  # fmt: skip
    # Then the change failed, the policy is unchanged and no audit row survives
    assert response.status == 500
    monkeypatch.undo()
    assert api_call("GET", "/admin/credits/settings", as_user=admin).json == before
    assert _rows(db, "action = 'credits.bonus_auto_use_policy'") == []


def test_a_feature_creation_that_fails_after_its_audit_call_leaves_neither_feature_nor_row(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an admin and a change that fails after writing its audit row
    admin = _admin(db)
    _crash_after_audit(monkeypatch)
    # When the admin creates a feature
    response = api_call("POST", "/admin/features", body={"workspace_id": "ws-x", "name": "Lost"}, as_user=admin)
    # Then nothing was written: no feature, no audit row
    assert response.status == 500
    monkeypatch.undo()
    assert api_call("GET", "/workspaces/ws-x/features").json["items"] == []
    assert _rows(db) == []


# --- append-only ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_logs SET action = 'rewritten'",
        "UPDATE audit_logs SET ip_address = NULL, user_agent = NULL",
        "DELETE FROM audit_logs",
        "TRUNCATE audit_logs",
    ],
)
def test_the_database_refuses_to_rewrite_or_remove_audit_rows(db: Db, statement: str) -> None:
    # Given an audit row
    admin = _admin(db)
    _write(db, Actor.user(admin.id, "ADMIN"), "thing.change", "thing", "t1", datetime.now(UTC))
    # When anyone, through SQL, updates, deletes or truncates audit rows
    with db() as uow, pytest.raises(DBAPIError) as refused:
        uow.session.execute(text(statement))
    # Then the database refuses (insufficient_privilege) and the row is as written
    assert "audit_logs is append-only" in str(refused.value)
    assert getattr(refused.value.orig, "args", [{}])[0].get("C") == "42501"
    (row,) = _rows(db)
    assert row["action"] == "thing.change" and row["target_id"] == "t1"


# --- reading: filters and cursors -----------------------------------------------------------------------------
@pytest.fixture
def trail(db: Db) -> dict[str, Any]:
    """Two admins' rows over three days: admin A changes plans and a user, admin B a feature."""
    a, b = _admin(db), _admin(db)
    actor_a, actor_b = Actor.user(a.id, "ADMIN"), Actor.user(b.id, "ADMIN")
    day = datetime(2026, 11, 1, tzinfo=UTC)
    _write(db, actor_a, "plan.create", "plan", "p1", day)
    _write(db, actor_a, "plan.update", "plan", "p1", day + timedelta(days=1))
    _write(db, actor_a, "user.role", "user", str(b.id), day + timedelta(days=1, hours=1))
    _write(db, actor_b, "feature.create", "feature", "f1", day + timedelta(days=2))
    return {"a": a, "b": b, "day": day}


def _actions(admin: User, query: str) -> list[str]:
    response = _logs(admin, query)
    assert response.status == 200, response.json
    return [i["action"] for i in response.json["items"]]


def test_filters_narrow_by_actor_resource_action_and_time(trail: dict[str, Any]) -> None:
    a, b, day = trail["a"], trail["b"], trail["day"]
    # Then no filter is every row, newest first
    assert _actions(a, "") == ["feature.create", "user.role", "plan.update", "plan.create"]
    # And each filter narrows, alone and together
    assert _actions(a, f"actor_id={b.id}") == ["feature.create"]
    assert _actions(a, "resource=plan") == ["plan.update", "plan.create"]
    assert _actions(a, "resource=plan&resource_id=p1&action=plan.create") == ["plan.create"]
    assert _actions(a, f"resource_id={b.id}") == ["user.role"]
    assert _actions(a, "action=user.role") == ["user.role"]
    # And since is inclusive, until exclusive
    since = (day + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    until = (day + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    assert _actions(a, f"since={since}&until={until}") == ["user.role", "plan.update"]
    assert _actions(a, f"actor_id={a.id}&until={until}&resource=user") == ["user.role"]
    # And a filter that matches nothing is an empty page
    assert _actions(a, f"actor_id={uuid.uuid4()}") == []


def test_cursor_pages_walk_the_trail_newest_first_without_gaps_or_repeats(trail: dict[str, Any]) -> None:
    a = trail["a"]
    seen: list[str] = []
    cursor = ""
    # When the trail is read two rows at a time, with the actor filter kept
    for _ in range(3):
        page = _logs(a, f"actor_id={a.id}&limit=2" + (f"&cursor={cursor}" if cursor else "")).json
        seen += [i["action"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = page["next_cursor"]
    # Then every row of the actor comes once, newest first, and the last page says so
    assert seen == ["user.role", "plan.update", "plan.create"]
    assert page["next_cursor"] is None


def test_crafted_cursors_and_bad_filters_are_refused_before_anything_runs(trail: dict[str, Any]) -> None:
    a, day = trail["a"], trail["day"]
    issued = _logs(a, "limit=1").json["next_cursor"]
    assert issued
    payload, _, mac = issued.partition(".")
    forged_key = encode_cursor("audit_logs.created_at,audit_logs.id:asc", [day, uuid.uuid4()])
    other_list = encode_cursor("features.name,features.id:asc", ["a", uuid.uuid4()])
    # When a cursor is tampered with, unsigned, signed for another order or list, or not a cursor at all
    for cursor in (payload + "." + mac[::-1], payload, forged_key, other_list, "not-a-cursor", "x" * 600):
        refused = _logs(a, f"cursor={cursor}")
        # Then 400 invalid_cursor
        assert refused.status == 400 and refused.error_code == "invalid_cursor", cursor
    # And filters outside their bounds are 422 validation errors
    for query in ("actor_id=nope", "since=yesterday", "limit=0", "limit=101", "action=DROP%20TABLE", "resource=%20"):
        assert _logs(a, query).status == 422, query
    late, early = (day + timedelta(days=2)).isoformat(), day.isoformat()
    backwards = _logs(a, f"since={late.replace('+00:00', 'Z')}&until={early.replace('+00:00', 'Z')}")
    assert backwards.status == 422 and backwards.error_code == "validation_error"


@pytest.mark.parametrize("role", ["USER", "SUPPORT"])
def test_only_admins_read_the_trail(db: Db, trail: dict[str, Any], role: str) -> None:
    # Given a signed-in user who is not an admin
    caller = _admin(db, role=role)
    # When they read the trail
    refused = _logs(caller)
    # Then 403 forbidden, and the admin still reads it
    assert refused.status == 403 and refused.error_code == "forbidden"
    assert _logs(trail["a"]).status == 200
