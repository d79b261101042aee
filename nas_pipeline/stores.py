"""Where a project keeps its data and runs, and whether a tracking server answers: names and one HTTP check, so
that the checks before a search (which folders it writes, which store it uses) import no DVC, MLflow or torch."""

from __future__ import annotations

import os
from pathlib import Path

from nas_core.search.ports import InfrastructureError

DATA_DIR = "data"  # prepared datasets, one folder each
DVC_FILE = "data.dvc"  # DVC's record of the prepared data's version
DEFAULT_REMOTE = "local"
DEFAULT_REMOTE_URL = ".dvc-remote"  # given relative to the project; DVC stores it relative to .dvc/
DEFAULT_DB_NAME = "mlflow.db"  # the embedded MLflow store
ARTIFACTS_DIR_NAME = "mlartifacts"
REACHABLE_TIMEOUT_S = 5.0


class TrackingUnavailable(InfrastructureError):
    """The tracking store stayed unreachable (or busy) longer than the search's ``tracking_timeout``."""

    def __init__(self, tracking_uri: str, waited: float, cause: BaseException | None = None) -> None:
        first = (str(cause).splitlines() or [""])[0][:200] if cause is not None else ""
        why = f"{type(cause).__name__}: {first}" if cause is not None else "no answer"
        how_long = f"was unreachable or busy for {waited:.0f} s" if waited else "does not answer"
        super().__init__(f"the MLflow tracking store at {tracking_uri} {how_long} ({why})")
        self.tracking_uri, self.waited = tracking_uri, waited


def resolve_tracking_uri(project_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store inside the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(project_dir) / DEFAULT_DB_NAME).resolve()}"


def check_reachable(tracking_uri: str, timeout: float = REACHABLE_TIMEOUT_S) -> None:
    """Raise :class:`TrackingUnavailable` when a tracking server (``http(s)://``) does not answer within ``timeout``.

    Any HTTP answer counts (a proxy may have no ``/health``); database and file stores are not checked here.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout)
    except requests.exceptions.RequestException as exc:
        raise TrackingUnavailable(tracking_uri, 0, exc) from None
