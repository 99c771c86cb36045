"""In AWS: provider secrets from Secrets Manager, and database credentials minted per connection."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from tollgate.config import Settings
from tollgate.db.engine import build_engine


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        import boto3

        yield boto3.client("secretsmanager", region_name="us-east-1")


def make_secret(client: Any, value: dict[str, Any]) -> str:
    arn: str = client.create_secret(Name=f"tollgate/test/{uuid.uuid4()}", SecretString=json.dumps(value))["ARN"]
    return arn


def test_provider_credentials_come_from_the_app_secret(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the app secret holds provider credentials and the environment names it
    arn = make_secret(aws, {"STRIPE_SECRET_KEY": "sk_test_from_secret", "STRIPE_WEBHOOK_SECRET": "whsec_secret"})
    monkeypatch.setenv("TOLLGATE_SECRETS_ARN", arn)
    # And the environment sets one of them itself
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_env")
    # When settings are read
    settings = Settings(_env_file=None)
    # Then the secret supplies what the environment does not, and the environment wins where both do
    assert settings.stripe_secret_key is not None
    assert settings.stripe_secret_key.get_secret_value() == "sk_test_from_secret"
    assert settings.stripe_webhook_secret is not None
    assert settings.stripe_webhook_secret.get_secret_value() == "whsec_env"


class _Captured(Exception):
    pass


def connection_parameters(settings: Settings) -> dict[str, Any]:
    """The parameters the engine would open a new connection with (the connection itself is not made)."""
    engine = build_engine(settings)
    seen: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def capture(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _Captured

    with pytest.raises(_Captured):
        engine.connect()
    engine.dispose()
    return seen


def test_iam_mode_mints_a_token_for_each_connection_over_tls(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_AUTH_MODE", "iam")
    monkeypatch.setenv("DB_HOST", "tollgate.proxy-abc.us-east-1.rds.amazonaws.com")
    monkeypatch.setenv("DB_USER", "app")
    params = connection_parameters(Settings(_env_file=None))
    assert params["host"] == "tollgate.proxy-abc.us-east-1.rds.amazonaws.com"
    assert params["user"] == "app"
    token = params["password"]
    assert token.startswith("tollgate.proxy-abc.us-east-1.rds.amazonaws.com:5432/?")
    assert "Action=connect" in token and "DBUser=app" in token and "X-Amz-Signature=" in token
    assert isinstance(params["ssl_context"], ssl.SSLContext)
    assert params["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_secret_mode_reads_the_database_secret(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    arn = make_secret(aws, {"username": "rds_user", "password": "from-secret"})
    monkeypatch.setenv("DB_AUTH_MODE", "secret")
    monkeypatch.setenv("DB_HOST", "proxy.internal")
    monkeypatch.setenv("DB_SECRET_ARN", arn)
    params = connection_parameters(Settings(_env_file=None))
    assert (params["user"], params["password"]) == ("rds_user", "from-secret")
    assert "ssl_context" in params


def test_proxy_modes_need_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.errors import ConfigurationError

    monkeypatch.setenv("DB_AUTH_MODE", "iam")
    monkeypatch.delenv("DB_HOST", raising=False)
    with pytest.raises(ConfigurationError):
        build_engine(Settings(_env_file=None))
