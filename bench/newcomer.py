"""A newcomer's figures: the size of `.venv`, the time of `make run` until `/health` answers, and (with
--fresh-clone) the time of the first `make test` in a fresh clone, installs included.

    .venv/bin/python bench/newcomer.py                 # .venv size and `make run` until /health
    .venv/bin/python bench/newcomer.py --fresh-clone   # also: clone, first `make test` (cold), its .venv size

Targets (issue 16): .venv at most 1 GB; the first `make test` at most 8 minutes on a quiet machine. `make run`
runs on a free port with a throwaway data folder, so it never touches the working tree's `.tollgate/`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_TARGET_BYTES = 1024**3
FIRST_TEST_TARGET_SECONDS = 8 * 60
HEALTH_TIMEOUT_SECONDS = 300


def folder_size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_size
    return total


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def health(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            if response.status == 200:
                answer: dict[str, object] = json.loads(response.read())
                return answer
    except (OSError, ValueError):
        return None
    return None


def time_make_run(repo: Path, state: str) -> tuple[float, dict[str, object]]:
    """Seconds from `make run` to the first healthy /health (the install too, when .venv is missing)."""
    port = free_port()
    env = {**os.environ, "TOLLGATE_PORT": str(port), "TOLLGATE_DATA_DIR": state}
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "run"], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        while time.monotonic() - started < HEALTH_TIMEOUT_SECONDS:
            answer = health(port)
            if answer is not None:
                return time.monotonic() - started, answer
            if process.poll() is not None:
                raise SystemExit(f"`make run` exited with {process.returncode} before /health answered")
            time.sleep(0.1)
        raise SystemExit(f"/health did not answer within {HEALTH_TIMEOUT_SECONDS}s")
    finally:
        # Ctrl-C, as a newcomer would: the server stops the embedded database on its way out.
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def time_first_make_test(source: Path) -> tuple[float, int, int]:
    """Clone `source` into a temporary folder and time its first `make test` (creating .venv and .tools)."""
    with tempfile.TemporaryDirectory(prefix="tollgate-clone-") as parent:
        clone = Path(parent) / "tollgate"
        subprocess.run(["git", "clone", "--quiet", str(source), str(clone)], check=True)
        started = time.monotonic()
        completed = subprocess.run(["make", "test"], cwd=clone, check=False, stdout=subprocess.DEVNULL)
        elapsed = time.monotonic() - started
        return elapsed, completed.returncode, folder_size(clone / ".venv")


def verdict(ok: bool) -> str:
    return "meets the target" if ok else "OVER the target"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-clone", action="store_true", help="also time a fresh clone's first `make test`")
    parser.add_argument("--source", default=str(ROOT), help="what to clone (default: this repository)")
    parser.add_argument("--skip-run", action="store_true", help="do not time `make run`")
    args = parser.parse_args()

    venv = ROOT / ".venv"
    if venv.is_dir():
        size = folder_size(venv)
        print(f".venv size: {size / 1024**2:,.0f} MiB ({verdict(size <= VENV_TARGET_BYTES)} of 1 GiB)")
    else:
        print(".venv size: no .venv yet (make run or make test creates it)")
    if not args.skip_run:
        with tempfile.TemporaryDirectory(prefix="tollgate-newcomer-") as state:
            # First start: a new database folder, migrations, the seed (knowledge base embedded); then a restart.
            for label in ("first start", "restart"):
                seconds, answer = time_make_run(ROOT, state)
                print(f"make run until /health answers ({label}): {seconds:.1f} s (status {answer.get('status')})")
    if args.fresh_clone:
        if shutil.which("git") is None:
            print("first make test: git is not installed", file=sys.stderr)
            return 1
        seconds, code, venv_size = time_first_make_test(Path(args.source))
        result = "passed" if code == 0 else f"FAILED (exit {code})"
        print(
            f"first make test in a fresh clone: {seconds / 60:.1f} min, {result} "
            f"({verdict(seconds <= FIRST_TEST_TARGET_SECONDS)} of 8 min); its .venv: {venv_size / 1024**2:,.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
