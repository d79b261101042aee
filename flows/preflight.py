"""Before a search starts: every place it will write to can be written (checked without writing anything, but for
the output folder, which is created), and a tracking server it is told to use answers.

The places are the adapters' own: DVC's (``data/``, ``data.dvc``, ``.dvc/``, the default remote), MLflow's (a local
store and ``mlartifacts/``) and Prefect's home. A read-only or full file system is reported here, in one line,
instead of as a failure in the middle of the search.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from nas_core.data.preparation import dataset_folder

if TYPE_CHECKING:
    from nas_core.config import SearchConfig

MIN_FREE_BYTES = 64 * 1024  # less cannot hold even a search's first state files (search.json, state.json)
PREFECT_DIR = ".prefect"  # PREFECT_HOME inside the project unless set (flows.cli._prefect_environment)
_PROJECT_FIX = "make it writable or pass another --project-dir"


class NotWritable(Exception):
    """A place the search writes to cannot be written: the message is one line saying which and why."""


@dataclass(frozen=True)
class Place:
    """A file or folder the search writes; ``what`` names it for the user, ``fix`` says what to do instead."""

    path: Path
    what: str
    fix: str


def _local_store(uri: str) -> Path | None:
    """The file or folder of a local MLflow store (``sqlite:///``, ``file:`` or a plain path); None for a server."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    if parsed.scheme == "file":
        return Path(parsed.path)
    return Path(uri) if parsed.scheme == "" else None


def data_places(project_dir: Path, dataset: str) -> list[Place]:
    """Where preparing ``dataset`` writes: the project folder, ``data/<folder>/``, ``data.dvc``, ``.dvc/``, the remote."""
    from nas_pipeline.stores import DATA_DIR, DEFAULT_REMOTE_URL, DVC_FILE

    root = Path(project_dir).resolve()
    return [
        Place(root, "project folder", _PROJECT_FIX),
        Place(root / DATA_DIR, "prepared data folder", _PROJECT_FIX),
        Place(root / DATA_DIR / dataset_folder(dataset), "prepared data folder", _PROJECT_FIX),
        Place(root / DVC_FILE, "DVC's data version file", _PROJECT_FIX),
        Place(root / ".dvc", "DVC's folder", _PROJECT_FIX),
        Place(root / ".dvc" / "cache", "DVC's cache", _PROJECT_FIX),
        Place(root / DEFAULT_REMOTE_URL, "DVC's default remote", _PROJECT_FIX),
    ]


def search_places(config: SearchConfig) -> list[Place]:
    """Where a new search of ``config`` writes, besides its output folder: its data (unless it searches a table),
    the MLflow store when it is local, and Prefect's home."""
    from nas_pipeline.stores import ARTIFACTS_DIR_NAME, resolve_tracking_uri

    root = Path(config.project_dir).resolve()
    places = [Place(root, "project folder", _PROJECT_FIX)]
    if config.table_path is None:
        places = data_places(root, config.dataset)
    store = _local_store(resolve_tracking_uri(root))
    if store is not None:
        fix = "set MLFLOW_TRACKING_URI to a writable store" if "MLFLOW_TRACKING_URI" in os.environ else _PROJECT_FIX
        places += [
            Place(store, "MLflow store", fix),
            Place(store.parent, "MLflow store's folder", fix),
            Place(root / ARTIFACTS_DIR_NAME, "MLflow artifact folder", _PROJECT_FIX),
        ]
    home = os.environ.get("PREFECT_HOME")
    if home:
        places.append(Place(Path(home).expanduser(), "Prefect home (PREFECT_HOME)", "set PREFECT_HOME to a writable folder"))
    else:
        places.append(Place(root / PREFECT_DIR, "Prefect home", _PROJECT_FIX))
    return places


def _reason(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def check_place(place: Place) -> None:
    """Raise NotWritable unless ``place`` (or, when it does not exist yet, the folder it goes into) can be written
    and its file system has :data:`MIN_FREE_BYTES` free."""
    path = Path(os.path.abspath(place.path))
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        raise NotWritable(f"{place.what} '{path}' cannot be created: '{existing}' is not a folder; {place.fix}")
    folder = existing if existing.is_dir() else existing.parent
    needed = os.W_OK | os.X_OK if existing.is_dir() else os.W_OK
    if not os.access(existing, needed):
        raise NotWritable(f"{place.what} '{existing}' is not writable ({_reason(folder)}); {place.fix}")
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise NotWritable(f"{place.what} '{existing}' is on a full file system ({free // 1024} KiB free); {place.fix}")


def check_places(places: list[Place]) -> None:
    """:func:`check_place` for each place, in order: the first problem is reported."""
    for place in places:
        check_place(place)


def make_output_folder(folder: Path) -> None:
    """Create ``folder`` (the search's --output) and check a file can be written there with room to spare; on
    failure remove what was created and raise NotWritable."""
    if folder.exists() and not folder.is_dir():
        raise NotWritable(f"output '{folder}' exists and is not a folder; pass another --output")
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        if shutil.disk_usage(folder).free < MIN_FREE_BYTES:  # a full disk still takes an empty file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as exc:
        for path in created:
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        raise NotWritable(f"output folder '{folder}' is not writable ({exc.strerror}); pass a writable --output") from None


def unreachable_tracking_server() -> str | None:
    """Why the tracking server set by MLFLOW_TRACKING_URI cannot be used (it does not answer in 5 s), else None.

    Checked before anything is written or started. Not the user's input (the server is down): exit code 1.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return None
    from nas_pipeline.stores import TrackingUnavailable, check_reachable

    try:
        check_reachable(uri)
    except TrackingUnavailable as exc:
        return f"{exc}; start it, or unset MLFLOW_TRACKING_URI to use the project's mlflow.db"
    return None


def warm_start_problem(config: SearchConfig) -> str | None:
    """Why the earlier searches ``warm_start`` names cannot be used (unknown, another space), else None; reads only."""
    from nas_core.config import warm_start_searches

    if warm_start_searches(config.warm_start) is None:
        return None
    from nas_core.search.memory import WarmStartError
    from nas_core.search.warm_start import check_warm_start
    from nas_pipeline.mlflow_memory import earlier_searches
    from nas_pipeline.stores import resolve_tracking_uri

    uri = resolve_tracking_uri(config.project_dir)
    try:
        check_warm_start(config, earlier_searches(uri, config.experiment_name), uri)
    except WarmStartError as exc:
        return str(exc)
    return None
