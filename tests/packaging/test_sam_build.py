"""`sam build` makes a deployable artifact: a layer holding `tollgate` and its dependencies, and functions
whose handlers import with nothing but that layer (no dev-only code anywhere).

Two builds of the same template: the deploy build (wheels for python3.13 on arm64, what Lambda runs) and the
native build (TOLLGATE_BUILD_TARGET=native: wheels for this machine's Python, so its handlers can be imported
here). Both hold the same distributions at the same versions."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tollgate_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".tools" / "bin" / "sam"


def _sam_build(tmp_path_factory: pytest.TempPathFactory, target: str) -> Path:
    if not SAM.exists():
        if os.environ.get("CI"):
            pytest.fail("SAM CLI is missing from .tools (make test installs it)")
        pytest.skip("SAM CLI not installed in .tools; `make template` installs it")
    out = tmp_path_factory.mktemp(f"sam-{target}") / "build"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1", "TOLLGATE_BUILD_TARGET": target}
    subprocess.run(
        [str(SAM), "build", "--template", str(ROOT / "template.yaml"), "--build-dir", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def native_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sam_build(tmp_path_factory, "native")


@pytest.fixture(scope="module")
def deploy_build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _sam_build(tmp_path_factory, "lambda")


@pytest.fixture(scope="module", params=["native", "lambda"])
def build_dir(request: pytest.FixtureRequest) -> Path:
    """Each structural check runs on both builds."""
    name = "native_build_dir" if request.param == "native" else "deploy_build_dir"
    return Path(request.getfixturevalue(name))


def _distributions(site: Path) -> dict[str, str]:
    """{normalised name: version} of the `*.dist-info` folders directly in `site`."""
    found: dict[str, str] = {}
    for meta in site.glob("*.dist-info"):
        fields = dict(line.split(": ", 1) for line in (meta / "METADATA").read_text().splitlines() if ": " in line)
        found[re.sub(r"[-_.]+", "-", fields["Name"]).lower()] = fields["Version"]
    return found


def test_the_layer_holds_tollgate_and_its_dependencies(build_dir: Path) -> None:
    layer = build_dir / "SharedLayer" / "python"
    assert (layer / "tollgate" / "__init__.py").is_file()
    for dependency in ("sqlalchemy", "pg8000", "pydantic", "pydantic_settings", "aws_lambda_powertools"):
        assert (layer / dependency).is_dir(), dependency


def test_no_dev_only_code_ships(build_dir: Path) -> None:
    shipped = {p.name for p in build_dir.rglob("*")}
    assert "tollgate_local" not in shipped
    assert "pgserver" not in shipped and "pytest" not in shipped
    assert not any(build_dir.rglob("bench")) and not any(build_dir.rglob("conftest.py"))
    # Alembic and the revisions ship in the migration function's artifact, and nowhere else.
    elsewhere = {p.name for p in build_dir.rglob("*") if "MigrateFunction" not in p.relative_to(build_dir).parts}
    assert "alembic" not in elsewhere and "versions" not in elsewhere


def test_the_migration_function_holds_alembic_and_the_revisions(build_dir: Path) -> None:
    code = build_dir / "MigrateFunction"
    assert (code / "alembic" / "__init__.py").is_file()
    assert (code / "migrations" / "env.py").is_file() and not (code / "migrations").is_symlink()
    revisions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
    assert revisions and revisions <= {p.name for p in (code / "migrations" / "versions").glob("*.py")}
    assert any((code / "migrations" / "sql").rglob("*.sql"))


def test_both_builds_hold_the_same_distributions_at_the_same_versions(
    native_build_dir: Path, deploy_build_dir: Path
) -> None:
    # Given the deploy build (python3.13, arm64) and the native build of the same template
    for artifact, site in (("SharedLayer", "python"), ("MigrateFunction", ".")):
        # When their distributions are listed
        native = _distributions(native_build_dir / artifact / site)
        deployed = _distributions(deploy_build_dir / artifact / site)
        # Then they are the same packages at the same versions
        assert native, artifact
        assert deployed == native, artifact


def test_the_deploy_build_holds_extensions_for_the_lambda_runtime_only(deploy_build_dir: Path) -> None:
    # Given the deploy build's compiled extension modules
    extensions = list(deploy_build_dir.rglob("*.so"))
    assert extensions
    # Then every one is an ELF object for aarch64 (e_machine 183), those tagged with a Python version are for
    # CPython 3.13, and no bytecode of the building Python ships
    machines = {p.name: int.from_bytes(p.read_bytes()[18:20], "little") for p in extensions}
    assert {name: m for name, m in machines.items() if m != 183} == {}
    assert [p.name for p in extensions if "cpython-" in p.name and "cpython-313-" not in p.name] == []
    assert not any(deploy_build_dir.rglob("*.pyc"))


def test_every_handler_imports_with_only_the_layer(native_build_dir: Path) -> None:
    build_dir = native_build_dir
    layer = build_dir / "SharedLayer" / "python"
    # The base interpreter, not the project venv: only the built artifact is on the path.
    python = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    for function in Template(ROOT / "template.yaml").functions.values():
        code_dir = build_dir / function.logical_id
        module = function.handler.rsplit(".", 1)[0]
        probe = (
            "import importlib, sys; "
            f"m = importlib.import_module({module!r}); "
            f"assert callable(getattr(m, {function.handler_name!r})); "
            "assert not any(name.startswith('tollgate_local') for name in sys.modules)"
        )
        env = {"PYTHONPATH": f"{code_dir}{os.pathsep}{layer}", "PATH": os.environ.get("PATH", ""),
               "POWERTOOLS_TRACE_DISABLED": "true", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
        result = subprocess.run([python, "-s", "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{function.logical_id}: {result.stderr[-2000:]}"
