"""template.yaml is read as CloudFormation reads it: short-form tags, globals, routes, authorizers, schedules."""

from __future__ import annotations

from pathlib import Path

from tollgate_local.template import Template, load_template

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_short_form_tags_become_their_long_form(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "Resources:\n"
        "  A:\n"
        "    Type: X\n"
        "    Properties:\n"
        "      Ref: !Ref Stage\n"
        "      Att: !GetAtt Fn.Arn\n"
        "      Sub: !Sub '${AWS::Region}-x'\n"
        "      SubList: !Sub ['${A}', {A: !Ref B}]\n"
        "      If: !If [Cond, !Ref C, !Ref AWS::NoValue]\n"
        "      Sel: !Select [0, !GetAZs '']\n"
    )
    props = load_template(path)["Resources"]["A"]["Properties"]
    assert props["Ref"] == {"Ref": "Stage"}
    assert props["Att"] == {"Fn::GetAtt": ["Fn", "Arn"]}
    assert props["Sub"] == {"Fn::Sub": "${AWS::Region}-x"}
    assert props["SubList"] == {"Fn::Sub": ["${A}", {"A": {"Ref": "B"}}]}
    assert props["If"] == {"Fn::If": ["Cond", {"Ref": "C"}, {"Ref": "AWS::NoValue"}]}
    assert props["Sel"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}


def test_routes_authorizers_and_functions() -> None:
    template = Template(FIXTURES / "gateway_template.yaml")
    keys = {(r.route_key, r.authorizer) for r in template.routes}
    assert ("ANY /public/{item}", None) in keys
    assert ("GET /whoami", "Guard") in keys  # the default authorizer
    assert ("GET /guarded", "HeaderGuard") in keys
    assert template.authorizers["Guard"].function_id == "GuardFunction"
    assert template.authorizers["HeaderGuard"].identity_headers == ("authorization",)
    echo = template.functions["EchoFunction"]
    assert (echo.memory_size, echo.timeout) == (512, 7)
    assert echo.environment["STAGE"] == {"Ref": "Stage"}
    assert echo.module_path.name == "app.py" and echo.handler_name == "lambda_handler"


def test_schedules_by_name() -> None:
    schedules = Template(FIXTURES / "gateway_template.yaml").schedules
    assert set(schedules) == {"Nightly", "Hourly", "Off"}
    assert schedules["Nightly"].expression == "cron(30 2 * * ? *)"
    assert schedules["Hourly"].input == '{"job": "hourly"}'
    assert schedules["Off"].enabled is False


def test_the_project_template_parses_and_every_function_has_its_module() -> None:
    template = Template(Path(__file__).resolve().parents[2] / "template.yaml")
    assert template.routes, "the template serves no route"
    for function in template.functions.values():
        assert function.module_path.is_file(), function.logical_id
