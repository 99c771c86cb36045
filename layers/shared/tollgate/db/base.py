"""The declarative base, naming conventions and key generation shared by every model."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

from sqlalchemy import DateTime, MetaData, Uuid, func
from sqlalchemy.orm import DeclarativeBase, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


_RAND_A_B = (1 << 74) - 1  # the 74 bits after the timestamp that are not version or variant
_id_lock = threading.Lock()
_last_millis = 0
_last_counter = 0


def new_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): made in Python (no sequence, so RDS Proxy never pins a session) and time-ordered, so
    primary-key indexes grow at their right edge instead of splitting pages at random.

    Within one process ids are strictly increasing (RFC 9562 method 1, a counter seeded at random each
    millisecond), so lists ordered by id are in creation order even for rows made in the same millisecond,
    and a clock stepping back never makes an id sort before an earlier one."""
    global _last_millis, _last_counter
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        if millis > _last_millis:
            # A fresh random start with its top bit clear leaves 2**73 increments before the counter overflows.
            counter = int.from_bytes(os.urandom(10), "big") & (_RAND_A_B >> 1)
        else:
            millis, counter = _last_millis, _last_counter + 1
            if counter > _RAND_A_B:
                millis, counter = millis + 1, 0
        _last_millis, _last_counter = millis, counter
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= (counter >> 62) << 64  # rand_a: the counter's top 12 bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= counter & ((1 << 62) - 1)  # rand_b: its low 62 bits
    return uuid.UUID(int=value)


def utcnow() -> datetime:
    return datetime.now(UTC)


UUIDPk = Annotated[uuid.UUID, mapped_column(Uuid, primary_key=True, default=new_id)]
CreatedAt = Annotated[
    datetime,
    mapped_column(DateTime(timezone=True), nullable=False, default=utcnow, server_default=func.now()),
]
UpdatedAt = Annotated[
    datetime,
    mapped_column(DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow, server_default=func.now()),
]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}
