"""Fault injection on data and places, with real `nas search` processes.

Unfit data, a read-only project and a full output folder are bad input: one line, exit 2, within seconds, and nothing
left behind (no output folder, no search.json, no MLflow store). The smallest dataset the check accepts trains and
exports. A disk that fills up in the middle of a search is a failure of the run: one line, exit 1, no MLflow run left
RUNNING.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from nas_core.data.checks import MIN_PER_CLASS
from tests.conftest import REPO_ROOT, make_project
from tests.flows.mounts import fill, make_read_only, tmpfs
from tests.flows.test_resume import TERMINAL
from tests.nas_core.data.writers import write_unfit_datasets

SETTINGS = ["--budget", "2", "--epochs", "1", "--population", "2", "--quiet"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO_ROOT), **extra}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("NAS_DEBUG", None)
    return env


def _nas_search(project: Path, env: dict[str, str], args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", "search", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _assert_one_line(done: subprocess.CompletedProcess, code: int, expected: str) -> None:
    err = done.stderr.strip()
    assert done.returncode == code, done.stdout[-2000:] + err[-3000:]
    assert "Traceback" not in done.stderr + done.stdout
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, err


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project")


def test_unfit_data_is_bad_input_before_anything_starts(tmp_path, project):
    """Every kind of unfit data: one line and exit 2 within seconds, and the project as it was."""
    sources = tmp_path / "sources"
    sources.mkdir()
    before = sorted(os.listdir(project))
    for dataset, message in write_unfit_datasets(sources).items():
        done = _nas_search(project, _env(tmp_path), ["--dataset", dataset, *SETTINGS], timeout=120)
        _assert_one_line(done, 2, message)
    assert sorted(os.listdir(project)) == before, "no outputs/, data/, .dvc/ or mlflow.db"
    assert not (tmp_path / "prefect").exists(), "Prefect never started"


def test_a_read_only_project_and_a_full_output_folder_are_bad_input(tmp_path):
    with tmpfs(tmp_path / "project") as mount:
        project = make_project(mount)
        make_read_only(mount)
        done = _nas_search(project, _env(tmp_path), [*SETTINGS, "--output", str(tmp_path / "out")], timeout=120)
        _assert_one_line(done, 2, "is not writable (read-only file system)")
    assert not (tmp_path / "out").exists()

    project = make_project(tmp_path / "writable")
    with tmpfs(tmp_path / "full", size="256k") as mount:
        fill(mount)
        done = _nas_search(project, _env(tmp_path), [*SETTINGS, "--output", str(mount / "out")], timeout=120)
        _assert_one_line(done, 2, "(No space left on device); pass a writable --output")
        assert os.listdir(mount) == ["filler"]
    assert not (project / "mlflow.db").exists() and not (project / "data").exists()


def test_the_smallest_accepted_dataset_is_searched_and_exported(tmp_path, project, prefect_server):
    """2 classes x MIN_PER_CLASS samples (train 4, validation 2, test 2): every candidate trains and the best exports."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", x=rng.random((2 * MIN_PER_CLASS, 1, 6, 6)).astype(np.float32),
             y=np.arange(2 * MIN_PER_CLASS) % 2)  # fmt: skip
    env = _env(tmp_path, PREFECT_API_URL=prefect_server)
    done = _nas_search(project, env, ["--dataset", f"npz:{tmp_path / 'tiny.npz'}", *SETTINGS, "--output", str(project / "out")])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (project / "out" / "model.onnx").is_file() and (project / "out" / "summary.json").is_file()
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status == "FINISHED" for r in runs), [r.info.status for r in runs]


def test_a_disk_that_fills_up_during_the_search_is_one_line_and_exit_1(tmp_path, project, prefect_server):
    """The output folder has room for the search's first files, not for its model, plots and report."""
    with tmpfs(tmp_path / "small", size="128k") as mount:
        done = _nas_search(project, _env(tmp_path, PREFECT_API_URL=prefect_server), [*SETTINGS, "--output", str(mount / "out")])
        err = done.stderr.strip().splitlines()
        assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
        assert len(err) <= 6 and err[-1].startswith("error: ") and "No space left on device" in err[-1], err
        assert (mount / "out" / "search.json").is_file(), "the search's record is kept"
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status in TERMINAL for r in runs), [r.info.status for r in runs]
