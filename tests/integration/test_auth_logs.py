# ruff: noqa: F811  (pytest fixtures imported from auth_helpers are redefined as parameters)
"""Nothing secret reaches the logs: not passwords, not tokens, not codes - even with event logging turned on."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env, bearer  # noqa: F401
from tests.support import api_call, project_gateway
from tollgate.observability import logger


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """Every record the shared powertools logger emits, formatted exactly as CloudWatch would get it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    std_logger = logger._logger
    previous = std_logger.level
    std_logger.addHandler(handler)
    std_logger.setLevel(logging.DEBUG)
    yield stream
    std_logger.removeHandler(handler)
    std_logger.setLevel(previous)


def test_secrets_never_reach_the_logs(auth_env: AuthEnv, log_stream: io.StringIO) -> None:
    # Given event logging switched on by the environment, and debug level
    auth_env.set(POWERTOOLS_LOGGER_LOG_EVENT="true", POWERTOOLS_LOG_LEVEL="DEBUG")
    # When a user registers, fails and succeeds at login, uses 2FA, refreshes and creates an API key
    email = auth_env.register_verified()
    api_call("POST", "/auth/login", body={"email": email, "password": "wrong password here"})
    tokens = auth_env.login(email)
    key = api_call("POST", "/auth/api-keys", headers=bearer(tokens["access_token"]), through_authorizer=True,
                   body={"name": "k"}).json["key"]  # fmt: skip
    api_call("POST", "/auth/two-factor/email/enable", headers=bearer(tokens["access_token"]), through_authorizer=True)
    challenge = auth_env.login(email)["challenge_id"]
    code = auth_env.code_from(email)
    done = api_call("POST", "/auth/login/two-factor", body={"challenge_id": challenge, "code": code}).json
    api_call("POST", "/auth/token/refresh", body={"refresh_token": done["refresh_token"]})
    api_call("GET", "/auth/me", headers={"x-api-key": key}, through_authorizer=True)
    api_call("GET", "/auth/me", headers=bearer(tokens["access_token"] + "x"), through_authorizer=True)  # denied: logs
    # Then no log record holds any of them (and log records were indeed written and captured)
    records = log_stream.getvalue()
    assert '"message":"denied"' in records
    for secret in (PASSWORD, "wrong password here", tokens["access_token"], tokens["refresh_token"], key, code,
                   done["refresh_token"]):  # fmt: skip
        assert secret not in records
    assert project_gateway().runner.module("AuthFunction")  # the handler really ran in this process
