"""The ``nas_search`` Prefect flow: a thin orchestration of :class:`nas_core.search.SearchRun`."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from flows.runners import placement, task_runner
from nas_core.candidate import CandidateJob, CandidateOutcome, run_candidate
from nas_core.config import SearchConfig
from nas_core.export import ExportReport
from nas_core.final import FinalModel, final_job, record_final
from nas_core.progress import ProgressReporter
from nas_core.search import CandidateRecord, DatasetRef, SearchRun, set_torch_threads
from nas_core.tracking import is_transient

# Inputs here are live objects (the search state) or one-off jobs: never hash or persist them.
_task = task(cache_policy=NO_CACHE, persist_result=False)


def _transient_failure(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a candidate only for infrastructure hiccups (tracking store unreachable), never for its own failure."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


@_task
def prepare_dataset(run: SearchRun) -> DatasetRef:
    """Check and prepare the dataset, version it with DVC, open (or reopen) the search's MLflow run."""
    return run.prepare()


@_task
def propose_generation(run: SearchRun) -> list[CandidateJob]:
    """Ask the strategy for the next generation of unseen genomes (after a resume: the unfinished ones)."""
    return run.propose()


@task(
    cache_policy=NO_CACHE, persist_result=False, retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_transient_failure
)
def train_candidate(job: CandidateJob) -> CandidateOutcome:
    """Train and evaluate one genome under its own nested MLflow run, wherever the task runner puts it."""
    return run_candidate(job)


@_task
def select_and_mutate(run: SearchRun) -> CandidateRecord | None:
    """Feed the generation's results back to the strategy (selection and inheritance) and checkpoint it."""
    return run.select()


@_task
def record_final_model(run: SearchRun, outcome: CandidateOutcome) -> FinalModel:
    """Keep the retrained winner as the model to export; link its MLflow run with the candidate's and the search's."""
    return record_final(run, outcome)


@_task
def export_onnx(run: SearchRun) -> ExportReport:
    """Export the best candidate to ONNX, check it, compare it with PyTorch, log it."""
    return run.export()


@flow(name="nas_search", log_prints=False)
def nas_search(
    config: dict[str, Any], search_id: str | None = None, show_progress: bool = True, resume: bool = False
) -> dict[str, Any]:
    """Search for an architecture: prepare data, then propose / train / select until the budget, then export.

    With ``resume``, continue the search whose state is in ``config['output']`` under the same MLflow run.
    """
    run = SearchRun(SearchConfig(**config), search_id, resume=resume)
    set_torch_threads(run.config.workers)
    progress = ProgressReporter(run.planned_evaluations(), quiet=not show_progress, slots=run.config.workers)
    try:
        progress.stage("preparing data")
        prepare_dataset(run)
        progress.resumed(run.records, run.killed_on_resume)
        run.on_record = progress
        while jobs := propose_generation(run):
            progress.stage(f"training generation {run.generation}")
            with run.timed("candidates"):
                with placement(run.config):
                    futures = [train_candidate.submit(job) for job in jobs]
                progress.submitted(len(futures))
                for future in as_completed(futures):
                    run.record(future.result())  # checkpointed as each one ends
            select_and_mutate(run)
        if final := final_job(run):
            progress.stage(f"final training ({final.train.epochs} epochs)")
            with run.timed("final"), placement(run.config):
                record_final_model(run, train_candidate.submit(final).result())
        report = None
        if run.can_export():
            progress.stage("exporting ONNX")
            report = export_onnx(run)
        progress.stage("writing summary, plots and report")
        return run.finish(report)
    except BaseException as exc:
        run.abort(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        progress.close()


def search_flow(config: SearchConfig):
    """The flow with the task runner the config asks for (threads, processes or Dask)."""
    return nas_search.with_options(task_runner=task_runner(config))
