"""Cursor pagination for every list (`?cursor=&limit=` -> `{"items": [...], "next_cursor": ...}`).

A cursor is opaque to clients: url-safe base64 of the sort key of the last item served (by default
`(created_at, id)`). Keyset pagination: stable under inserts, and each page is an index range scan.

    page = keyset_page(session, select(Model), Model.created_at, Model.id, cursor=cursor, limit=limit)
    page.items       # the ORM objects (the statement selects one entity)
    page.next_cursor # None on the last page
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from tollgate.errors import ValidationFailed

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _dump(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"u": str(value)}
    return value


def _load(value: Any) -> Any:
    if isinstance(value, dict):
        if "t" in value:
            return datetime.fromisoformat(value["t"])
        if "u" in value:
            return uuid.UUID(value["u"])
    return value


def encode_cursor(*values: Any) -> str:
    raw = json.dumps([_dump(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> tuple[Any, ...]:
    """The sort key a cursor carries, or ValidationFailed (422) for anything that is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != size:
            raise ValueError("wrong shape")
        return tuple(_load(v) for v in values)
    except (ValueError, binascii.Error, UnicodeDecodeError, TypeError, KeyError):
        raise ValidationFailed("the cursor is not valid", details={"field": "cursor"}) from None


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be 1-{MAX_LIMIT}", details={"field": "limit"})
    return limit


def keyset_page(
    session: Session,
    statement: Select[Any],
    *keys: InstrumentedAttribute[Any],
    cursor: str | None = None,
    limit: int | None = None,
    descending: bool = False,
) -> Page[Any]:
    """One page of `statement`, ordered by `keys` (the last one unique, e.g. the id), after `cursor`."""
    limit = check_limit(limit)
    if cursor:
        after = decode_cursor(cursor, len(keys))
        # (k1, k2, ...) > (v1, v2, ...) spelled out, so it works for any column types and directions.
        clauses = []
        for i, key in enumerate(keys):
            equal = [keys[j] == after[j] for j in range(i)]
            beyond = key < after[i] if descending else key > after[i]
            clauses.append(and_(*equal, beyond))
        statement = statement.where(or_(*clauses))
    order = [key.desc() if descending else key.asc() for key in keys]
    rows: Sequence[Any] = session.execute(statement.order_by(*order).limit(limit + 1)).scalars().all()
    items = list(rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(*(getattr(last, key.key) for key in keys))
    return Page(items=items, next_cursor=next_cursor)
