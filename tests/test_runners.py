"""Task runners: threads, processes, and a real local Dask cluster of two worker processes running a real search."""

import os

import dask
import pytest
import torch
from distributed import LocalCluster
from mlflow.tracking import MlflowClient
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect.testing.utilities import prefect_test_harness
from prefect_dask import DaskTaskRunner

from flows.runners import GPU_RESOURCE, placement, task_runner, uses_gpus
from flows.search import search_flow
from nas_core.config import ConfigError, SearchConfig, load_config
from tests.conftest import make_project


def test_the_runner_follows_the_config():
    assert isinstance(task_runner(SearchConfig(workers=3)), ThreadPoolTaskRunner)
    processes = task_runner(SearchConfig(runner="processes", workers=2))
    assert isinstance(processes, ProcessPoolTaskRunner) and processes._max_workers == 2
    local = task_runner(SearchConfig(runner="dask", workers=2))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    remote = task_runner(SearchConfig(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786"


def test_a_dask_address_without_the_dask_runner_is_refused():
    with pytest.raises(ConfigError, match="runner 'dask'"):
        load_config(None, {"dask_address": "tcp://10.0.0.5:8786"})


def test_gpu_candidates_claim_a_share_of_a_gpu_resource_on_dask(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    config = SearchConfig(runner="dask", candidates_per_gpu=2)
    assert uses_gpus(config)
    with placement(config):
        assert dask.get_annotations() == {"resources": {GPU_RESOURCE: 0.5}}
    with placement(SearchConfig(runner="dask", device="cpu")):
        assert "resources" not in dask.get_annotations()
    with placement(SearchConfig(runner="threads")):
        assert "resources" not in dask.get_annotations()


def test_on_cpu_nothing_claims_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert not uses_gpus(SearchConfig())
    assert not uses_gpus(SearchConfig(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert uses_gpus(SearchConfig(runner="dask", dask_address="tcp://10.0.0.5:8786", device="cuda"))


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
    with prefect_test_harness():
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


@pytest.mark.parametrize(("device", "message"), [("cuda", "no CUDA device is visible"), ("7", "out of range")])
def test_asking_for_gpus_that_are_not_there_is_one_line(tmp_path, monkeypatch, capsys, device, message):
    from flows.cli import EXIT_USAGE, main

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--device", device, "--output", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists(), "nothing is written"
