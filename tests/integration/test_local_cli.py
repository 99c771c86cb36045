"""The CLI as a newcomer meets it: quiet by default, complete help, friendly errors, a database that stays up,
and a first purchase that works with no `.env` (local webhook secrets, a pack spendable at once)."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from tests.support import api_call, make_user
from tollgate.config import get_settings
from tollgate.db import UnitOfWork
from tollgate_local import TEMPLATE_PATH
from tollgate_local.cli import build_parser, main
from tollgate_local.gateway import make_server, serve_in_thread
from tollgate_local.local_secrets import WEBHOOK_SECRET_FILES, ensure_webhook_secrets
from tollgate_local.seed import DEFAULT_SEED_FILE, LOADERS

SECRET_NAMES = tuple(WEBHOOK_SECRET_FILES)


@pytest.fixture
def local_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A data folder of its own and no webhook secrets configured, as on a fresh clone without `.env`."""
    monkeypatch.setenv("TOLLGATE_DATA_DIR", str(tmp_path / "state"))
    for name in SECRET_NAMES:
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield tmp_path / "state"
    monkeypatch.undo()  # also drops the secrets the CLI put into the environment
    get_settings.cache_clear()


def test_help_lists_every_command() -> None:
    parser = build_parser()
    text = parser.format_help()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = set(commands.choices)
    assert {"serve", "migrate", "invoke", "schedules", "seed", "db-url", "psql", "openapi", "webhooks", "rag"} <= names
    for name in names:
        assert f"    {name} " in text, name


def test_a_command_is_quiet_by_default_and_verbose_with_v(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str]
) -> None:
    # When a command that migrates runs without -v
    assert main(["--template", str(TEMPLATE_PATH), "migrate"]) == 0
    out = capsys.readouterr()
    # Then only its result is printed: no Alembic or database INFO lines, no metrics warning
    assert out.out.strip() == "database is at the requested revision"
    assert "INFO" not in out.err and "No application metrics" not in out.err
    # And -v brings the INFO logs back
    assert main(["-v", "--template", str(TEMPLATE_PATH), "migrate"]) == 0
    assert logging.getLogger().getEffectiveLevel() == logging.INFO
    main(["--template", str(TEMPLATE_PATH), "schedules"])  # back to quiet for the tests that follow
    capsys.readouterr()


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{}", "failed on this event: KeyError"), ("{not json", "is not JSON"), (None, "cannot read the event file")],
)
def test_invoke_with_a_bad_event_explains_instead_of_a_traceback(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None,
    expected: str,
) -> None:  # fmt: skip
    # Given an event file a route handler cannot take
    event = tmp_path / "event.json"
    if content is not None:
        event.write_text(content)
    # When it is invoked
    code = main(["--template", str(TEMPLATE_PATH), "invoke", "CreditsFunction", "--event", str(event)])
    err = capsys.readouterr().err
    # Then the CLI says what is wrong, in one message, without a traceback
    assert code in {1, 2} and expected in err and "Traceback" not in err


def test_schedules_line_up_in_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--template", str(TEMPLATE_PATH), "schedules"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 5
    starts = {line.index(" cron(") if " cron(" in line else line.index(" rate(") for line in lines}
    assert len(starts) == 1, lines  # every expression starts in the same column
    assert len({line.index("next: ") for line in lines}) == 1


