"""The README's first-deploy guide matches template.yaml: the parameters it must name, the secrets and keys it
tells a user to fill in, the webhook URLs to register and the outputs it points at all exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tollgate.config import Settings
from tollgate_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = Template(ROOT / "template.yaml")
HEADING = "### First deploy, step by step"


@pytest.fixture(scope="module")
def guide() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in readme, "the README has no deploy guide"
    section = readme.split(HEADING, 1)[1]
    return section.split("\n## ", 1)[0]


def _resources(kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in TEMPLATE.resources.items() if res.get("Type") == kind}


def _setting_names() -> set[str]:
    names: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        names.add(field_name.upper())
        alias = field.validation_alias
        if isinstance(alias, str):
            names.add(alias.upper())
    return names


def test_every_required_parameter_is_in_the_guide(guide: str) -> None:
    # Given the parameters a deploy cannot do without (no default)
    parameters: dict[str, Any] = TEMPLATE.data["Parameters"]
    required = {name for name, spec in parameters.items() if "Default" not in spec}
    assert {"AppUrl", "MailFrom", "MailFromAddress", "AlarmEmail"} <= required
    # Then the guide names each of them
    for name in required:
        assert f"`{name}`" in guide, f"the deploy guide does not mention the required parameter {name}"
    # And every parameter it sets (`Name=value`) exists
    for name in re.findall(r"`([A-Z][A-Za-z]+)=", guide):
        assert name in parameters, f"the guide sets {name}, which the template does not have"


def test_the_secrets_and_keys_in_the_guide_exist(guide: str) -> None:
    # Given the template's secrets (by the name each gets) and the settings they may hold
    secrets = _resources("AWS::SecretsManager::Secret")
    named = {
        str(res["Properties"]["Name"]["Fn::Sub"]).replace("${Stage}", "<Stage>"): logical_id
        for logical_id, res in secrets.items()
    }
    # Then every secret the guide names is one of them, under its own logical id
    mentioned = re.findall(r"`(tollgate/<Stage>/[a-z-]+)` \(`(\w+)`", guide)
    assert mentioned, "the guide names no secret"
    for name, logical_id in mentioned:
        assert named.get(name) == logical_id, f"{name} ({logical_id}) is not a secret of the template"
    # And every secret a user may fill (all but the proxy's database login) is in the guide
    user_secrets = {logical_id for logical_id in secrets if logical_id != "AppDbSecret"}
    assert user_secrets == {logical_id for _, logical_id in mentioned}
    # And every key it says to put in a secret is a setting, and each generated key is the one the template makes
    settings = _setting_names()
    step = guide.split("**Fill in the secrets.**", 1)[1].split("**Register the webhooks**", 1)[0]
    for key in re.findall(r"`([A-Z][A-Z0-9_]{3,})`", step):
        assert key in settings, f"the guide puts {key} in a secret, but no setting reads it"
    for logical_id, res in secrets.items():
        generated = (res["Properties"].get("GenerateSecretString") or {}).get("GenerateStringKey")
        if logical_id in user_secrets and generated:
            assert f"`{generated}`, generated" in step, f"{logical_id} generates {generated}: the guide must say so"


def test_the_webhooks_to_register_are_routes(guide: str) -> None:
    # Given the template's routes without the authorizer (providers cannot sign in)
    open_paths = {route.path for route in TEMPLATE.routes if route.authorizer is None and route.method == "POST"}
    webhook_routes = {path for path in open_paths if path.startswith("/webhooks/")}
    # Then every webhook path in the guide is one of them, and every webhook route is in the guide
    mentioned = set(re.findall(r"<ApiUrl>(/webhooks/[a-z]+)", guide))
    assert mentioned == webhook_routes
    # And the outputs it points at exist and print those very paths
    outputs: dict[str, Any] = TEMPLATE.data["Outputs"]
    for name in re.findall(r"\(`(\w+Url)`\)", guide):
        assert name in outputs, f"the guide points at output {name}, which the template does not have"
        assert str(outputs[name]["Value"]["Fn::Sub"]).endswith(tuple(mentioned))
    # And the first admin's route exists
    assert "/auth/register" in open_paths and "`AdminEmails`" in guide
