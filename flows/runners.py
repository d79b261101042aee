"""Where candidates train: threads or processes of this machine, or a Dask cluster (GPUs as worker resources)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from nas_core.config import SearchConfig
from nas_core.evaluation.devices import trains_on_gpus

GPU_RESOURCE = "GPU"  # start Dask workers with `--resources GPU=<gpus on that worker>`


def task_runner(config: SearchConfig) -> TaskRunner:
    """The Prefect task runner for ``config.runner``: ``workers`` candidates at once on this machine, or Dask.

    ``dask`` with no address starts a local cluster of ``workers`` single-threaded worker processes;
    with an address, candidates go to the existing cluster's workers (their count sets the parallelism).
    """
    if config.runner == "processes":
        return ProcessPoolTaskRunner(max_workers=config.workers)
    if config.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if config.dask_address:
            return DaskTaskRunner(address=config.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": config.workers, "threads_per_worker": 1, "processes": True})
    return ThreadPoolTaskRunner(max_workers=config.workers)


def uses_gpus(config: SearchConfig) -> bool:
    """Whether candidates will train on GPUs (on a Dask cluster the workers' GPUs are not visible here)."""
    return trains_on_gpus(config.device, remote_cluster=config.runner == "dask" and bool(config.dask_address))


@contextlib.contextmanager
def placement(config: SearchConfig) -> Iterator[None]:
    """Submit candidates inside this block: on Dask with GPUs, each one claims 1/candidates_per_gpu of a GPU."""
    if config.runner != "dask" or not uses_gpus(config):
        yield
        return
    import dask

    resources: dict[str, Any] = {GPU_RESOURCE: 1 / config.max_candidates_per_gpu}  # Dask's resources are fixed
    with dask.annotate(resources=resources):
        yield
