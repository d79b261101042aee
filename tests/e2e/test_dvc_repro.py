"""dvc repro re-prepares the data only when its source or its parameters change (real dvc processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nas_pipeline import dvc_versioning as versioning
from tests.conftest import REPO_ROOT, git_status


def _repro(project: Path, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_dvc_repro_reprepares_only_when_source_or_params_change(project):
    for name in (
        "dvc.yaml",
        "params.yaml",
        "sources/README.md",
        "nas_core/data/base.py",
        "nas_core/data/preparation.py",
        "nas_core/data/sources.py",
    ):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / name, project / name)  # the code files: deps of the stage
    rng = np.random.default_rng(5)
    source = project / "sources" / "seq.npz"
    np.savez(source, x=rng.normal(size=(40, 2, 8)).astype(np.float32), y=np.arange(40) % 2)
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("dataset: digits", "dataset: npz:sources/seq.npz"))
    versioning.ensure_repo(project)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}

    assert "Running stage 'prepare'" in _repro(project, env)
    meta = project / "data" / "npz-seq" / "meta.json"
    first = versioning.tracked_version(project)
    assert versioning.data_changes(project) == {}, "data.dvc records what the stage prepared"
    stamp = meta.stat().st_mtime_ns

    assert "didn't change, skipping" in _repro(project, env)
    assert meta.stat().st_mtime_ns == stamp and versioning.tracked_version(project) == first

    np.savez(source, x=rng.normal(size=(40, 2, 8)).astype(np.float32), y=np.arange(40) % 2)  # new source data
    assert "Running stage 'prepare'" in _repro(project, env)
    second = versioning.tracked_version(project)
    assert second != first and versioning.data_changes(project) == {}

    params.write_text(params.read_text().replace("npz:sources/seq.npz", "digits"))  # another parameter
    assert "Running stage 'prepare'" in _repro(project, env)
    assert (project / "data" / "digits" / "meta.json").is_file()
    assert versioning.tracked_version(project) not in (first, second)
    assert "dvc.lock" in git_status(project)
