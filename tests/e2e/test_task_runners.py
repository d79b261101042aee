"""Task runners for real: candidates train in two other processes, a local Dask cluster of two worker processes or
Prefect's process pool, and log to MLflow (moved from tests/flows/test_runners.py)."""

import os

import pytest
from distributed import LocalCluster
from mlflow.tracking import MlflowClient

from flows.search import search_flow
from nas_core.config import SearchConfig
from tests.conftest import make_project, shared_prefect_harness


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


@pytest.mark.parametrize("runner", ["dask", "processes"])
def test_a_real_search_on_worker_processes(tmp_path, monkeypatch, cluster, runner):
    """Candidates train in two other processes (a real Dask cluster, or Prefect's process pool), log to MLflow."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = make_project(tmp_path / "project")
    address = cluster.scheduler_address if runner == "dask" else None
    config = SearchConfig(project_dir=project, output=project / "out", budget=4, epochs=2, population=4, workers=2,
                          runner=runner, dask_address=address)  # fmt: skip
    with shared_prefect_harness():
        summary = search_flow(config)(config.model_dump(mode="json"), search_id=f"on-{runner}", show_progress=False)
    assert len(summary["candidates"]) == 4 and summary["best"] is not None
    assert os.path.isfile(summary["best"]["onnx_path"])
    client = MlflowClient(summary["mlflow_tracking_uri"])
    runs = [client.get_run(c["mlflow_run_id"]) for c in summary["candidates"]]
    assert all(r.info.status == "FINISHED" for r in runs)
    workers = {r.data.tags["nas.worker"] for r in runs}
    pids = {int(w.rsplit(":", 1)[1]) for w in workers}
    assert len(pids) == 2 and os.getpid() not in pids, f"two worker processes trained the candidates: {workers}"
    if runner == "dask":
        dask_pids = set(cluster.get_client().run(os.getpid).values())
        assert pids == dask_pids
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert [m.step for m in history] == [1, 2]
