"""Workspace features (issue 14, seeds 002/003 `Feature`): admins create, change and delete them (audited with
old and new values); anyone reads a workspace's list by name, without signing in, through the real gateway and
authorizer. USER and SUPPORT are refused the admin routes; bad input is a 4xx with a code and writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.models import User

Db = Callable[[], UnitOfWork]


def _user(db: Db, role: str) -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        uow.session.expunge(user)
        return user


@pytest.fixture
def admin(db: Db) -> User:
    return _user(db, "ADMIN")


def _create(admin: User, **body: Any) -> Any:
    return api_call("POST", "/admin/features", body={"workspace_id": "acme", "name": "Search", **body}, as_user=admin)


def _public(workspace: str, query: str = "") -> Any:
    # No credential at all, through the route's real authorizer setting (none): the route is public.
    return api_call("GET", f"/workspaces/{workspace}/features", query=query, through_authorizer=True)


def _count(db: Db, table: str) -> int:
    with db() as uow:
        found: int = uow.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        return found


def test_an_admin_creates_changes_and_deletes_a_feature_and_each_step_is_audited(db: Db, admin: User) -> None:
    # When an admin creates a feature with a description and tags (repeated tags kept once, in order)
    created = _create(admin, description="Find anything", tags=["ai", "search", "ai"])
    # Then 201 with the feature
    assert created.status == 201, created.json
    feature = created.json
    assert {k: feature[k] for k in ("workspace_id", "name", "description", "tags")} == {
        "workspace_id": "acme", "name": "Search", "description": "Find anything", "tags": ["ai", "search"],
    }  # fmt: skip
    uuid.UUID(feature["id"])
    # When it changes the tags and clears the description (only the fields given change)
    patched = api_call(
        "PATCH", f"/admin/features/{feature['id']}", body={"tags": ["beta"], "description": None}, as_user=admin
    )
    assert patched.status == 200, patched.json
    assert patched.json["name"] == "Search" and patched.json["tags"] == ["beta"] and patched.json["description"] is None
    # When it deletes it
    deleted = api_call("DELETE", f"/admin/features/{feature['id']}", as_user=admin)
    # Then 204, the workspace lists nothing, and a second delete is 404 feature_not_found
    assert deleted.status == 204
    assert _public("acme").json["items"] == []
    again = api_call("DELETE", f"/admin/features/{feature['id']}", as_user=admin)
    assert again.status == 404 and again.error_code == "feature_not_found"
    # And the audit trail holds each step with what it replaced and wrote
    trail = api_call("GET", "/admin/audit-logs", query=f"resource=feature&resource_id={feature['id']}", as_user=admin)
    rows = [(i["action"], i["old_values"], i["new_values"]) for i in reversed(trail.json["items"])]
    assert rows == [
        ("feature.create", None, {"workspace_id": "acme", "name": "Search", "description": "Find anything",
                                  "tags": ["ai", "search"]}),
        ("feature.update", {"description": "Find anything", "tags": ["ai", "search"]},
         {"description": None, "tags": ["beta"]}),
        ("feature.delete", {"workspace_id": "acme", "name": "Search", "description": None, "tags": ["beta"]}, None),
    ]  # fmt: skip


def test_a_patch_that_changes_nothing_writes_no_audit_row(db: Db, admin: User) -> None:
    # Given a feature
    feature = _create(admin, tags=["a"]).json
    # When it is patched with the values it already has
    same = api_call("PATCH", f"/admin/features/{feature['id']}", body={"name": "Search", "tags": ["a"]}, as_user=admin)
    # Then 200, and only the creation is in the trail
    assert same.status == 200 and same.json["updated_at"] == feature["updated_at"]
    with db() as uow:
        actions = uow.session.execute(text("SELECT action FROM audit_logs")).scalars().all()
    assert actions == ["feature.create"]


def test_anyone_reads_a_workspace_s_features_by_name_page_by_page(db: Db, admin: User) -> None:
    # Given five features in one workspace and one in another
    for name in ("Delta", "alpha", "Charlie", "Bravo", "Echo"):
        assert _create(admin, name=name).status == 201
    assert _create(admin, workspace_id="other", name="Elsewhere").status == 201
    # When anyone without a credential reads the workspace two at a time
    names: list[str] = []
    query = "limit=2"
    for _ in range(4):
        page = _public("acme", query)
        assert page.status == 200, page.json
        names += [f["name"] for f in page.json["items"]]
        if page.json["next_cursor"] is None:
            break
        query = f"limit=2&cursor={page.json['next_cursor']}"
    # Then every feature of that workspace comes once, by name, and none of the other
    assert names == ["Bravo", "Charlie", "Delta", "Echo", "alpha"]
    # And a workspace nobody used has none
    assert _public("unknown-workspace").json == {"items": [], "next_cursor": None}


def test_names_are_unique_inside_a_workspace_only(db: Db, admin: User) -> None:
    # Given a feature named Search in acme
    first = _create(admin).json
    # When another one with that name is created in acme, or one is renamed to it
    taken = _create(admin)
    other = _create(admin, name="Other").json
    renamed = api_call("PATCH", f"/admin/features/{other['id']}", body={"name": "Search"}, as_user=admin)
    # Then 409 feature_name_taken, and nothing changed
    assert taken.status == 409 and taken.error_code == "feature_name_taken"
    assert renamed.status == 409 and renamed.error_code == "feature_name_taken"
    assert [f["name"] for f in _public("acme").json["items"]] == ["Other", "Search"]
    # And another workspace may use the name
    assert _create(admin, workspace_id="acme-2").status == 201
    assert first["name"] == "Search" and _count(db, "features") == 3


@pytest.mark.parametrize(
    "body",
    [
        {"workspace_id": "", "name": "x"},
        {"workspace_id": "has space", "name": "x"},
        {"workspace_id": "-leading", "name": "x"},
        {"workspace_id": "w" * 65, "name": "x"},
        {"workspace_id": "acme", "name": "   "},
        {"workspace_id": "acme", "name": "n" * 201},
        {"workspace_id": "acme", "name": "x", "description": "d" * 2001},
        {"workspace_id": "acme", "name": "x", "tags": [f"t{n}" for n in range(21)]},
        {"workspace_id": "acme", "name": "x", "tags": ["t" * 51]},
        {"workspace_id": "acme", "name": "x", "tags": [""]},
        {"workspace_id": "acme", "name": "x", "owner": "me"},
        {"name": "x"},
    ],
)
def test_bad_bodies_are_422_and_write_nothing(db: Db, admin: User, body: dict[str, Any]) -> None:
    # When an admin posts a body outside the bounds
    refused = api_call("POST", "/admin/features", body=body, as_user=admin)
    # Then 422 validation_error, and no feature and no audit row exist
    assert refused.status == 422 and refused.error_code == "validation_error", refused.json
    assert _count(db, "features") == 0 and _count(db, "audit_logs") == 0


def test_bad_patches_and_paths_are_refused_and_change_nothing(db: Db, admin: User) -> None:
    feature = _create(admin).json
    path = f"/admin/features/{feature['id']}"
    # When required fields are nulled, an unknown field is sent, or the id is not a feature's
    for body in ({"name": None}, {"workspace_id": None}, {"tags": None}, {"colour": "red"}):
        refused = api_call("PATCH", path, body=body, as_user=admin)
        assert refused.status == 422, (body, refused.json)
    missing = api_call("PATCH", f"/admin/features/{uuid.uuid4()}", body={"name": "x"}, as_user=admin)
    assert missing.status == 404 and missing.error_code == "feature_not_found"
    assert api_call("PATCH", "/admin/features/not-a-uuid", body={"name": "x"}, as_user=admin).status == 422
    # And a public read of a malformed workspace id is 422, of a crafted cursor 400
    assert _public("bad%20id").status == 422
    crafted = _public("acme", "cursor=eyJrIjoic3UifQ.AAAA")
    assert crafted.status == 400 and crafted.error_code == "invalid_cursor"
    # Then the feature is as created, and only its creation is audited
    assert _public("acme").json["items"] == [feature]
    assert _count(db, "audit_logs") == 1


@pytest.mark.parametrize("role", ["USER", "SUPPORT"])
def test_only_admins_change_features(db: Db, admin: User, role: str) -> None:
    # Given a feature and a signed-in caller who is not an admin
    feature = _create(admin).json
    caller = _user(db, role)
    path = f"/admin/features/{feature['id']}"
    # When they create, change or delete features
    answers = [
        api_call("POST", "/admin/features", body={"workspace_id": "acme", "name": "Mine"}, as_user=caller),
        api_call("PATCH", path, body={"name": "Mine"}, as_user=caller),
        api_call("DELETE", path, as_user=caller),
    ]
    # Then each is 403 forbidden and nothing changed (the public read still works for them)
    assert [(a.status, a.error_code) for a in answers] == [(403, "forbidden")] * 3
    assert _public("acme").json["items"] == [feature]
    assert _count(db, "audit_logs") == 1


def test_the_admin_routes_are_refused_without_a_credential_by_the_real_authorizer(db: Db) -> None:
    # When the admin routes are called with no credential through the gateway's authorizer
    created = api_call("POST", "/admin/features", body={"workspace_id": "acme", "name": "x"}, through_authorizer=True)
    logs = api_call("GET", "/admin/audit-logs", through_authorizer=True)
    # Then the authorizer refuses both before any handler runs (the gateway's bare 403), and nothing is written
    assert (created.status, created.json) == (403, {"message": "Forbidden"})
    assert (logs.status, logs.json) == (403, {"message": "Forbidden"})
    assert _count(db, "features") == 0
