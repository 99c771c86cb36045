"""Build steps of the Lambda artifacts: drop from the shared layer what the Lambda Python runtime already has
(run by the layer's makefile build), and print the size of every artifact (run by `make build`).

    python local/tollgate_local/layer.py .aws-sam/build/SharedLayer
    python local/tollgate_local/layer.py sizes .aws-sam/build

The runtime ships boto3 and botocore (with s3transfer), but pip installs them into the layer anyway
because aws-xray-sdk (powertools' Tracer) declares botocore; that is about 22 MB nobody loads. The runtime's own
copies are what the functions import in AWS. Standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

# Distributions the Lambda Python runtimes provide (its /var/runtime), by their importable folder names.
# jmespath stays: powertools needs it at import and it is tiny.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
# Lambda's limit on a function plus its layers, unzipped.
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _dist_info_name(path: Path) -> str:
    # "botocore-1.35.0.dist-info" -> "botocore"; names normalise "-" and "." to "_".
    return re.sub(r"[-.]+", "_", path.name.split("-", 1)[0]).lower()


def prune(site: Path, names: tuple[str, ...] = RUNTIME_PROVIDED) -> list[str]:
    """Remove the packages `names` (and their metadata) from the folder `site`; returns what was removed."""
    removed: list[str] = []
    for name in names:
        package = site / name
        if package.is_dir():
            shutil.rmtree(package)
            removed.append(name)
    for meta in [*site.glob("*.dist-info"), *site.glob("*.egg-info")]:
        if _dist_info_name(meta) in names:
            shutil.rmtree(meta) if meta.is_dir() else meta.unlink()
    return removed


def mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MiB"


def human(size: int) -> str:
    return mib(size) if size >= 1024 * 1024 else f"{size / 1024:.1f} KiB"


def zipped_size(folder: Path) -> int:
    """The size of `folder` zipped as SAM uploads it (deflated), without keeping the zip."""
    with tempfile.TemporaryFile() as out:
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(folder))
        return out.tell()


def artifact_sizes(build_dir: Path) -> tuple[list[str], bool]:
    """One line per built artifact (layers have a python/ folder; the migration function holds Alembic), then
    the largest function plus the layers against Lambda's unzipped limit; and whether that is within it."""
    artifacts = sorted(p for p in build_dir.iterdir() if p.is_dir())
    layers = [p for p in artifacts if (p / "python").is_dir()]
    functions = [p for p in artifacts if p not in layers]
    lines: list[str] = []
    unzipped: dict[Path, int] = {}
    for artifact in [*layers, *functions]:
        unzipped[artifact] = size_of(artifact)
        kind = "layer" if artifact in layers else "function"
        if (artifact / "alembic").is_dir():
            kind = "migration function"
        zipped = human(zipped_size(artifact))
        lines.append(f"{artifact.name:32} {kind:18} {human(unzipped[artifact]):>10} unzipped {zipped:>10} zipped")
    layers_total = sum(unzipped[p] for p in layers)
    within = True
    if functions:
        largest = max(functions, key=lambda p: unzipped[p])
        total = unzipped[largest] + layers_total
        within = total <= UNZIPPED_LIMIT_BYTES
        lines.append(
            f"largest function with its layers: {largest.name} {mib(total)} of Lambda's {mib(UNZIPPED_LIMIT_BYTES)}"
        )
    return lines, within


def main(argv: list[str]) -> int:
    usage = "\n".join(line.strip() for line in __doc__.strip().splitlines()[3:5])
    if len(argv) == 2 and argv[0] == "sizes":
        build_dir = Path(argv[1])
        if not build_dir.is_dir():
            print(f"{build_dir} does not exist: run `sam build` first", file=sys.stderr)
            return 1
        lines, within = artifact_sizes(build_dir)
        print("\n".join(lines))
        if not within:
            print(f"over Lambda's {mib(UNZIPPED_LIMIT_BYTES)} unzipped limit", file=sys.stderr)
        return 0 if within else 1
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    layer = Path(argv[0])
    site = layer / "python"
    if not site.is_dir():
        print(f"{site} does not exist: run `sam build` first", file=sys.stderr)
        return 1
    before = size_of(layer)
    removed = prune(site)
    after = size_of(layer)
    dropped = ""
    if removed:
        dropped = f" (dropped {', '.join(removed)}, which the Lambda runtime provides; was {mib(before)})"
    print(f"shared layer: {mib(after)} unzipped{dropped}")
    if after > UNZIPPED_LIMIT_BYTES:
        print(f"the layer is over Lambda's {mib(UNZIPPED_LIMIT_BYTES)} unzipped limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
