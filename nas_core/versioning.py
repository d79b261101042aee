"""DVC: make sure the project is a DVC repo with a local remote, track ``data/``, read its version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

DATA_DIR = "data"
DVC_FILE = "data.dvc"
DEFAULT_REMOTE = "local"
DEFAULT_REMOTE_URL = ".dvc-remote"  # given relative to the project; DVC stores it relative to .dvc/


class VersioningError(RuntimeError):
    """A DVC command failed or the tracked data file is broken."""


def run_dvc(root: Path, *args: str) -> str:
    """Run ``dvc ARGS`` in ``root`` with this interpreter's DVC; raise VersioningError with its message."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}  # no telemetry: offline it would only hang around
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        message = (proc.stderr or proc.stdout).strip().splitlines()
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {root}: {message[-1] if message else proc.returncode}")
    return proc.stdout


def _git_toplevel(root: Path) -> Path | None:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, check=False)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def ensure_repo(root: Path) -> None:
    """Initialise DVC in ``root`` if needed (beside git when there is one) with a default local remote."""
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        top = _git_toplevel(root)
        flags = ["--no-scm"] if top is None else ([] if top == root else ["--subdir"])
        run_dvc(root, "init", "--quiet", *flags)
    if not run_dvc(root, "remote", "list").strip():
        run_dvc(root, "remote", "add", "--default", DEFAULT_REMOTE, DEFAULT_REMOTE_URL)


def track_data(root: Path) -> str:
    """``dvc add data`` (writing ``data.dvc`` at the root) and return the dataset version."""
    run_dvc(Path(root), "add", "--quiet", DATA_DIR)
    return tracked_version(root)


def push_data(root: Path) -> None:
    run_dvc(Path(root), "push", "--quiet", DVC_FILE)


def tracked_version(root: Path) -> str:
    """The hash recorded in ``data.dvc``: the dataset version logged everywhere."""
    path = Path(root) / DVC_FILE
    try:
        outs = yaml.safe_load(path.read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise VersioningError(f"cannot read the data version from {path}: {exc}") from None
