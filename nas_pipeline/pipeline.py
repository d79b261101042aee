"""A search wired to the tools: MLflow for runs, DVC for data, ONNX + the model registry + the handoff bundle for
export, plots and an HTML report at the end. The one place that chooses the adapters."""

from __future__ import annotations

from pathlib import Path

from nas_core.config import SearchConfig
from nas_core.search.checkpoint import SEARCH_FILE, ResumeError, read_saved_search
from nas_core.search.loop import Search
from nas_core.search.ports import Observer
from nas_pipeline.dvc_versioning import DvcDataStore
from nas_pipeline.exporting import OnnxExporter
from nas_pipeline.latency import OnnxTimer
from nas_pipeline.mlflow_tracking import ARTIFACTS_DIR_NAME, MlflowTracker, outer_mlflow_run, resolve_tracking_uri
from nas_pipeline.report import HtmlReporter


def build_search(
    config: SearchConfig, search_id: str | None = None, resume: bool = False, observer: Observer | None = None
) -> Search:
    """The search ``config`` asks for, recorded in MLflow, its data versioned by DVC, its best model exported."""
    project_dir = Path(config.project_dir).resolve()

    def connect_tracker() -> MlflowTracker:
        uri = resolve_tracking_uri(project_dir)
        outer = None if resume else outer_mlflow_run(uri)
        if outer is not None:  # candidates go to the outer run's experiment, so that they nest under it
            return MlflowTracker.attach(uri, outer.info.experiment_id, config.tracking_timeout)
        return MlflowTracker(uri, config.experiment_name, project_dir / ARTIFACTS_DIR_NAME, config.tracking_timeout)

    return Search(
        config,
        DvcDataStore(project_dir),
        search_id=search_id,
        resume=resume,
        connect_tracker=connect_tracker,
        exporter=OnnxExporter(),
        reporter=HtmlReporter(),
        observer=observer,
        latency_timer=OnnxTimer(config.latency_threads, provider=config.latency_provider),
    )


def find_search_output(target: str, project_dir: Path) -> Path:
    """The output folder of the search to resume: ``target`` is that folder or the search id."""
    folder = Path(target)
    if folder.is_dir():
        read_saved_search(folder)  # says what is wrong with it
        return folder.resolve()
    guess = Path("outputs") / target
    if (guess / SEARCH_FILE).is_file():
        return guess.resolve()
    uri = resolve_tracking_uri(project_dir)
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():  # never create a store to look
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        query = f"tags.`nas.search_id` = '{target}' and tags.`nas.role` = 'search'"
        experiments = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(experiments, query) if experiments else []:
            output = Path(run.data.tags.get("nas.output", ""))
            if (output / SEARCH_FILE).is_file():
                return output
    raise ResumeError(f"no search output folder or search id '{target}' found (looked in outputs/ and MLflow at {uri})")
