"""The ``nas_search`` Prefect flow: a thin orchestration of :class:`nas_core.search.SearchRun`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from nas_core.config import SearchConfig
from nas_core.export import ExportReport
from nas_core.progress import ProgressReporter
from nas_core.search import CandidateRecord, DatasetRef, SearchRun, set_torch_threads
from nas_core.strategies import Proposal

# Inputs here are live objects (models, the search state): never hash or persist them.
_task = task(cache_policy=NO_CACHE, persist_result=False)


@_task
def prepare_dataset(run: SearchRun) -> DatasetRef:
    """Prepare the dataset, version it with DVC, open the search's MLflow run."""
    return run.prepare()


@_task
def propose_generation(run: SearchRun) -> list[Proposal]:
    """Ask the strategy for the next generation of unseen genomes."""
    return run.propose()


@_task
def train_candidate(run: SearchRun, proposal: Proposal, index: int) -> CandidateRecord:
    """Train and evaluate one genome under its own nested MLflow run."""
    return run.evaluate(proposal, index)


@_task
def select_and_mutate(run: SearchRun, records: list[CandidateRecord]) -> CandidateRecord | None:
    """Feed results back to the strategy (selection and inheritance) and checkpoint it."""
    return run.select(records)


@_task
def export_onnx(run: SearchRun) -> ExportReport:
    """Export the best candidate to ONNX, check it, compare it with PyTorch, log it."""
    return run.export()


@flow(name="nas_search", log_prints=False)
def nas_search(config: dict[str, Any], search_id: str | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Search for an architecture: prepare data, then propose / train / select until the budget, then export."""
    run = SearchRun(SearchConfig(**config), search_id)
    if show_progress:
        run.on_record = ProgressReporter(run.config.budget)
    set_torch_threads(run.config.workers)
    prepare_dataset(run)
    try:
        while run.remaining() > 0:
            proposals = propose_generation(run)
            if not proposals:
                break  # the space has no unseen architecture left
            start = len(run.records)
            futures = [train_candidate.submit(run, p, start + i + 1) for i, p in enumerate(proposals)]
            select_and_mutate(run, [f.result() for f in futures])
        report = export_onnx(run) if run.can_export() else None
    except BaseException as exc:
        run.abort(f"{type(exc).__name__}: {exc}")
        raise
    return run.finish(report)


def search_flow(workers: int):
    """The flow with a task runner that trains ``workers`` candidates at once."""
    return nas_search.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))
