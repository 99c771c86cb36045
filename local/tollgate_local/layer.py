"""After `sam build`: drop from the shared layer what the Lambda Python runtime already has, and print its size.

    python local/tollgate_local/layer.py .aws-sam/build/SharedLayer

The runtime ships boto3 and botocore (with s3transfer), but pip installs them into the layer anyway
because aws-xray-sdk (powertools' Tracer) declares botocore; that is about 22 MB nobody loads. The runtime's own
copies are what the functions import in AWS. Standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

# Distributions the python3.11 Lambda runtime provides (its /var/runtime), by their importable folder names.
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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
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
