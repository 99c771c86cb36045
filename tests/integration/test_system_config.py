"""System config: admins list and set typed settings (known keys have fixed types and bounds; a refused value
writes nothing), every change is audited, the accessor's per-container cache shows a change made elsewhere only
after SYSTEM_CONFIG_CACHE_SECONDS, and allow_bonus_auto_use_toggle is one value behind both of its routes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import text

from tests.credits_support import funded_user
from tests.support import api_call, make_user
from tollgate import system_config
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate.models import User

CACHE_SECONDS = 1.0


def _user(db: Callable[[], UnitOfWork], role: str = "ADMIN") -> User:
    with db() as uow:
        user = make_user(uow.session, role=role)
        uow.commit()
        return user


def _put(admin: User, key: str, value: Any, type_: str, **extra: Any) -> Any:
    body = {"value": value, "type": type_, **extra}
    return api_call("PUT", f"/admin/system-config/{key}", body=body, as_user=admin)


def _listed(admin: User, query: str = "") -> dict[str, Any]:
    response = api_call("GET", "/admin/system-config", query=query, as_user=admin)
    assert response.status == 200, response.json
    return response.json


def _count(db: Callable[[], UnitOfWork], sql: str) -> int:
    with db() as uow:
        return int(uow.session.execute(text(sql)).scalar_one())


@pytest.fixture
def short_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[float]:
    monkeypatch.setenv("SYSTEM_CONFIG_CACHE_SECONDS", str(CACHE_SECONDS))
    get_settings.cache_clear()
    system_config.forget()
    yield CACHE_SECONDS
    monkeypatch.undo()
    get_settings.cache_clear()
    system_config.forget()


def test_known_keys_are_listed_with_their_typed_defaults(db):
    # Given a fresh deployment, When an admin lists the settings
    items = {i["key"]: i for i in _listed(_user(db))["items"]}
    # Then every known key is there, with its type and default (the toggle as admin_settings holds it)
    assert {k: (i["type"], i["value"]) for k, i in items.items()} == {
        "allow_bonus_auto_use_toggle": ("boolean", False),
        "support_goodwill_cap": ("number", "100"),
        "support_goodwill_daily_cap": ("number", "1000"),
        "support_inbox_email": ("string", ""),
    }
    assert items["support_goodwill_cap"]["is_default"] and items["support_inbox_email"]["is_default"]


def test_an_admin_sets_values_of_each_type_and_each_change_is_audited(db):
    admin = _user(db)
    # When an admin sets a known number and unknown keys of each type
    cap = _put(admin, "support_goodwill_cap", 250.5, "number")
    assert cap.status == 200 and (cap.json["value"], cap.json["is_default"]) == ("250.5", False)
    assert _put(admin, "support_goodwill_cap", "0250.50", "number").json["value"] == "250.5"  # stored canonical
    assert _put(admin, "feature.banner", "Maintenance at 02:00", "string", description="the top banner").status == 200
    assert _put(admin, "feature.beta", True, "boolean").status == 200
    assert _put(admin, "feature.limits", {"chat": [1, 2.5], "on": True}, "json").json["value"] == {
        "chat": [1, "2.5"],
        "on": True,
    }
    # Then the list shows them by key, and reads back typed through the accessor
    items = {i["key"]: i for i in _listed(admin)["items"]}
    assert items["feature.banner"]["description"] == "the top banner"
    assert items["feature.beta"]["value"] is True and items["feature.beta"]["updated_by"] == str(admin.id)
    with db() as uow:
        assert system_config.get(uow.session, "support_goodwill_cap", max_age=0) == Decimal("250.5")
        assert system_config.get(uow.session, "feature.limits", max_age=0) == {"chat": [1, Decimal("2.5")], "on": True}
        assert system_config.get(uow.session, "no.such.key", max_age=0) is None
        rows = uow.session.execute(
            text(
                "SELECT old_values, new_values FROM audit_logs WHERE action = 'system_config.update' "
                "AND target_id = 'support_goodwill_cap' ORDER BY created_at, id"
            )
        ).all()
    # And each change was audited with the value it replaced
    assert [(r.old_values["value"], r.new_values["value"]) for r in rows] == [("100", "250.5"), ("250.5", "250.5")]
    assert rows[0].old_values["default"] is True


@pytest.mark.parametrize(
    ("key", "value", "type_"),
    [
        ("support_goodwill_cap", "100", "string"),  # a known key's type is fixed
        ("support_goodwill_cap", True, "number"),
        ("support_goodwill_cap", -1, "number"),  # outside its bounds
        ("support_goodwill_cap", 1_000_001, "number"),
        ("support_goodwill_cap", "1e3", "number"),
        ("allow_bonus_auto_use_toggle", "yes", "boolean"),
        ("support_inbox_email", "not an address", "string"),
        ("feature.flag", 1, "boolean"),
        ("feature.name", 5, "string"),
        ("feature.count", "many", "number"),
        ("feature.count", None, "number"),
        ("Bad-Key", "x", "string"),
        ("feature.name", "x", "yaml"),
    ],
)
def test_a_value_not_of_its_type_is_refused_and_nothing_is_written(db, key, value, type_):
    # Given an admin, When a value that does not match its type or bounds is put, Then 422 and nothing is written
    response = _put(_user(db), key, value, type_)
    assert response.status == 422 and response.error_code in {"invalid_config_value", "validation_error"}
    assert _count(db, "SELECT count(*) FROM system_config") == 0
    assert _count(db, "SELECT count(*) FROM audit_logs") == 0
    assert _count(db, "SELECT count(*) FROM admin_settings WHERE allow_bonus_auto_use_toggle") == 0


def test_only_admins_read_or_change_settings(db):
    # Given a user and a support agent, When they call the settings routes, Then 403 and nothing is written
    for role in ("USER", "SUPPORT"):
        caller = _user(db, role)
        assert api_call("GET", "/admin/system-config", as_user=caller).status == 403
        assert _put(caller, "support_goodwill_cap", "1000", "number").status == 403
    assert _count(db, "SELECT count(*) FROM system_config") == 0


def test_the_list_pages_by_key(db):
    # Given stored keys beside the known ones
    admin = _user(db)
    for name in ("a.one", "b.two", "z.last"):
        assert _put(admin, name, name, "string").status == 200
    # When an admin pages two at a time, Then every key comes once, in key order
    seen: list[str] = []
    query = "limit=2"
    while True:
        page = _listed(admin, query)
        seen += [i["key"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        query = f"limit=2&cursor={page['next_cursor']}"
    assert seen == sorted(seen) == [
        "a.one", "allow_bonus_auto_use_toggle", "b.two", "support_goodwill_cap", "support_goodwill_daily_cap",
        "support_inbox_email", "z.last",
    ]  # fmt: skip
    assert api_call("GET", "/admin/system-config", query="cursor=forged", as_user=admin).status == 400


def test_a_change_elsewhere_is_seen_after_the_cache_time_not_before(db, short_cache):
    # Given this container has read the cap (the default, 100)
    with db() as uow:
        assert system_config.get_number(uow.session, system_config.SUPPORT_GOODWILL_CAP) == Decimal(100)
    read_at = time.monotonic()
    # When another container changes it (straight in the database: this container's cache is not told)
    with db() as uow:
        uow.session.execute(
            text("INSERT INTO system_config (id, key, value, type) VALUES (gen_random_uuid(), :k, '7', 'number')"),
            {"k": system_config.SUPPORT_GOODWILL_CAP},
        )
        uow.commit()
    # Then, inside the cache time, this container still reads the old value
    with db() as uow:
        assert system_config.get_number(uow.session, system_config.SUPPORT_GOODWILL_CAP) == Decimal(100)
    assert time.monotonic() - read_at < short_cache
    # And after it, the new one
    time.sleep(short_cache - (time.monotonic() - read_at) + 0.05)
    with db() as uow:
        assert system_config.get_number(uow.session, system_config.SUPPORT_GOODWILL_CAP) == Decimal(7)


def test_a_change_in_this_container_is_seen_at_once(db, short_cache):
    # Given this container has read the cap
    admin = _user(db)
    with db() as uow:
        assert system_config.get_number(uow.session, system_config.SUPPORT_GOODWILL_CAP) == Decimal(100)
    # When an admin changes it through this container
    assert _put(admin, "support_goodwill_cap", "9", "number").status == 200
    # Then it is read at once, inside the cache time
    with db() as uow:
        assert system_config.get_number(uow.session, system_config.SUPPORT_GOODWILL_CAP) == Decimal(9)


def test_bonus_auto_use_toggle_is_one_value_behind_both_routes(db):
    # Given an admin and a user with credits
    admin = _user(db)
    user = funded_user(db, "5")
    # When the admin allows the toggle through system config
    put = _put(admin, "allow_bonus_auto_use_toggle", True, "boolean")
    assert put.status == 200 and put.json["value"] is True
    # Then the credit policy route says so, and users may choose
    assert api_call("GET", "/admin/credits/settings", as_user=admin).json == {"allow_bonus_auto_use_toggle": True}
    assert api_call("PATCH", "/credits/settings", body={"bonus_auto_use": True}, as_user=user).status == 200
    # When the credit policy route turns it off
    off = api_call("PUT", "/admin/credits/settings", body={"allow_bonus_auto_use_toggle": False}, as_user=admin)
    assert off.status == 200
    # Then system config shows it off, and users may no longer choose
    items = {i["key"]: i for i in _listed(admin)["items"]}
    assert (items["allow_bonus_auto_use_toggle"]["value"], items["allow_bonus_auto_use_toggle"]["is_default"]) == (
        False,
        False,
    )
    assert api_call("PATCH", "/credits/settings", body={"bonus_auto_use": False}, as_user=user).status == 403
    # And no separate copy exists: nothing was stored in system_config, both changes audited as the policy's
    assert _count(db, "SELECT count(*) FROM system_config") == 0
    with db() as uow:
        changes = uow.session.execute(
            text(
                "SELECT old_values, new_values FROM audit_logs WHERE action = 'credits.bonus_auto_use_policy' "
                "ORDER BY created_at, id"
            )
        ).all()
    key = "allow_bonus_auto_use_toggle"
    assert [(c.old_values[key], c.new_values[key]) for c in changes] == [(False, True), (True, False)]
