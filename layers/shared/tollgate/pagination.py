"""Cursor pagination for every list (`?cursor=&limit=` -> `{"items": [...], "next_cursor": ...}`).

Keyset pagination: a page is the rows after the sort key of the last row served, ordered by `keys` (the last one
unique, e.g. the id) ascending or descending; stable under inserts, and each page is an index range scan.

    page = keyset_page(session, select(Model), Model.created_at, Model.id, cursor=cursor, limit=limit)
    page.items       # the ORM objects (the statement selects one entity)
    page.next_cursor # None on the last page

A cursor is opaque to clients and signed: `<payload>.<mac>`, both url-safe base64. The payload records the type
of each key value as well as the value (`{"k": "tu", "v": [...]}`); the MAC is HMAC-SHA256 (first 128 bits) over
the list's scope (its table, key columns and direction) and the payload, with a key derived from the
deployment's cursor key (CURSOR_SIGNING_KEY) or, unset, its JWT signing key. Anything the server did not issue
for that list, tampered, truncated or of the wrong shape, is `InvalidCursor` (400 `invalid_cursor`), and it is
refused before any statement runs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import InstrumentedAttribute, Session

from tollgate.config import get_settings
from tollgate.errors import InvalidCursor, ValidationFailed
from tollgate.input_bounds import bounded_timestamp

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# The longest cursor the server issues is well under this (two keys: ~170 characters).
MAX_CURSOR_LENGTH = 512
MAC_BYTES = 16
_KEY_CONTEXT = b"tollgate pagination cursor v1"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def _load_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("not a timestamp")
    stamp = datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        raise ValueError("a cursor's timestamp carries its offset")
    return bounded_timestamp(stamp)


def _load_uuid(value: Any) -> uuid.UUID:
    if not isinstance(value, str):
        raise ValueError("not a UUID")
    return uuid.UUID(value)


def _load_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise ValueError("not a 64-bit integer")
    return value


def _load_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


# One letter per key type a cursor may carry: (python type, how it is written, how it is read back).
_TYPES: dict[str, tuple[type, Callable[[Any], Any], Callable[[Any], Any]]] = {
    "t": (datetime, lambda v: v.isoformat(), _load_time),
    "u": (uuid.UUID, str, _load_uuid),
    "i": (int, lambda v: v, _load_int),
    "s": (str, lambda v: v, _load_str),
}


def type_code(python_type: type) -> str:
    """The letter a cursor records for a key of `python_type` (bool is not a sort key)."""
    for code, (kind, _, _) in _TYPES.items():
        if issubclass(python_type, kind) and python_type is not bool:
            return code
    raise TypeError(f"no cursor encoding for {python_type.__name__}")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(scope: str, payload: str) -> bytes:
    # A key of its own, derived from CURSOR_SIGNING_KEY (in AWS: a secret that functions listing rows read instead
    # of the signing key) or else the signing key: a cursor MAC is never a valid token signature.
    cursor_key = get_settings().cursor_signing_key
    if cursor_key is not None:
        base = cursor_key.get_secret_value()
    else:  # no cursor key of its own (local use): derived from the JWT key; jwt is imported only here then
        from tollgate.auth.access_tokens import signing_key

        base = signing_key()
    key = hmac.new(base.encode(), _KEY_CONTEXT, hashlib.sha256).digest()
    return hmac.new(key, f"{scope}\x00{payload}".encode(), hashlib.sha256).digest()[:MAC_BYTES]


def encode_cursor(scope: str, values: Sequence[Any]) -> str:
    """A signed cursor carrying `values` (a sort key) for the list named by `scope`."""
    codes = "".join(type_code(type(v)) for v in values)
    written = [_TYPES[code][1](v) for code, v in zip(codes, values, strict=True)]
    payload = _b64(json.dumps({"k": codes, "v": written}, separators=(",", ":")).encode())
    return f"{payload}.{_b64(_mac(scope, payload))}"


def decode_cursor(cursor: str, scope: str, codes: str) -> tuple[Any, ...]:
    """The sort key `cursor` carries, if the server issued it for `scope` with keys of types `codes`."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH or not cursor.isascii():
            raise ValueError("not a cursor")
        payload, _, mac = cursor.partition(".")
        if not hmac.compare_digest(_unb64(mac), _mac(scope, payload)):
            raise ValueError("not signed by this deployment for this list")
        body = json.loads(_unb64(payload))
        if not isinstance(body, dict) or body.get("k") != codes:
            raise ValueError("the key types differ")
        values = body.get("v")
        if not isinstance(values, list) or len(values) != len(codes):
            raise ValueError("the key has the wrong length")
        return tuple(_TYPES[code][2](value) for code, value in zip(codes, values, strict=True))
    except (ValueError, binascii.Error, UnicodeError, TypeError, KeyError):
        raise InvalidCursor("the cursor is not one this list issued", details={"field": "cursor"}) from None


def check_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationFailed(f"limit must be 1-{MAX_LIMIT}", details={"field": "limit"})
    return limit


@dataclass(frozen=True, slots=True)
class Keyset:
    """How a list is ordered: its key columns and direction, which also name the cursors it accepts."""

    keys: tuple[InstrumentedAttribute[Any], ...]
    descending: bool = False

    @property
    def scope(self) -> str:
        columns = ",".join(f"{key.class_.__tablename__}.{key.key}" for key in self.keys)
        return f"{columns}:{'desc' if self.descending else 'asc'}"

    @property
    def codes(self) -> str:
        return "".join(type_code(key.type.python_type) for key in self.keys)

    def decode(self, cursor: str | None) -> tuple[Any, ...] | None:
        return decode_cursor(cursor, self.scope, self.codes) if cursor else None

    def after(self, values: tuple[Any, ...]) -> ColumnElement[bool]:
        # (k1, k2, ...) > (v1, v2, ...) spelled out, so it works for any column types and directions.
        clauses = []
        for i, key in enumerate(self.keys):
            equal = [self.keys[j] == values[j] for j in range(i)]
            beyond = key < values[i] if self.descending else key > values[i]
            clauses.append(and_(*equal, beyond))
        return or_(*clauses)

    def order(self) -> list[ColumnElement[Any]]:
        return [key.desc() if self.descending else key.asc() for key in self.keys]

    def cursor_of(self, row: Any) -> str:
        return encode_cursor(self.scope, [getattr(row, key.key) for key in self.keys])


def keyset_page(
    session: Session,
    statement: Select[Any],
    *keys: InstrumentedAttribute[Any],
    cursor: str | None = None,
    limit: int | None = None,
    descending: bool = False,
) -> Page[Any]:
    """One page of `statement`, ordered by `keys` (the last one unique, e.g. the id), after `cursor`.

    The cursor and the limit are checked before the statement runs."""
    keyset = Keyset(keys, descending)
    limit = check_limit(limit)
    after = keyset.decode(cursor)
    if after is not None:
        statement = statement.where(keyset.after(after))
    rows: Sequence[Any] = session.execute(statement.order_by(*keyset.order()).limit(limit + 1)).scalars().all()
    items = list(rows[:limit])
    next_cursor = keyset.cursor_of(items[-1]) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)
