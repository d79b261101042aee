"""MLflow: one parent run per search, one nested run per candidate, retried when the store is busy."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

T = TypeVar("T")
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACTS_DIR_NAME = "mlartifacts"
TAG_PREFIX = "nas."


def resolve_tracking_uri(project_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store inside the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(project_dir) / DEFAULT_DB_NAME).resolve()}"


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def _retry(call: Callable[[], T], attempts: int = 6, delay: float = 0.2) -> T:
    """Retry a store call that failed because the store was busy (SQLite lock, server hiccup)."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as exc:
            transient = "locked" in str(exc).lower() or "temporarily" in str(exc).lower()
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")


def _params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


def _tags(values: Mapping[str, Any]) -> list[RunTag]:
    return [RunTag(str(k), str(v)) for k, v in values.items()]


class SearchTracker:
    """Records a search in one MLflow experiment; safe to share between threads."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        found = _retry(lambda: self.client.get_experiment_by_name(experiment))
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            local = tracking_uri.startswith(("sqlite:", "file:")) and artifact_root is not None
            location = Path(artifact_root).resolve().as_uri() if local else None
            self.experiment_id = _retry(lambda: self.client.create_experiment(experiment, artifact_location=location))

    def start_run(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any],
        parent_run_id: str | None = None,
    ) -> str:
        """Create a run (nested under ``parent_run_id`` when given) with its params and tags; return its id."""
        run_tags = {MLFLOW_RUN_NAME: name, **{f"{TAG_PREFIX}{k}": v for k, v in tags.items()}}
        if parent_run_id:
            run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        run = _retry(lambda: self.client.create_run(self.experiment_id, tags=run_tags, run_name=name))
        run_id = run.info.run_id
        if params:
            items = _params(params)
            for i in range(0, len(items), 100):
                _retry(lambda chunk=items[i : i + 100]: self.client.log_batch(run_id, params=chunk))
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        _retry(lambda: self.client.log_batch(run_id, metrics=batch))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        _retry(lambda: self.client.log_batch(run_id, tags=_tags({f"{TAG_PREFIX}{k}": v for k, v in tags.items()})))

    def log_json(self, run_id: str, data: Any, artifact_file: str) -> None:
        _retry(lambda: self.client.log_text(run_id, json.dumps(data, indent=2), artifact_file))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, str(path), artifact_path))

    def end_run(self, run_id: str, ok: bool) -> None:
        _retry(lambda: self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED"))
