"""Shared fixtures: keep Prefect offline and its state in a temporary folder; temporary git projects."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Before anything imports prefect: no telemetry, state out of the user's home and the repository.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="nas-tests-prefect-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def make_project(root: Path) -> Path:
    """A fresh git repository carrying the project's .gitignore, like a new clone."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.email", "tests@nas.local"], cwd=root, check=True)
    subprocess.run(["git", "config", "user.name", "tests"], cwd=root, check=True)
    shutil.copy(REPO_ROOT / ".gitignore", root / ".gitignore")
    return root


def git_status(root: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary git project with no MLflow override: the default SQLite store lands inside it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The real digits splits, prepared once for the session."""
    from nas_core.data import load_prepared, prepare_dataset

    root = tmp_path_factory.mktemp("digits-data")
    prepare_dataset("digits", root)
    return load_prepared(root, "digits")


@pytest.fixture(scope="module")
def single_torch_thread():
    """Tiny tensors: one thread avoids oversubscribing a small shared CPU; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Flaky:
    """Raises the given exceptions in turn, then returns 'done'; counts its calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Waits of nas_core.tracking's retries, recorded instead of slept."""
    from nas_core import tracking

    waited: list[float] = []
    monkeypatch.setattr(tracking.time, "sleep", waited.append)
    return waited
