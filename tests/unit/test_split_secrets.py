"""Each function reads only the secrets it needs: several secrets (TOLLGATE_SECRETS_ARNS) merged into one settings
object, the single TOLLGATE_SECRETS_ARN still honoured, and pagination cursors signed by a key of their own."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tollgate.config import Settings, get_settings
from tollgate.errors import InvalidCursor
from tollgate.pagination import decode_cursor, encode_cursor


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from moto import mock_aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET", "JWT_SIGNING_KEY", "CURSOR_SIGNING_KEY", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("TOLLGATE_SECRETS_ARN", raising=False)
    with mock_aws():
        import boto3

        yield boto3.client("secretsmanager", region_name="us-east-1")


def make_secret(client: Any, value: dict[str, Any]) -> str:
    arn: str = client.create_secret(Name=f"tollgate/test/{uuid.uuid4()}", SecretString=json.dumps(value))["ARN"]
    return arn


def test_the_listed_secrets_are_merged(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a signing secret and a payments secret, both named in TOLLGATE_SECRETS_ARNS
    signing = make_secret(aws, {"JWT_SIGNING_KEY": "k" * 40})
    payments = make_secret(aws, {"STRIPE_SECRET_KEY": "sk_test_split"})
    monkeypatch.setenv("TOLLGATE_SECRETS_ARNS", f"{signing}, {payments}")
    # When settings are read
    settings = Settings(_env_file=None)
    # Then each secret supplies its own values
    assert settings.jwt_signing_key is not None and settings.jwt_signing_key.get_secret_value() == "k" * 40
    assert settings.stripe_secret_key is not None and settings.stripe_secret_key.get_secret_value() == "sk_test_split"
    assert settings.secrets_arns == (signing, payments)


def test_a_function_reads_nothing_it_was_not_given(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a payments secret that exists but is not named for this function
    make_secret(aws, {"STRIPE_SECRET_KEY": "sk_test_other"})
    cursor = make_secret(aws, {"CURSOR_SIGNING_KEY": "c" * 40})
    monkeypatch.setenv("TOLLGATE_SECRETS_ARNS", cursor)
    # When settings are read
    settings = Settings(_env_file=None)
    # Then only the named secret's values are there
    assert settings.cursor_signing_key is not None
    assert settings.stripe_secret_key is None and settings.jwt_signing_key is None


def test_the_single_secret_arn_still_works_beside_the_list(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an existing deployment's TOLLGATE_SECRETS_ARN and a new list naming another secret
    old = make_secret(aws, {"STRIPE_WEBHOOK_SECRET": "whsec_old"})
    new = make_secret(aws, {"STRIPE_SECRET_KEY": "sk_test_new"})
    monkeypatch.setenv("TOLLGATE_SECRETS_ARN", old)
    monkeypatch.setenv("TOLLGATE_SECRETS_ARNS", new)
    # When settings are read
    settings = Settings(_env_file=None)
    # Then both secrets contribute, and the environment still wins over either
    assert settings.stripe_webhook_secret is not None
    assert settings.stripe_webhook_secret.get_secret_value() == "whsec_old"
    assert settings.stripe_secret_key is not None and settings.stripe_secret_key.get_secret_value() == "sk_test_new"
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_env")
    overridden = Settings(_env_file=None).stripe_secret_key
    assert overridden is not None and overridden.get_secret_value() == "sk_test_env"


def test_two_secrets_disagreeing_on_a_value_refuse_to_start(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given two secrets that set the same key to different values
    first = make_secret(aws, {"STRIPE_SECRET_KEY": "sk_test_one"})
    second = make_secret(aws, {"STRIPE_SECRET_KEY": "sk_test_two"})
    monkeypatch.setenv("TOLLGATE_SECRETS_ARNS", f"{first},{second}")
    # When settings are read, Then they refuse, naming the key and neither value
    with pytest.raises(ValueError, match="STRIPE_SECRET_KEY") as refused:
        Settings(_env_file=None)
    assert "sk_test_one" not in str(refused.value) and "sk_test_two" not in str(refused.value)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("JWT_SIGNING_KEY", "j" * 40)
    monkeypatch.delenv("CURSOR_SIGNING_KEY", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


def test_cursors_are_signed_with_the_cursor_key_when_one_is_given(keys: pytest.MonkeyPatch) -> None:
    # Given a cursor issued by a function that holds only the signing key (locally, the default)
    by_signing_key = encode_cursor("test_list", [7])
    assert decode_cursor(by_signing_key, "test_list", "i") == (7,)
    # When the deployment gives functions a cursor key of their own
    keys.setenv("CURSOR_SIGNING_KEY", "c" * 40)
    get_settings.cache_clear()
    by_cursor_key = encode_cursor("test_list", [7])
    # Then cursors are signed with it (a different MAC) and verify with it alone
    assert by_cursor_key != by_signing_key
    assert decode_cursor(by_cursor_key, "test_list", "i") == (7,)
    with pytest.raises(InvalidCursor):
        decode_cursor(by_signing_key, "test_list", "i")
    # And a function with no signing key at all can still list
    keys.delenv("JWT_SIGNING_KEY")
    get_settings.cache_clear()
    assert decode_cursor(by_cursor_key, "test_list", "i") == (7,)
