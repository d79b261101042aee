"""The real pipeline end to end: Prefect flow (test harness), MLflow SQLite store, git+DVC project, ONNX out."""

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from mlflow.tracking import MlflowClient
from prefect.task_runners import ThreadPoolTaskRunner

from flows.search import nas_search
from nas_pipeline.dvc_versioning import DvcDataStore, tracked_version
from nas_pipeline.onnx_export import read_metadata
from tests.conftest import git_status, make_project, shared_prefect_harness

BUDGET, EPOCHS = 5, 2


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("e2e") / "project")
    config = {"project_dir": str(project), "output": str(project / "out"), "budget": BUDGET, "epochs": EPOCHS,
              "population": 3, "workers": 2, "seed": 0, "strategy": "evolution"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp, shared_prefect_harness():
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        flow = nas_search.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
        summary = flow(config, search_id="e2e-search", show_progress=False)
    client = MlflowClient(summary["mlflow_tracking_uri"])
    return project, summary, client


def _children(client, summary):
    parent = client.get_run(summary["mlflow_run_id"])
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, {r.info.run_id: r for r in runs}


def test_tracking_store_is_the_sqlite_file_in_the_project(searched):
    project, summary, _ = searched
    assert summary["mlflow_tracking_uri"] == f"sqlite:///{project / 'mlflow.db'}"
    assert (project / "mlflow.db").is_file()


def test_one_nested_run_per_candidate_with_its_tags(searched):
    project, summary, client = searched
    parent, children = _children(client, summary)
    assert parent.info.status == "FINISHED"
    assert len(children) == len(summary["candidates"]) == BUDGET
    version = tracked_version(project)
    hashes = set()
    for run in children.values():
        tags = run.data.tags
        for key in ("nas.generation", "nas.strategy", "nas.parents", "nas.hash", "nas.status", "nas.dataset_version"):
            assert key in tags, key
        assert tags["nas.dataset_version"] == version == summary["dataset"]["version"]
        assert tags["nas.strategy"] == "evolution"
        assert run.info.status == ("FINISHED" if tags["nas.status"] == "ok" else "FAILED")
        assert any(k.startswith("node.") and k.endswith(".op") for k in run.data.params)
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == list(range(1, EPOCHS + 1))
        genome_path = client.download_artifacts(run.info.run_id, "genome.json")
        genome = json.loads(Path(genome_path).read_text())
        assert {n["op"] for n in genome["nodes"]} >= {"input", "output"}
        for parent_id in filter(None, tags["nas.parents"].split(",")):
            assert parent_id in children
        hashes.add(tags["nas.hash"])
    assert len(hashes) == BUDGET, "no architecture may be trained twice"


def test_dataset_version_is_the_committed_digits_hash(searched):
    project, summary, _ = searched
    from tests.conftest import REPO_ROOT

    assert summary["dataset"] == {"name": "digits", "version": tracked_version(REPO_ROOT)}


def test_summary_agrees_with_mlflow(searched):
    _, summary, client = searched
    _, children = _children(client, summary)
    for candidate in summary["candidates"]:
        run = children[candidate["mlflow_run_id"]]
        assert run.data.tags["nas.hash"] == candidate["hash"]
        assert run.data.tags["nas.status"] == candidate["status"]
        if candidate["status"] == "ok":
            assert run.data.metrics["val_accuracy"] == pytest.approx(candidate["val_accuracy"])
    ok = [c for c in summary["candidates"] if c["status"] == "ok"]
    best = summary["best"]
    assert best["val_accuracy"] == max(c["val_accuracy"] for c in ok)
    best_run = client.get_run(best["mlflow_run_id"])
    assert best_run.data.metrics["test_accuracy"] == pytest.approx(best["test_accuracy"])
    for key in ("hash", "val_accuracy", "test_accuracy", "test_f1", "params", "flops", "onnx_path", "onnx_max_abs_diff"):
        assert key in best


def test_onnx_model_passes_checker_parity_and_carries_its_lineage(searched):
    project, summary, _ = searched
    best = summary["best"]
    path = best["onnx_path"]
    onnx.checker.check_model(path, full_check=True)
    assert best["onnx_max_abs_diff"] <= 1e-4
    meta = read_metadata(path)
    assert meta["nas.hash"] == best["hash"]
    assert meta["nas.dataset_version"] == summary["dataset"]["version"]
    assert meta["nas.candidate_run_id"] == best["mlflow_run_id"]
    assert json.loads(meta["nas.metrics"])["val_accuracy"] == pytest.approx(best["val_accuracy"])
    # the exported model reproduces the recorded test accuracy on the real test split
    x = np.load(project / "data" / "digits" / "test_x.npy")
    y = np.load(project / "data" / "digits" / "test_y.npy")
    logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert float(np.mean(logits.argmax(axis=1) == y)) == pytest.approx(best["test_accuracy"], abs=1.5 / len(y))


def test_model_and_summary_are_logged_on_the_parent_run(searched):
    _, summary, client = searched
    names = {a.path for a in client.list_artifacts(summary["mlflow_run_id"])}
    assert "summary.json" in names
    assert "model/model.onnx" in {a.path for a in client.list_artifacts(summary["mlflow_run_id"], "model")}


def test_state_checkpoint_lists_every_finished_candidate(searched):
    project, summary, _ = searched
    state = json.loads((project / "out" / "state.json").read_text())
    finished = sorted(state["finished"], key=lambda c: c["index"])  # in the order they finished
    assert [c["hash"] for c in finished] == [c["hash"] for c in summary["candidates"]]
    assert state["in_flight"] == [], "no generation is left in flight at the end"
    json.dumps(state["strategy"])  # plain data


def test_rerunning_preparation_leaves_a_committed_clone_clean(searched):
    project, _, _ = searched
    subprocess.run(["git", "add", "-A"], cwd=project, check=True)
    subprocess.run(["git", "commit", "-qm", "after a search"], cwd=project, check=True)
    DvcDataStore(project).prepare("digits")
    assert git_status(project) == ""
