"""Task runners: threads, processes or Dask as the config says, GPU shares on Dask, one-line errors for missing GPUs.

The real search on worker processes (a local Dask cluster, Prefect's process pool) is in tests/e2e/test_task_runners.py.
"""

import dask
import pytest
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.runners import GPU_RESOURCE, placement, task_runner, uses_gpus
from nas_core.config import ConfigError, SearchConfig, load_config
from nas_core.evaluation import devices


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
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)
    config = SearchConfig(runner="dask", candidates_per_gpu=2)
    assert uses_gpus(config)
    with placement(config):
        assert dask.get_annotations() == {"resources": {GPU_RESOURCE: 0.5}}
    with placement(SearchConfig(runner="dask", device="cpu")):
        assert "resources" not in dask.get_annotations()
    with placement(SearchConfig(runner="threads")):
        assert "resources" not in dask.get_annotations()


def test_on_cpu_nothing_claims_gpus(monkeypatch):
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    assert not uses_gpus(SearchConfig())
    assert not uses_gpus(SearchConfig(runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert uses_gpus(SearchConfig(runner="dask", dask_address="tcp://10.0.0.5:8786", device="cuda"))


@pytest.mark.parametrize(("device", "message"), [("cuda", "no CUDA device is visible"), ("7", "out of range")])
def test_asking_for_gpus_that_are_not_there_is_one_line(tmp_path, monkeypatch, capsys, device, message):
    from flows.cli import EXIT_USAGE, main

    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--device", device, "--output", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "out").exists(), "nothing is written"
