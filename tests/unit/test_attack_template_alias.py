"""The `live` aliases (template Globals: AutoPublishAlias) serve every route and schedule, and an alias moves only
when SAM publishes a new version. These tests run SAM's own transform (the SAM CLI's translator, from the tools
environment `make test` installs) on the template as `sam package` leaves it, and compare the versions it would
publish: a deploy whose only change is the shared layer (where all the logic lives) or the configuration must
publish a new version of every function, or the aliases keep serving the old code and settings.

SAM names a version after the template's text, so a parameter value cannot reach the version's logical id: the
`Migrations` custom resource, which CloudFormation resolves at deploy time, answers a fingerprint of every parameter
value that reaches a function (functions/migrate/app.py), and each version's Description (a change of which
replaces the version) and each function's environment (so Lambda has a change to publish) carry it. The tests
resolve what CloudFormation would resolve, the parameters, and compute that answer with the handler's own code."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tollgate_local.template import load_template

ROOT = Path(__file__).resolve().parents[2]
TOOLS_PYTHON = ROOT / ".tools" / "bin" / "python"
REQUIRED = {
    "AppUrl": "https://app.example.com",
    "MailFrom": "Acme <no-reply@example.com>",
    "MailFromAddress": "no-reply@example.com",
    "AlarmEmail": "ops@example.com",
}

# Run by the tools' Python (where samtranslator lives): {function: version logical id} for one deploy.
TRANSFORM = """
import json, sys
from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

class NoManagedPolicies:
    def load(self):
        return {}

request = json.load(sys.stdin)
template = yaml_parse(open(request["template"]).read())
for name, resource in template["Resources"].items():  # as `sam package` leaves it: every artifact in S3
    properties = resource.get("Properties") or {}
    for field in ("CodeUri", "ContentUri"):
        if field in properties:
            properties[field] = "s3://artifacts/" + request["artifacts"].get(name, name)
