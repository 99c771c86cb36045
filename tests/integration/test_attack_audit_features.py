"""Workspace features attacked from outside (issue 14 review): crafted workspace ids in the public path and in
bodies, names that differ only by case or by invisible characters, tag bombs, deletes of what does not exist,
races on one name, and the public read of a very large workspace (bounded pages)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from tests.support import api_call, make_user
from tollgate.db import UnitOfWork
from tollgate.models import User

Db = Callable[[], UnitOfWork]


@pytest.fixture
def admin(db: Db) -> User:
    with db() as uow:
        user = make_user(uow.session, role="ADMIN")
        uow.commit()
        uow.session.expunge(user)
        return user


def _create(admin: User, **body: Any) -> Any:
    return api_call("POST", "/admin/features", body={"workspace_id": "acme", "name": "Search", **body}, as_user=admin)


def _public(workspace: str, query: str = "") -> Any:
    return api_call("GET", f"/workspaces/{workspace}/features", query=query, through_authorizer=True)


def _count(db: Db, table: str) -> int:
    with db() as uow:
        found: int = uow.session.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        return found


@pytest.mark.parametrize(
    "workspace",
    [
        "..",
        "%2e%2e",
        "..%2F..%2Fadmin",
        "acme%2F..%2Fother",
        "acme%00",
        "acme%0A",
        "%C3%A1cme",  # á
        "%EF%BD%81cme",  # fullwidth a
        "acme%E2%80%8B",  # a zero-width space after it
        "w" * 65,
        "%20acme",
    ],
)
def test_a_crafted_workspace_id_in_the_public_path_is_refused_and_leaks_nothing(
    db: Db, admin: User, workspace: str
) -> None:
    # Given a feature in workspace acme
    assert _create(admin).status == 201
    # When anyone reads a crafted workspace id: traversal, encoded slashes, NUL, newline, look-alikes, overlong
    response = _public(workspace)
    # Then a 4xx with a code (never a 5xx), and nothing of acme's
    assert 400 <= response.status < 500, (workspace, response.status, response.body)
    assert "Search" not in response.body.decode(errors="replace")


@pytest.mark.parametrize(
    "workspace_id",
    ["acme\n", "acme/../x", "\uff41\uff43\uff4d\uff45", "acme\u200b", "ácme", "acme ", "../acme", "a" * 65],
)
def test_a_crafted_workspace_id_in_a_body_is_refused(db: Db, admin: User, workspace_id: str) -> None:
    # When an admin creates a feature in a workspace id with a newline, a slash, look-alike or invisible characters
    refused = _create(admin, workspace_id=workspace_id)
    # Then 422, nothing written
    assert refused.status == 422 and refused.error_code == "validation_error", refused.json
    assert _count(db, "features") == 0 and _count(db, "audit_logs") == 0


def test_names_that_differ_only_by_case_are_one_name(db: Db, admin: User) -> None:
    # Given a feature named Search in acme
    first = _create(admin)
    assert first.status == 201
    # When another is created as "search" or "SEARCH", or another is renamed to "sEARCH"
    lower, upper = _create(admin, name="search"), _create(admin, name="SEARCH")
    other = _create(admin, name="Other").json
    renamed = api_call("PATCH", f"/admin/features/{other['id']}", body={"name": "sEARCH"}, as_user=admin)
    # Then each is 409 feature_name_taken and only the two features exist
    assert [(r.status, r.error_code) for r in (lower, upper, renamed)] == [(409, "feature_name_taken")] * 3
    assert sorted(f["name"] for f in _public("acme").json["items"]) == ["Other", "Search"]
    # And a feature may change the case of its own name
    recased = api_call("PATCH", f"/admin/features/{first.json['id']}", body={"name": "SEARCH"}, as_user=admin)
    assert recased.status == 200 and recased.json["name"] == "SEARCH"


@pytest.mark.parametrize(
    "name", ["Search\u200b", "\u202eSearch", "Sea\x00rch", "Sea\x07rch", "Sea\nrch", "Sea\u00adrch", "\ufeffSearch"]
)
def test_names_with_invisible_or_control_characters_are_refused(db: Db, admin: User, name: str) -> None:
    # Given a feature named Search
    assert _create(admin).status == 201
    # When a look-alike name carrying an invisible, bidi or control character is posted
    refused = _create(admin, name=name)
    # Then 4xx with a code (no second "Search" that reads the same), nothing written
    assert refused.status in (400, 422), refused.json
    assert _count(db, "features") == 1 and _count(db, "audit_logs") == 1


def test_a_name_whose_nfc_form_outgrows_the_column_is_422_not_500(db: Db, admin: User) -> None:
    # Given a name of 200 characters (the bound) that NFC writes as 400 (U+0958 has no composed form)
    name = "\u0958" * 200
    # When it is posted as a name, and its tag-sized sibling as a tag
    as_name = _create(admin, name=name)
    as_tag = _create(admin, name="ok", tags=["\u0958" * 50])
    # Then both are refused at the edge, nothing written (the column would have refused it as a 500)
    assert as_name.status == 422 and as_tag.status == 422, (as_name.json, as_tag.json)
    assert _count(db, "features") == 0


def test_a_name_in_another_unicode_form_is_the_same_name(db: Db, admin: User) -> None:
    # Given a feature named "Café" (composed é)
    assert _create(admin, name="Caf\u00e9").status == 201
    # When "Café" with a combining accent (decomposed) is posted
    again = _create(admin, name="Cafe\u0301")
    # Then it is the same name: 409
    assert again.status == 409 and again.error_code == "feature_name_taken", again.json


@pytest.mark.parametrize(
    "tags",
    [
        [f"t{n}" for n in range(10_000)],
        ["t" * 10_000],
        ["ok", "bad\u200b"],
        ["ok", "ba\nd"],
        [["nested"]],
        ["ok", 7],
    ],
)
def test_tag_bombs_are_refused_before_anything_is_written(db: Db, admin: User, tags: list[Any]) -> None:
    # When an admin posts ten thousand tags, a 10 KB tag, an invisible character, a nested list or a number
    refused = _create(admin, tags=tags)
    # Then 422, and nothing is written
    assert refused.status == 422 and refused.error_code == "validation_error"
    assert _count(db, "features") == 0 and _count(db, "audit_logs") == 0


def test_the_most_tags_allowed_are_kept_and_duplicates_folded(db: Db, admin: User) -> None:
    # When a feature carries 20 tags of 50 characters (the bound), with repeats after trimming
    tags = [f"{n:02d}" + "x" * 48 for n in range(20)]
    created = _create(admin, tags=[*tags[:10], f"  {tags[0]}  ", *tags[10:]][:20])
    # Then it is stored with each tag once, in order
    assert created.status == 201, created.json
    assert created.json["tags"] == tags[:19]


def test_deleting_or_patching_a_feature_that_does_not_exist_is_404_and_writes_nothing(db: Db, admin: User) -> None:
    # When an admin deletes and patches ids of no feature (a random uuid, the nil uuid)
    for feature_id in (uuid.uuid4(), uuid.UUID(int=0)):
        deleted = api_call("DELETE", f"/admin/features/{feature_id}", as_user=admin)
        patched = api_call("PATCH", f"/admin/features/{feature_id}", body={"name": "x"}, as_user=admin)
        # Then 404 feature_not_found for both
        assert (deleted.status, deleted.error_code) == (404, "feature_not_found")
        assert (patched.status, patched.error_code) == (404, "feature_not_found")
    # And an id that is not a uuid at all is 422
    assert api_call("DELETE", "/admin/features/..%2F..%2Fadmin", as_user=admin).status in (404, 422)
    # And nothing was audited
    assert _count(db, "audit_logs") == 0


def test_two_admins_racing_for_one_name_get_one_feature_and_one_409(db: Db, admin: User) -> None:
    # Given eight concurrent creations of the same name (the local gateway serves on threads)
    barrier = threading.Barrier(8)
    answers: list[tuple[int, str | None]] = []

    def create() -> None:
        barrier.wait()
        response = _create(admin, name="Race")
        answers.append((response.status, response.error_code))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then one is created and the others are 409 feature_name_taken (never a 500); one row, one audit row
    assert sorted(answers, key=lambda a: a[0]) == [(201, None)] + [(409, "feature_name_taken")] * 7
    assert _count(db, "features") == 1 and _count(db, "audit_logs") == 1


def test_a_huge_workspace_is_read_in_bounded_pages(db: Db) -> None:
    # Given a workspace of 250 features
    with db() as uow:
        uow.session.execute(
            text(
                "INSERT INTO features (id, workspace_id, name, tags) "
                "SELECT gen_random_uuid(), 'big', 'feature-' || lpad(n::text, 4, '0'), ARRAY['t'] "
                "FROM generate_series(1, 250) AS n"
            )
        )
        uow.commit()
    # When anyone reads it without a limit, or asks for more than a page may hold
    default = _public("big")
    too_many = _public("big", "limit=101")
    # Then the default page is 20 and an oversized page is refused
    assert default.status == 200 and len(default.json["items"]) == 20 and default.json["next_cursor"]
    assert too_many.status == 422
    # And walking it at the largest page takes three pages, every feature once, in name order
    names: list[str] = []
    query = "limit=100"
    pages = 0
    while True:
        page = _public("big", query)
        assert page.status == 200 and len(page.json["items"]) <= 100
        names += [f["name"] for f in page.json["items"]]
        pages += 1
        if page.json["next_cursor"] is None:
            break
        query = f"limit=100&cursor={page.json['next_cursor']}"
    assert pages == 3 and names == [f"feature-{n:04d}" for n in range(1, 251)]
