"""The ``nas_search`` Prefect flow: the core's search loop with its steps as tasks and its evaluations on the
task runner (threads, processes or Dask)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.runners import placement, task_runner
from nas_core.config import SearchConfig
from nas_core.evaluation.worker import evaluate, set_torch_threads
from nas_core.search.loop import Search
from nas_core.search.progress import ProgressReporter
from nas_core.search.records import EvaluationRequest, EvaluationResult
from nas_pipeline.mlflow_tracking import is_transient
from nas_pipeline.pipeline import build_search

T = TypeVar("T")


def _transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry an evaluation only for infrastructure hiccups (tracking store unreachable), never for its own failure."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


# Inputs here are live objects (the search state) or one-off requests: never hash or persist them.
@task(cache_policy=NO_CACHE, persist_result=False)
def search_step(step: Callable[[], T]) -> T:
    """One step of the search loop (prepare, propose, select, export, finish)."""
    return step()


@task(
    cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_transient_failure
)
def train_candidate(request: EvaluationRequest) -> EvaluationResult:
    """Train and evaluate one genome under its own nested MLflow run, wherever the task runner puts it."""
    return evaluate(request)


def _on_task_runner(
    search: Search, observer: ProgressReporter
) -> Callable[[list[EvaluationRequest]], Iterator[EvaluationResult]]:
    def evaluate_all(requests: list[EvaluationRequest]) -> Iterator[EvaluationResult]:
        with placement(search.config):
            futures = [train_candidate.submit(request) for request in requests]
        observer.submitted(len(futures))
        for future in as_completed(futures):
            yield future.result()  # recorded and checkpointed as each one ends

    return evaluate_all


def _as_task(name: str, step: Callable[[], T]) -> T:
    return search_step.with_options(name=name)(step)


@flow(name="nas_search", log_prints=False)
def nas_search(
    config: dict[str, Any], search_id: str | None = None, show_progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Search for an architecture: prepare data, then propose / train / select until the budget, then export.

    With ``resume``, continue the search whose state is in ``config['output']`` under the same MLflow run.
    """
    search_config = SearchConfig(**config)
    search = build_search(search_config, search_id, resume=resume)
    progress = ProgressReporter(search.planned_evaluations(), quiet=not show_progress, slots=search_config.workers)
    search.observer = progress
    set_torch_threads(search.config.workers)
    try:
        return search.run(_on_task_runner(search, progress), _as_task).to_dict()
    finally:
        progress.close()


def search_flow(config: SearchConfig):
    """The flow with the task runner the config asks for (threads, processes or Dask)."""
    return nas_search.with_options(task_runner=task_runner(config))