out = transform(template, request["parameters"], NoManagedPolicies())
kept = {"AWS::Lambda::Function", "AWS::Lambda::Version", "AWS::Lambda::Alias", "Custom::Migrations"}
print(json.dumps({k: r for k, r in out["Resources"].items() if r["Type"] in kept}))
"""


@cache
def _deploy(
    parameters: tuple[tuple[str, str], ...], artifacts: tuple[tuple[str, str], ...] = ()
) -> dict[str, dict[str, Any]]:
    """The functions, versions, aliases and Migrations SAM's transform makes of the template for one deploy."""
    request = {
        "template": str(ROOT / "template.yaml"),
        "parameters": {**REQUIRED, **dict(parameters)},
        "artifacts": dict(artifacts),
    }
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    done = subprocess.run(
        [str(TOOLS_PYTHON), "-c", TRANSFORM],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resources: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return resources


def _versions(parameters: tuple[tuple[str, str], ...], artifacts: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """{function: the logical id of the version it would publish}."""
    return {
        resource["Properties"]["FunctionName"]["Ref"]: logical_id
        for logical_id, resource in _deploy(parameters, artifacts).items()
        if resource["Type"] == "AWS::Lambda::Version"
    }


def _migrate_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migrate_app", ROOT / "functions" / "migrate" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parameter_values(parameters: dict[str, str]) -> dict[str, Any]:
    """Every parameter's value for a deploy (given, else its default), as CloudFormation hands them on."""
    declared: dict[str, dict[str, Any]] = load_template(ROOT / "template.yaml")["Parameters"]
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        value = str(parameters.get(name, REQUIRED.get(name, spec.get("Default", ""))))
        values[name] = value.split(",") if spec["Type"] == "CommaDelimitedList" else value
    return values


def _resolve(node: Any, values: dict[str, Any]) -> Any:
    """`node` with every parameter `Ref` replaced by its value and scalars as the strings a custom resource gets;
    anything else (a resource's id, a condition) stays as written, the same on both sides of a comparison."""
    if isinstance(node, dict):
        if set(node) == {"Ref"} and node["Ref"] in values:
            return values[node["Ref"]]
        return {key: _resolve(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, values) for item in node]
    if isinstance(node, bool):
        return str(node).lower()
    if isinstance(node, int | float):
        return str(node)
    return node


def _fingerprint(resources: dict[str, dict[str, Any]], values: dict[str, Any]) -> str:
    """Migrations' ConfigurationFingerprint for a deploy with these parameter values (the handler's own code)."""
    fingerprint: str = _migrate_handler().configuration_fingerprint(
        _resolve(resources["Migrations"]["Properties"], values)
    )
    return fingerprint


def _published(parameters: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, str, str]]:
    """{function: (version logical id, resolved version Description, resolved TOLLGATE_CONFIGURATION)}."""
    resources = _deploy(parameters)
    fingerprint = _fingerprint(resources, _parameter_values(dict(parameters)))

    def resolved(node: Any) -> str:
        assert node == {"Fn::Sub": "configuration ${Migrations.ConfigurationFingerprint}"} or node == {
            "Fn::GetAtt": ["Migrations", "ConfigurationFingerprint"]
        }, node
        return f"configuration {fingerprint}" if "Fn::Sub" in node else fingerprint

    published = {}
    for logical_id, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Version":
            continue
        function = resource["Properties"]["FunctionName"]["Ref"]
        if function == "MigrateFunction":
            continue
        variables = resources[function]["Properties"]["Environment"]["Variables"]
        published[function] = (
            logical_id,
            resolved(resource["Properties"].get("Description")),
            resolved(variables.get("TOLLGATE_CONFIGURATION")),
        )
    return published


def _referenced(node: Any) -> set[str]:
    """The logical ids `node` names (Ref, GetAtt, Sub)."""
    if isinstance(node, dict):
        if set(node) == {"Ref"}:
            return {str(node["Ref"]).split(".")[0]}
        if set(node) == {"Fn::GetAtt"}:
            return {str(node["Fn::GetAtt"][0])}
        if set(node) == {"Fn::Sub"} and isinstance(node["Fn::Sub"], str):
            return {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", node["Fn::Sub"])}
        return set().union(*(_referenced(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_referenced(item) for item in node))
    return set()


pytestmark = pytest.mark.skipif(
    not TOOLS_PYTHON.exists() or sys.platform == "win32", reason="needs the tools environment (make test makes it)"
)


def test_the_same_deploy_again_publishes_nothing_new() -> None:
    # Given the same artifacts and parameters twice, Then every function keeps its version (no churn)
    first = _versions(())
    again = _versions((), (("HealthFunction", "HealthFunction"),))
    assert first and first == again


def test_a_change_to_the_shared_layer_alone_publishes_a_new_version_of_every_function() -> None:
    # Given a deploy whose only new artifact is the shared layer
    before = _versions(())
    after = _versions((), (("SharedLayer", "SharedLayer-next"),))
    # Then every function that uses the layer gets a new version (so its alias serves the new layer)
    unchanged = sorted(name for name, version in before.items() if after.get(name) == version)
    assert unchanged == [], f"these aliases would keep serving the old layer: {unchanged}"


def test_a_parameter_only_deploy_publishes_a_new_version_of_every_function() -> None:
    # Given a deploy whose only change is a parameter the functions read
    before = _published((("AppUrl", "https://app.example.com"),))
    after = _published((("AppUrl", "https://new.example.com"),))
    # Then SAM names every version as before (it hashes the template's text, never a parameter's value)...
    assert before and {f: v[0] for f, v in before.items()} == {f: v[0] for f, v in after.items()}
    # ...but every function's version Description changes, which makes CloudFormation replace that version
    # (publish a new one, and move the alias to it), and so does every function's environment, so Lambda has a
    # change to publish (it refuses to publish a version of an unchanged function)
    same_description = sorted(f for f, v in before.items() if after[f][1] == v[1])
    same_environment = sorted(f for f, v in before.items() if after[f][2] == v[2])
    assert same_description == [], f"these aliases would keep serving the old settings: {same_description}"
    assert same_environment == [], f"Lambda would refuse to publish these: {same_environment}"
    # And every function but the migration function takes part
    functions = {
        k for k, r in _deploy((("AppUrl", "https://app.example.com"),)).items() if r["Type"] == "AWS::Lambda::Function"
    }
    assert set(before) == functions - {"MigrateFunction"}


def test_the_same_parameters_again_keep_every_version_description() -> None:
    # Given the same parameters twice, Then every version keeps its Description (no republishing without cause)
    assert _published(()) == _published((("AppUrl", REQUIRED["AppUrl"]),))


def test_every_parameter_that_reaches_a_function_is_in_the_fingerprint() -> None:
    template = load_template(ROOT / "template.yaml")
    parameters: set[str] = set(template["Parameters"])
    conditions: dict[str, Any] = template["Conditions"]

    def reached(node: Any) -> set[str]:
        """The parameters `node` reads, also through the conditions of its `!If`s."""
        names = set()
        for name in _referenced(node):
            names |= {name} & parameters
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "Fn::If":
                    names |= reached(conditions[value[0]])
                elif key == "Condition" and isinstance(value, str):
                    names |= reached(conditions[value])
                names |= reached(value)
        elif isinstance(node, list):
            for item in node:
                names |= reached(item)
        return names

    # Given every parameter that reaches a function's published configuration: Globals and each function's
    # properties (not its events, nor its reserved concurrency, which belongs to the function and applies at once)
    used = reached(template["Globals"]["Function"])
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::Serverless::Function" and name != "MigrateFunction":
            properties = {
                k: v for k, v in resource["Properties"].items() if k not in {"Events", "ReservedConcurrentExecutions"}
            }
            used |= reached(properties)
    # Then Migrations passes each of them on, in its Configuration
    passed = reached(template["Resources"]["Migrations"]["Properties"]["Configuration"])
    assert used and used - passed == set(), f"not in Migrations' Configuration: {sorted(used - passed)}"

    # And a change to any one of them alone gives another fingerprint (SAM's output does not depend on them:
    # the first test shows the same versions, so one transform serves every value)
    resources = _deploy(())
    base = _parameter_values({})
    fingerprint = _fingerprint(resources, base)
    unmoved = sorted(
        name
        for name in used
        if _fingerprint(
            resources,
            {**base, name: [*base[name], "changed"] if isinstance(base[name], list) else f"{base[name]}-changed"},
        )
        == fingerprint
    )
    assert unmoved == [], f"a change to these alone would publish nothing: {unmoved}"


def test_the_migration_function_does_not_wait_for_its_own_answer() -> None:
    # Given the transformed template, Then neither the migration function nor its version or alias names
    # Migrations (which calls that alias: a cycle CloudFormation would refuse)
    resources = _deploy(())
    own = {k: r for k, r in resources.items() if k.startswith("MigrateFunction")}
    assert {r["Type"] for r in own.values()} == {"AWS::Lambda::Function", "AWS::Lambda::Version", "AWS::Lambda::Alias"}
    assert [k for k, r in own.items() if "Migrations" in _referenced(r)] == []
    assert resources["MigrateFunction"]["Properties"]["Environment"]["Variables"]["TOLLGATE_CONFIGURATION"] == ""
