"""Scheduled searches: a Prefect deployment of the search with a cron schedule, for a process work pool or ``serve``.

The deployed flow, ``nas_scheduled_search``, runs the ``nas_search`` flow as a subflow with the task runner its
settings ask for (threads, processes or Dask, ``workers`` at a time), and gives every run a new output folder,
``<project_dir>/outputs/<search id>``. ``prefect.yaml`` and ``nas deploy`` both deploy it.
"""

from __future__ import annotations

import os
import zoneinfo
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.schedules import Cron, Schedule

from nas_core.config import ConfigError, SearchConfig, load_config, with_default_workers

REPO_DIR = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/deployments.py:scheduled_search"  # relative to REPO_DIR, the deployment's working directory
FLOW_NAME = "nas_scheduled_search"
DEFAULT_NAME = "nightly"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_POOL = "nas-pool"
POOL_TYPE = "process"
CONCURRENCY = 1  # runs of one deployment share the project's data (DVC) and MLflow store: one at a time, later ones wait
DESCRIPTION = "Architecture search with the settings in its parameters; each run writes <project_dir>/outputs/<search id>."


class DeployError(Exception):
    """The deployment cannot be made as asked (bad cron, timezone or settings); the message says how to fix it."""


class ServerError(DeployError):
    """The Prefect server at ``PREFECT_API_URL`` does not answer."""


def cron_schedule(cron: str, timezone: str = DEFAULT_TIMEZONE) -> Schedule:
    """A validated cron schedule in an IANA timezone (e.g. ``Europe/Berlin``)."""
    from prefect._internal.schemas.validators import validate_cron_string

    try:
        validate_cron_string(cron)
    except (ValueError, TypeError) as exc:
        raise DeployError(f"invalid cron '{cron}' ({exc}); use five fields such as '0 2 * * *' (02:00 every day)") from None
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise DeployError(f"unknown timezone '{timezone}'; use an IANA name such as 'UTC' or 'Europe/Berlin'") from None
    return Cron(cron, timezone=timezone)


def _no_output(config: SearchConfig) -> None:
    if config.output is not None:
        raise DeployError(
            f"'output' is set ({config.output}); scheduled runs each write to <project_dir>/outputs/<search id>, "
            "remove 'output' from the settings"
        )


def search_parameters(config: SearchConfig) -> dict[str, Any]:
    """The deployment's parameters: the settings given explicitly, with absolute paths (``project_dir`` always).

    Settings left out (``workers`` above all) take their defaults on the machine that runs the search.
    """
    _no_output(config)
    values = config.model_dump(mode="json", include=set(config.model_fields_set) - {"output"})
    values["project_dir"] = str(Path(config.project_dir).resolve())
    if config.init_genome is not None:
        values["init_genome"] = str(Path(config.init_genome).resolve())
    if config.table_path is not None:
        values["evaluator"] = f"table:{config.table_path.resolve()}"
    return {"config": values}


SCHEDULED_WARM_START = "auto"  # a scheduled run continues the earlier runs in its experiment, unless told otherwise


def run_settings(config: dict[str, Any] | None, config_file: str | None, search_id: str) -> SearchConfig:
    """The settings of one scheduled run: ``config_file`` (read now) overridden by ``config``; paths made absolute;
    ``warm_start`` auto unless set."""
    settings = load_config(Path(config_file) if config_file else None, config or {})
    warm = {} if "warm_start" in settings.model_fields_set else {"warm_start": SCHEDULED_WARM_START}
    try:
        _no_output(settings)
    except DeployError as exc:
        raise ConfigError(str(exc)) from None
    project_dir = settings.project_dir.resolve()
    return settings.model_copy(update={"project_dir": project_dir, "output": project_dir / "outputs" / search_id, **warm})


@flow(name=FLOW_NAME, log_prints=False)
def scheduled_search(config: dict[str, Any] | None = None, config_file: str | None = None) -> dict[str, Any]:
    """One scheduled architecture search into ``<project_dir>/outputs/<search id>``.

    Settings: the YAML ``config_file`` (read when the run starts, relative to the working directory), then ``config``.
    """
    from flows.search import search_flow
    from nas_core.search.setup import new_search_id
    from nas_core.search.summary import SearchSummary

    search_id = new_search_id()
    settings = with_default_workers(run_settings(config, config_file, search_id))  # as `nas search`: GPUs x candidates/GPU
    logger = get_run_logger()
    logger.info(
        "search %s: %s on %s, %d candidates x %d epochs, %d in parallel (%s) -> %s",
        search_id, settings.strategy, settings.dataset, settings.budget, settings.epochs, settings.workers,
        settings.runner, settings.output,
    )  # fmt: skip
    result = search_flow(settings)(settings.model_dump(mode="json"), search_id=search_id, show_progress=False)
    summary = SearchSummary.from_dict(result)
    best = summary.best
    if best is None:
        raise RuntimeError(f"search {search_id}: every candidate failed; see the failure_reason tags of its runs in MLflow")
    logger.info(
        "search %s: best %s val_acc %.4f; summary %s; MLflow: %s",
        search_id, best.hash[:12], best.val_accuracy, summary.folder / "summary.json", summary.mlflow_ui,
    )  # fmt: skip
    return result


def api_url() -> str:
    """The Prefect server's API URL (``PREFECT_API_URL``); it must answer its health check."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeployError(
            "no Prefect server: start one with `prefect server start` and "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`, then deploy again"
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ServerError(
            f"the Prefect server at {url} does not answer ({type(problem).__name__}); is `prefect server start` running?"
        )
    return url


def ensure_process_pool(name: str) -> bool:
    """Create the process work pool ``name`` unless it exists; whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template))
            return True
    if pool.type != POOL_TYPE:
        raise DeployError(
            f"work pool '{name}' is a '{pool.type}' pool; scheduled searches need a '{POOL_TYPE}' pool: pass another --pool"
        )
    return False


def _job_variables() -> dict[str, Any]:
    # Runs log where `nas deploy` would have: a tracking server given now stays the deployment's.
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return {"env": {"MLFLOW_TRACKING_URI": uri}} if uri else {}


def register(parameters: dict[str, Any], schedule: Schedule, name: str = DEFAULT_NAME, pool: str = DEFAULT_POOL) -> UUID:
    """Register (or update) the deployment on the Prefect server; a worker of ``pool`` runs it from this checkout."""
    deployable = scheduled_search.from_source(source=str(REPO_DIR), entrypoint=ENTRYPOINT)
    deployment = deployable.to_deployment(
        name=name,
        work_pool_name=pool,
        schedules=[schedule],
        parameters=parameters,
        job_variables=_job_variables(),
        tags=["nas"],
        description=DESCRIPTION,
        concurrency_limit=CONCURRENCY,
    )
    return deployment.apply(work_pool_name=pool)


def serve(parameters: dict[str, Any], schedule: Schedule, name: str = DEFAULT_NAME) -> None:
    """Register the deployment and run its scheduled runs from this process until interrupted."""
    scheduled_search.serve(
        name=name, schedules=[schedule], parameters=parameters, tags=["nas"], description=DESCRIPTION, global_limit=CONCURRENCY
    )


def ui_url(deployment_id: UUID | None = None) -> str | None:
    """Where the Prefect UI shows the deployment (or all of them), when a server is configured."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    if not base:
        return None
    return f"{base}/deployments/deployment/{deployment_id}" if deployment_id else f"{base}/deployments"
