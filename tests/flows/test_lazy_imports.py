"""Bad input, ``nas validate`` and the help answer without importing torch, MLflow or Prefect (issue 14, item 2).

Each case runs the CLI's entry point in a fresh interpreter, as a user's ``nas`` does, and reads back which of those
packages were loaded when it returned. No timings here: ``benchmarks/startup.py`` measures them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import EXIT_OK, EXIT_USAGE
from tests.conftest import REPO_ROOT

HEAVY = ("torch", "mlflow", "prefect")
GENOME = REPO_ROOT / "docs" / "examples" / "genome.json"

# ``python -c PROBE ARGS...``: runs ``nas ARGS...`` and prints, last, its exit code and the heavy packages loaded
PROBE = f"""
import json, sys
from flows.cli import main
code = None
try:
    code = main(sys.argv[1:])
finally:
    print(json.dumps({{"code": code, "loaded": sorted(set(m.split(".")[0] for m in sys.modules) & {set(HEAVY)!r})}}))
"""


def run_cli(args: list[str], cwd: Path) -> dict:
    """``nas ARGS`` in a new interpreter: its exit code and which of HEAVY it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(cwd / "prefect")}
    env.pop("NAS_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("strategy: evolution\nspace: nope\n")
    return path


@pytest.mark.slow  # a fresh interpreter per case
@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["search", "--strategy", "nope"], EXIT_USAGE),
        (["search", "--time-budget", "5x"], EXIT_USAGE),
        (["search", "--config", "bad.yaml"], EXIT_USAGE),
        (["search", "--output", "bad.yaml"], EXIT_USAGE),  # found after the settings, the data and the GPU check
        (["validate", str(GENOME)], EXIT_OK),
        (["--help"], EXIT_OK),
        (["search", "--help"], EXIT_OK),
    ],
    ids=["bad-strategy", "bad-time-budget", "bad-config-value", "output-is-a-file", "validate", "help", "search-help"],
)
def test_answers_without_heavy_imports(tmp_path: Path, bad_config: Path, args: list[str], code: int) -> None:
    result = run_cli(args, tmp_path)
    assert result["code"] == code
    assert result["loaded"] == []


@pytest.mark.slow  # a fresh interpreter importing torch
def test_the_probe_sees_heavy_imports(tmp_path: Path) -> None:
    """The check above can fail: a command that builds a network does import torch."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    probe = PROBE.replace("code = main(sys.argv[1:])", "import nas_core.builder; code = 0")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1])["loaded"] == ["torch"]


def test_where_a_search_writes_is_known_without_importing_mlflow_or_prefect(tmp_path: Path) -> None:
    """The places check before every search (which folders it writes, which store it uses) reads names only
    (nas_pipeline.stores): before, it imported MLflow and DVC's adapter, seconds before the search's first line."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    probe = PROBE.replace("code = main(sys.argv[1:])", "from flows import preflight; from nas_core.config import "
                          "SearchConfig; preflight.search_places(SearchConfig(project_dir='.')); code = 0")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1])["loaded"] == []
