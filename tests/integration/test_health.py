"""GET /health: 200 with the schema version while the database answers, 503 when it does not."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.conftest import use_database
from tests.support import api_call
from tollgate.db import UnitOfWork
from tollgate_local.migrations import current_heads


def test_health_is_ok_with_the_schema_version(db: Callable[[], UnitOfWork]) -> None:
    response = api_call("GET", "/health")
    assert response.status == 200
    body = response.json
    assert body["status"] == "ok" and body["database"] == "ok"
    assert set(body["schema_version"].split(",")) == set(current_heads())


@pytest.fixture
def database_down(database_url: str) -> Iterator[None]:
    # Nothing listens on port 1: connecting fails at once, as with a stopped database.
    use_database("postgresql://tollgate:x@127.0.0.1:1/tollgate")
    yield
    use_database(database_url)


def test_health_is_503_when_the_database_is_unreachable(database_down: None) -> None:
    response = api_call("GET", "/health")
    assert response.status == 503
    assert response.error_code == "dependency_unavailable"
    assert response.json["error"]["details"] == {"database": "down"}
