"""`row_view` fills a service's view from the same-named attributes of a row: overrides for renamed or derived
fields, JSON objects and arrays copied so a view never shares a mutable value with its row, and a mistake in the
field list is an error rather than a silently missing or extra value."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from tollgate.services.views import plain_json, row_view


@dataclasses.dataclass(frozen=True, slots=True)
class ItemView:
    id: uuid.UUID
    amount: Decimal
    label: str | None
    created_at: datetime
    metadata: dict[str, Any]


class Row:
    """Stands for an ORM row: plain attributes, a property, a column spelled `metadata_`, and more than the view
    shows."""

    def __init__(self, metadata: dict[str, Any]) -> None:
        self.id = uuid.uuid4()
        self.amount = Decimal("12.5000")
        self.created_at = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
        self.metadata_ = metadata
        self.secret = "never in a view"

    @property
    def label(self) -> str:
        return f"item {self.amount}"


class Tracked(dict[str, Any]):
    """A dict subclass, as a mutation-tracking JSON column hands out."""


def test_a_view_takes_the_same_named_attributes_and_the_overrides() -> None:
    # Given a row whose JSON column is spelled differently from the view's field
    row = Row({"source": "import"})
    # When a view is made from it, the renamed field given outright
    view = row_view(ItemView, row, metadata=plain_json(row.metadata_))
    # Then every field holds the row's value, of the same type (Decimal stays Decimal, datetimes stay aware) ...
    assert view == ItemView(
        id=row.id, amount=Decimal("12.5000"), label="item 12.5000", created_at=row.created_at,
        metadata={"source": "import"},
    )  # fmt: skip
    assert type(view.amount) is Decimal and view.created_at.tzinfo is UTC
    # ... and nothing the view does not declare
    assert not hasattr(view, "secret")


def test_an_override_wins_over_the_attribute_of_the_same_name() -> None:
    # Given a row with a label
    row = Row({})
    # When the view is made with a derived label
    view = row_view(ItemView, row, label=None, metadata={})
    # Then the override is what the view holds
    assert view.label is None and view.amount == row.amount


def test_json_values_are_copied_to_plain_dicts_and_lists_at_every_depth() -> None:
    # Given a row whose same-named attribute is a tracked dict holding a list of dicts
    @dataclasses.dataclass(frozen=True, slots=True)
    class Features:
        features: dict[str, Any]

    nested: dict[str, Any] = {"lines": [{"text": "100 credits"}], "count": 1}

    class FeatureRow:
        features = Tracked(nested)

    row = FeatureRow()
    # When a view is made from it
    view = row_view(Features, row)
    # Then the view's value is equal, plain, and shares no container with the row's
    assert view.features == nested and type(view.features) is dict
    assert view.features is not row.features
    assert view.features["lines"] is not nested["lines"]
    assert view.features["lines"][0] is not nested["lines"][0]
    # And changing the row's value afterwards leaves the view as it was
    row.features["lines"][0]["text"] = "changed"
    row.features["count"] = 2
    assert view.features == {"lines": [{"text": "100 credits"}], "count": 1}


def test_plain_json_keeps_scalars_and_copies_containers() -> None:
    # Given JSON scalars, and objects and arrays
    for scalar in (None, True, 3, 2.5, "text", Decimal("1.5")):
        # Then a scalar comes back as itself
        assert plain_json(scalar) is scalar
    source = [Tracked(a=[1, 2]), {"b": None}]
    copied = plain_json(source)
    # And containers come back equal, as plain dicts and lists, never the same objects
    assert copied == [{"a": [1, 2]}, {"b": None}]
    assert type(copied[0]) is dict and copied is not source and copied[0]["a"] is not source[0]["a"]


def test_an_override_naming_no_field_is_refused() -> None:
    # Given a row
    row = Row({})
    # When a view is asked for with an override the view does not declare (a typo, or a field since removed)
    with pytest.raises(TypeError, match="ItemView has no field metadata_, size"):
        row_view(ItemView, row, metadata={}, metadata_={}, size=3)


def test_a_field_the_row_does_not_have_is_an_error() -> None:
    # Given a row without a `metadata` attribute (it has `metadata_`)
    row = Row({})
    # When the view is made without the override, Then the missing attribute is an error, not a default
    with pytest.raises(AttributeError, match="metadata"):
        row_view(ItemView, row)


def test_a_view_is_frozen() -> None:
    # Given a view
    view = row_view(ItemView, Row({}), metadata={})
    # When a field is assigned, Then it is refused
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.label = "changed"  # type: ignore[misc]
