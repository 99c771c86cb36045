"""The `tollgate` CLI: invoke a function or a schedule by name, list schedules, seed, migrate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tollgate.db import UnitOfWork
from tollgate_local.cli import main

TEMPLATE = str(Path(__file__).resolve().parents[1] / "fixtures" / "gateway_template.yaml")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["--template", TEMPLATE, *argv])
    return code, capsys.readouterr().out


def test_invoke_a_function_with_an_event_file(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Given an API Gateway event on disk
    event = json.loads((Path(TEMPLATE).parent / "providers/aws/apigw_http_api_v2.json").read_text())
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))
    # When the echo function is invoked with it by logical id
    code, out = run_cli(capsys, "invoke", "EchoFunction", "--event", str(event_file))
    # Then the handler received it and its answer is printed
    assert code == 0
    result = json.loads(out)
    assert json.loads(result["body"])["event"]["rawPath"] == "/my/path"


def test_invoke_a_schedule_by_name_with_a_moved_clock(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str]
) -> None:
    # When a schedule is invoked by its name with the clock moved
    code, out = run_cli(capsys, "invoke", "Nightly", "--now", "2028-02-29T02:30:00Z")
    # Then its function got a Scheduled Event carrying that time
    assert code == 0
    event = json.loads(out)["scheduled_event"]
    assert event["detail-type"] == "Scheduled Event"
    assert event["time"] == "2028-02-29T02:30:00Z"


def test_invoke_an_unknown_name_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--template", TEMPLATE, "invoke", "NoSuchThing"]) == 2
    assert "NoSuchThing" in capsys.readouterr().err


def test_schedules_are_listed_with_their_next_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "schedules")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert set(lines) == {"Hourly", "Nightly", "Off"}
    assert "cron(30 2 * * ? *)" in lines["Nightly"] and "next: 20" in lines["Nightly"]
    assert "disabled" in lines["Off"]


def test_seed_loads_every_section_it_knows_and_is_idempotent(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str]
) -> None:
    code, first = run_cli(capsys, "seed")
    assert code == 0
    code, second = run_cli(capsys, "seed")
    assert code == 0
    assert json.loads(first).keys() == json.loads(second).keys()


def test_migrate_is_a_no_op_on_a_current_database(
    db: Callable[[], UnitOfWork], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(capsys, "migrate")
    assert code == 0 and "requested revision" in out
