"""Fault injection: a real `nas search` killed with SIGKILL at each stage, or with a damaged checkpoint file, then
resumed. The resumed search must end like one that never failed: exit 0, the same best, its model, nothing RUNNING in
MLflow and no evaluation twice. Kill points come from tests/e2e/kill_at.py (the production code has no fault hooks).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO_ROOT, make_project
from tests.flows.test_resume import TERMINAL

SETTINGS = ["--budget", "2", "--epochs", "1", "--population", "2", "--seed", "3", "--quiet"]
LOOP = "nas_core.search.loop:Search"
# stage -> (what is killed, at its entry or after it returns, at which call; extra settings)
KILL_POINTS = {
    "prepare": (f"{LOOP}.prepare", "after", 1, []),
    "candidates": (f"{LOOP}.record", "after", 1, []),
    "select": (f"{LOOP}.select", "entry", 1, []),
    "final": (f"{LOOP}.record_final", "entry", 1, ["--final-epochs", "1"]),
    "export": ("nas_pipeline.onnx_export:check_parity", "entry", 1, []),  # model.onnx half written
    "registry": ("nas_pipeline.exporting:register_search_best", "entry", 1, []),
    "summary": (f"{LOOP}.finish", "entry", 1, []),
}


def _nas(project: Path, env: dict[str, str], args: list[str], kill: tuple[str, str, int] | None = None, timeout: int = 600):
    """Run `nas search ARGS` (through the kill wrapper when ``kill`` is given) in its own process group."""
    prefix = ["-m", "tests.e2e.kill_at", kill[0], kill[1], str(kill[2]), "--"] if kill else ["-m", "flows.cli"]
    proc = subprocess.Popen([sys.executable, *prefix, "search", *args], cwd=project, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with_group_gone(proc.pid)
    return proc.returncode, output


def with_group_gone(pgid: int) -> None:
    """Wait until no process of the killed group is left (its helpers die with it)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    """One project (data, MLflow store) for every search here, and the environment of its `nas` processes."""
    root = make_project(tmp_path_factory.mktemp("faults") / "project")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_API_URL": prefect_server}
    env.pop("MLFLOW_TRACKING_URI", None)
    return root, env


@pytest.fixture(scope="module")
def reference(project):
    """The summary of the same search with no fault."""
    root, env = project
    code, output = _nas(root, env, [*SETTINGS, "--output", str(root / "reference"), "--project-dir", str(root)])
    assert code == 0, output[-3000:]
    return json.loads((root / "reference" / "summary.json").read_text())


def _check_finished_like_reference(root: Path, out: Path, reference: dict, output: str) -> dict:
    assert "Traceback" not in output, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["hash"] == reference["best"]["hash"] and best["val_accuracy"] == reference["best"]["val_accuracy"]
    assert best["model_error"] is None and Path(best["onnx_path"]) == out / "model.onnx"
    assert (out / "model.onnx").stat().st_mode & 0o777 == 0o644
    assert Path(best["handoff_path"], "model.onnx").is_file() and best["registry"] is not None
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp") or (p.name.startswith("tmp") and p.suffix == ".onnx")]
    assert leftovers == [], "nothing half-written is left"
    identities = [(c["hash"], c["fidelity"]) for c in summary["candidates"]]
    assert len(identities) == len(reference["candidates"]) == len(set(identities))

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nas-digits").experiment_id
    runs = client.search_runs([experiment], f"tags.`nas.search_id` = '{summary['search_id']}'")
    assert all(r.info.status in TERMINAL for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    done = [(r.data.tags["nas.hash"], r.data.tags["nas.fidelity"]) for r in runs
            if r.data.tags.get("nas.role") == "candidate" and r.info.status != "KILLED"]  # fmt: skip
    assert sorted(done) == sorted((h, str(f)) for h, f in identities), "each evaluation completed exactly once"
    return summary


@pytest.mark.parametrize("stage", list(KILL_POINTS))
def test_a_search_killed_at_each_stage_resumes_to_the_same_model(project, reference, stage):
    root, env = project
    out = root / f"killed-{stage}"
    target, when, nth, extra = KILL_POINTS[stage]
    code, output = _nas(root, env, [*SETTINGS, *extra, "--output", str(out), "--project-dir", str(root)], (target, when, nth))
    assert code == -signal.SIGKILL, f"killed at {stage}: {output[-3000:]}"
    assert not (out / "summary.json").exists()
    if stage == "export":
        assert (out / ".model.onnx.tmp").is_file(), "killed while model.onnx was being written"
        (out / "best_weights.pt").unlink()  # the case: the search must still end with its model
    if stage == "registry":
        weights = out / "best_weights.pt"
        weights.write_bytes(weights.read_bytes()[:100])  # truncated: moved aside and retrained
    if stage == "select":  # a damaged state.json first: named in one line, exit 2, nothing changed
        state = out / "state.json"
        intact = state.read_bytes()
        state.write_bytes(intact[: len(intact) // 2])
        code, output = _nas(root, env, ["--resume", str(out), "--project-dir", str(root)], timeout=120)
        lines = [line for line in output.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and str(state) in lines[0] and "damaged" in lines[0], output[-3000:]
        assert state.read_bytes() == intact[: len(intact) // 2]
        state.write_bytes(intact)

    code, output = _nas(root, env, ["--resume", str(out), "--project-dir", str(root)])
    assert code == 0, output[-3000:]
    summary = _check_finished_like_reference(root, out, reference, output)
    if stage in ("export", "registry"):
        assert "warning: " in output and "will be retrained from its seed" in output
        assert (out / "best_weights.pt").is_file()
    if stage == "final":
        assert summary["final"]["status"] == "ok" and summary["best"]["final_run_id"]
