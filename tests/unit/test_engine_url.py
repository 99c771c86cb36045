"""Database URLs: whatever libpq form a user gives, pg8000 gets what it understands."""

from __future__ import annotations

import uuid

import pytest

from tollgate.db.base import new_id
from tollgate.db.engine import pg8000_url
from tollgate.errors import ConfigurationError


def test_a_tcp_url_keeps_its_parts() -> None:
    url = pg8000_url("postgresql://app:s3cret@db.internal:6432/tollgate")
    assert url.drivername == "postgresql+pg8000"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app", "s3cret", "db.internal", 6432, "tollgate",
    )  # fmt: skip


def test_a_socket_folder_becomes_pg8000s_unix_sock() -> None:
    url = pg8000_url("postgresql://postgres:@/tollgate?host=/tmp/pgdata")
    assert url.host is None
    assert url.query["unix_sock"] == "/tmp/pgdata/.s.PGSQL.5432"


def test_sslmode_require_asks_for_tls() -> None:
    assert pg8000_url("postgres://u@h/db?sslmode=require").query.get("ssl") == "true"


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        pg8000_url("mysql://u@h/db")


def test_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(isinstance(i, uuid.UUID) and i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == len(ids)
    # the first 48 bits are a millisecond clock: never decreasing across consecutive calls
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)