def test_psql_keeps_the_database_up_while_it_runs(tmp_path: Path) -> None:
    """Given a fresh data folder, `tollgate psql -c ...` starts the embedded database and queries it."""
    env = {"TOLLGATE_DATA_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, "-m", "tollgate_local.cli", "psql", "--", "-tAc", "SELECT count(*) FROM alembic_version"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert int(completed.stdout.strip().splitlines()[-1]) >= 1  # migrated, and reachable while psql ran
    assert "INFO" not in completed.stderr


def test_db_url_without_keep_says_the_database_stops(tmp_path: Path) -> None:
    env = {"TOLLGATE_DATA_DIR": str(tmp_path / "state"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    completed = subprocess.run(
        [sys.executable, "-m", "tollgate_local.cli", "db-url"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert completed.returncode == 0
    assert completed.stdout.startswith("postgresql://") and "--keep" in completed.stderr


def _secret_values() -> dict[str, str]:
    settings = get_settings().model_dump()
    return {name: settings[name.lower()].get_secret_value() for name in SECRET_NAMES}


def test_local_webhook_secrets_are_made_once_and_shared(local_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # When two processes (server and sender) ask for the secrets, each starting with none configured
    first = ensure_webhook_secrets()
    values = _secret_values()
    for name in SECRET_NAMES:
        monkeypatch.delenv(name)
    get_settings.cache_clear()
    second = ensure_webhook_secrets()
    # Then both read the same files (mode 0600) and get the same secrets, in each provider's format
    assert first == second and set(first) == set(SECRET_NAMES) and _secret_values() == values
    assert {path.stat().st_mode & 0o777 for path in first.values()} == {0o600}
    assert values["STRIPE_WEBHOOK_SECRET"].startswith("whsec_") and values["CLERK_WEBHOOK_SECRET"].startswith("whsec_")
    assert 32 <= len(values["ASAAS_WEBHOOK_TOKEN"]) <= 255  # Asaas's bounds for its access token
    assert len(set(values.values())) == len(SECRET_NAMES)  # one distinct secret per provider


def test_a_configured_secret_wins_over_the_local_file(local_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from_env")
    get_settings.cache_clear()
    assert "STRIPE_WEBHOOK_SECRET" not in ensure_webhook_secrets()
    assert get_settings().stripe_webhook_secret.get_secret_value() == "whsec_from_env"  # type: ignore[union-attr]


def _load_catalogue() -> None:
    # The shipped seed file's catalogue sections (the knowledge base is left out: it only costs time here).
    from tollgate_local import seed_catalogue  # noqa: F401  (registers the loaders)

    data = yaml.safe_load(DEFAULT_SEED_FILE.read_text())
    with UnitOfWork() as uow:
        for section in ("plans", "credit_packs", "feature_costs", "credit_settings"):
            LOADERS[section](uow, data[section])
        uow.commit()


def test_the_readme_first_purchase_works_with_no_env_file(
    db: Callable[[], UnitOfWork], local_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Given the seeded catalogue, a user with no credits and a local server with no webhook secret configured,
    when `tollgate webhooks send stripe checkout.session.completed` buys the Starter pack, then the pack's
    credits are available at once and the first spend succeeds."""
    _load_catalogue()
    with db() as uow:
        user = make_user(uow.session, email=f"buyer-{uuid.uuid4().hex[:8]}@example.com")
        uow.commit()
        user_id, email = user.id, user.email
    ensure_webhook_secrets()  # what `tollgate serve` does at start
    server = make_server(TEMPLATE_PATH, "127.0.0.1", 0)
    serve_in_thread(server)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/stripe"
        get_settings.cache_clear()
        code = main(["webhooks", "send", "stripe", "checkout.session.completed", "--user", email,
                     "--pack", "Starter pack", "--url", url])  # fmt: skip
        out = capsys.readouterr().out
        assert code == 0, out
        assert "-> 200" in out
    finally:
        server.shutdown()
        server.server_close()
    balance = api_call("GET", "/credits/balance", as_user=user_id).json
    assert Decimal(balance["available"]) == Decimal("100") and balance["bonus_auto_use_locked"] is True
    spend = api_call("POST", "/credits/usage", body={"operation": "chat", "quantity": 1}, as_user=user_id)
    assert spend.status == 201, spend.json
    assert Decimal(api_call("GET", "/credits/balance", as_user=user_id).json["available"]) == Decimal("99")


def test_seeding_leaves_an_admin_choice_of_the_toggle_alone(db: Callable[[], UnitOfWork]) -> None:
    from sqlalchemy import text

    from tollgate_local.seed_catalogue import load_credit_settings

    with db() as uow:
        uow.session.execute(text("INSERT INTO admin_settings (id) VALUES (1) ON CONFLICT DO NOTHING"))
        admin = make_user(uow.session, role="ADMIN")
        uow.commit()
    # Given an admin who opted in to the per-user toggle
    opted = api_call("PUT", "/admin/credits/settings", body={"allow_bonus_auto_use_toggle": True}, as_user=admin)
    assert opted.status == 200
    # When the seed runs again, then the choice stands
    with db() as uow:
        assert load_credit_settings(uow, {"allow_bonus_auto_use_toggle": False}) == 0
        uow.commit()
    assert api_call("GET", "/admin/credits/settings", as_user=admin).json == {"allow_bonus_auto_use_toggle": True}
