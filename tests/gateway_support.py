"""Credentials for tests that go through the real authorizer over HTTP."""

from __future__ import annotations

import time
import uuid

from tollgate.db import UnitOfWork
from tollgate.services import identity

CREDIT_SCOPES = ("credits:read", "credits:write")


def api_key_for(user_id: uuid.UUID, scopes: tuple[str, ...] = CREDIT_SCOPES, name: str = "tests") -> str:
    """A live API key of `user_id`, made as a freshly signed-in session of that user would make it."""
    caller = identity.Caller(user_id, session_id=str(uuid.uuid4()), auth_time=int(time.time()))
    return identity.create_api_key(UnitOfWork(), caller, name, scopes=list(scopes)).key
