"""`sam build` makes a deployable artifact: a layer holding `tollgate` and its dependencies, and functions
whose handlers import with nothing but that layer (no dev-only code anywhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tollgate_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
SAM = ROOT / ".tools" / "bin" / "sam"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not SAM.exists():
        if os.environ.get("CI"):
            pytest.fail("SAM CLI is missing from .tools (make test installs it)")
        pytest.skip("SAM CLI not installed in .tools; `make template` installs it")
    out = tmp_path_factory.mktemp("sam") / "build"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "AWS_DEFAULT_REGION": "us-east-1"}
    subprocess.run(
        [str(SAM), "build", "--template", str(ROOT / "template.yaml"), "--build-dir", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return out


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


def test_every_handler_imports_with_only_the_layer(build_dir: Path) -> None:
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
