"""Discounts through the real handlers: admin create/update/list (ADMIN only, audited, codes unique without
regard to case), bad input refused with nothing written, and validation that takes no use."""

# ruff: noqa: F403, F405
from __future__ import annotations

from sqlalchemy import text

from tests.commerce_orders_support import *
from tests.payments_support import *

BODY = {"code": "Spring25", "name": "Spring", "type": "percentage", "value": "25", "max_uses": 100}


def _audit_rows(db, action: str) -> list[dict]:
    with db() as uow:
        rows = uow.session.execute(
            text("SELECT * FROM audit_logs WHERE action = :a ORDER BY created_at"), {"a": action}
        ).mappings()
        return [dict(r) for r in rows]


def test_admins_create_update_and_list_discounts_with_an_audit_row_each(db, payments_env):
    # Given an admin, and a product to restrict a discount to
    admin = user(db, "ADMIN")
    item = product(db)
    # When the admin creates a discount restricted to the product
    created = api_call(
        "POST", "/admin/discounts", body={**BODY, "product_ids": [str(item.product_id)]}, as_user=admin, role="ADMIN"
    )
    # Then 201 with its uses, and an audit row with the new values
    assert created.status == 201, created.json
    assert created.json["type"] == "percentage" and created.json["value"] == "25.00"
    assert (created.json["current_uses"], created.json["reserved_uses"]) == (0, 0)
    assert created.json["product_ids"] == [str(item.product_id)]
    (row,) = _audit_rows(db, "discount.create")
    assert row["target_id"] == created.json["id"] and row["actor_id"] == admin
    # When the admin deactivates it and lifts the restriction
    patched = api_call(
        "PATCH", f"/admin/discounts/{created.json['id']}", body={"active": False, "product_ids": []}, as_user=admin,
        role="ADMIN",
    )  # fmt: skip
    assert patched.status == 200 and patched.json["active"] is False and patched.json["product_ids"] == []
    (change,) = _audit_rows(db, "discount.update")
    assert change["old_values"]["active"] == "True" and change["new_values"]["active"] == "False"
    # And the list shows it
    listed = api_call("GET", "/admin/discounts", as_user=admin, role="ADMIN")
    assert [d["code"] for d in listed.json["items"]] == ["Spring25"]


def test_a_code_taken_in_another_case_is_409(db, payments_env):
    admin = user(db, "ADMIN")
    assert api_call("POST", "/admin/discounts", body=BODY, as_user=admin, role="ADMIN").status == 201
    again = api_call("POST", "/admin/discounts", body={**BODY, "code": "SPRING25"}, as_user=admin, role="ADMIN")
    assert again.status == 409 and again.error_code == "discount_code_taken"
    assert count(db, "discounts") == 1


def test_users_and_support_may_not_manage_discounts(db, payments_env):
    for role in ("USER", "SUPPORT"):
        caller = user(db, role)
        assert api_call("POST", "/admin/discounts", body=BODY, as_user=caller, role=role).status == 403
        assert api_call("GET", "/admin/discounts", as_user=caller, role=role).status == 403
    assert count(db, "discounts") == 0 and count(db, "audit_logs", "action LIKE 'discount.%'") == 0


def test_bad_discounts_are_refused_with_a_code_and_nothing_written(db, payments_env):
    admin = user(db, "ADMIN")
    bad = [
        {**BODY, "value": "150"},  # a percentage over 100
        {**BODY, "type": "fixed_amount"},  # no currency
        {**BODY, "valid_from": "2026-12-02T00:00:00Z", "valid_until": "2026-12-01T00:00:00Z"},
        {**BODY, "code": "has space"},
        {**BODY, "unknown": 1},
    ]
    for body in bad:
        answer = api_call("POST", "/admin/discounts", body=body, as_user=admin, role="ADMIN")
        assert answer.status == 422 and answer.error_code, (body, answer.json)
    assert count(db, "discounts") == 0


def test_validate_answers_the_amount_or_the_reason_and_takes_no_use(db, payments_env):
    # Given a 20 % code with one use left, and a cart of 2 x 12.50
    item = product(db, amount="12.50")
    code_id = discount(db, "LASTONE", value=20, max_uses=1)
    buyer_id = user(db)
    cart = {"items": [{"price_id": str(item.price_id), "quantity": 2}]}
    # When the buyer asks, twice
    for _ in range(2):
        answer = api_call("POST", "/discounts/validate", body={"code": "lastone", **cart}, as_user=buyer_id)
        # Then it is valid for 5.00 each time, and no use was taken
        assert answer.status == 200 and answer.json == {"valid": True, "discount_amount": "5.00", "reason": None}
    assert uses(db, code_id) == (0, 0) and count(db, "discount_usages") == 0
    # And an unknown code, or one below its minimum, says why
    unknown = api_call("POST", "/discounts/validate", body={"code": "NOPE", **cart}, as_user=buyer_id).json
    assert unknown == {"valid": False, "discount_amount": "0.00", "reason": "unknown_code"}
    discount(db, "BIGCART", minimum_amount=100)
    small = api_call("POST", "/discounts/validate", body={"code": "BIGCART", **cart}, as_user=buyer_id).json
    assert small["valid"] is False and small["reason"] == "minimum_amount"
