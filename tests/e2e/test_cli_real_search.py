"""A real nas search started from the command line, as a user does."""

import json
import os
import subprocess

import pytest

from tests.conftest import make_project
from tests.flows.test_cli import NAS


@pytest.mark.slow
def test_real_search_from_the_command_line(tmp_path):
    """The console script, a temporary Prefect server, the default SQLite store: a real tiny search."""
    project = make_project(tmp_path / "clone")
    (project / "search.yaml").write_text("epochs: 1\npopulation: 2\n")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    proc = subprocess.run(
        [NAS, "search", "--config", "search.yaml", "--budget", "2", "--output", "out", "--quiet"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert len(summary["candidates"]) == 2
    assert f"ONNX model: {project / 'out' / 'model.onnx'}" in proc.stdout
    assert f"mlflow ui --backend-store-uri sqlite:///{project / 'mlflow.db'}" in proc.stdout
    assert (project / "out" / "model.onnx").is_file() and (project / "mlflow.db").is_file()
