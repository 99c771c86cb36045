"""Building the views services answer: frozen dataclasses of plain values, made inside the unit of work from the
rows it read, so no ORM row outlives its session.

    row_view(PlanView, plan)  # every field from the same-named attribute of the row
    row_view(ChunkView, chunk, metadata=plain_json(chunk.metadata_))  # a renamed or derived field given outright
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

View = TypeVar("View", bound="DataclassInstance")


def plain_json(value: Any) -> Any:
    """A JSON value with its objects and arrays copied to plain dicts and lists: a view never shares a mutable
    value with the row it was made from."""
    if isinstance(value, Mapping):
        return {key: plain_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_json(item) for item in value]
    return value


def row_view(view_type: type[View], row: object, **overrides: Any) -> View:
    """A `view_type` whose fields are `overrides` where given, else the same-named attributes of `row` (dicts and
    lists copied by `plain_json`). An override naming no field of the view is an error, not silently dropped."""
    names = [f.name for f in fields(view_type) if f.init]
    unknown = overrides.keys() - set(names)
    if unknown:
        raise TypeError(f"{view_type.__name__} has no field {', '.join(sorted(unknown))}")
    values = {name: overrides[name] if name in overrides else plain_json(getattr(row, name)) for name in names}
    return view_type(**values)
