"""Database URLs: whatever libpq form a user gives, pg8000 gets what it understands."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from tollgate.db import base
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


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a clock that stands still for a millisecond, then steps back a second
    clock = iter([1_700_000_000_000_000_000] * 500 + [1_699_999_999_000_000_000] * 500)
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    monkeypatch.setattr(base, "_last_millis", 0)  # no id made yet in this process
    # When ids are made
    ids = [new_id() for _ in range(1000)]
    # Then each sorts after the one before (as UUIDs and as PostgreSQL compares them, by bytes)
    assert ids == sorted(ids) and len(set(ids)) == 1000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    # And the timestamp never goes back with the clock
    assert {i.int >> 80 for i in ids} == {1_700_000_000_000}


def test_ids_stay_ordered_across_threads() -> None:
    # Given four threads making ids at once
    made: list[tuple[int, uuid.UUID]] = []
    order = threading.Lock()

    def make() -> None:
        for _ in range(2000):
            with order:  # records the order the ids were made in
                made.append((len(made), new_id()))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then the ids sort exactly in the order they were made
    ids = [i for _, i in sorted(made)]
    assert ids == sorted(ids) and len(set(ids)) == 8000


def test_a_full_counter_moves_on_to_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a millisecond whose counter is at its last value
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
    monkeypatch.setattr(base, "_last_millis", 0)
    first = new_id()
    monkeypatch.setattr(base, "_last_counter", (1 << 74) - 1)
    # When two more ids are made in it, Then they carry on in the next millisecond, still in order
    second, third = new_id(), new_id()
    assert first < second < third
    assert (second.int >> 80, third.int >> 80) == (1_700_000_000_001, 1_700_000_000_001)
