"""DVC as the search's :class:`~nas_core.search.ports.DataStore`: a DVC repo with a local remote, ``data/`` tracked by
``data.dvc``, its hash the dataset version."""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from nas_core.data.preparation import PreparedData, load_prepared, prepare_dataset
from nas_core.data.store import DATA_SEED
from nas_core.search.ports import InfrastructureError
from nas_core.search.records import DatasetRef
from nas_pipeline.locks import machine_lock
from nas_pipeline.stores import DATA_DIR, DEFAULT_REMOTE, DEFAULT_REMOTE_URL, DVC_FILE


class VersioningError(InfrastructureError):
    """A DVC command failed or the tracked data file is broken."""


def run_dvc(root: Path, *args: str) -> str:
    """Run ``dvc ARGS`` in ``root`` with this interpreter's DVC; raise VersioningError with its message.

    Its output is captured, so no ``--quiet`` is needed: with it, DVC keeps its error to itself and prints only its
    support footer."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}  # no telemetry: offline it would only hang around
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {root}: {dvc_error(proc.stderr + proc.stdout, proc.returncode)}")
    return proc.stdout


def dvc_error(output: str, returncode: int) -> str:
    """DVC's own error line ("ERROR: ..."), not the support footer it prints after one; the exit code when none."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    return errors[-1] if errors else f"exit code {returncode}, no error message"


def _git_toplevel(root: Path) -> Path | None:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, check=False)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def _names_a_default_remote(root: Path) -> bool:
    """Whether the project's own DVC config (``.dvc/config`` or ``config.local``) sets ``core.remote``: read here,
    where asking ``dvc remote list`` costs a DVC process (most of a second)."""
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        try:
            parser.read(root / ".dvc" / name)
        except configparser.Error:
            continue
        if parser.get("core", "remote", fallback="").strip():
            return True
    return False


def ensure_repo(root: Path) -> None:
    """Initialise DVC in ``root`` if needed (beside git when there is one) with a default local remote."""
    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        top = _git_toplevel(root)
        flags = ["--no-scm"] if top is None else ([] if top == root else ["--subdir"])
        run_dvc(root, "init", *flags)
    if not _names_a_default_remote(root) and not run_dvc(root, "remote", "list").strip():
        run_dvc(root, "remote", "add", "--default", DEFAULT_REMOTE, DEFAULT_REMOTE_URL)


def track_data(root: Path) -> str:
    """``dvc add data`` (writing ``data.dvc`` at the root) and return the dataset version."""
    run_dvc(Path(root), "add", DATA_DIR)
    return tracked_version(root)


def push_data(root: Path) -> None:
    """``dvc push data.dvc`` through DVC's Python API: a few hundredths of a second in this process (once DVC is
    imported) where a ``dvc`` process costs most of a second, at every search."""
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            repo.push(targets=[str(Path(root) / DVC_FILE)])
    except Exception as exc:  # whatever the remote's filesystem raises (OSError, its client's errors): the push failed
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise VersioningError(f"`dvc push {DVC_FILE}` failed in {root}: {type(exc).__name__}: {first}") from None


def tracked_version(root: Path) -> str:
    """The hash recorded in ``data.dvc``: the dataset version logged everywhere."""
    path = Path(root) / DVC_FILE
    try:
        outs = yaml.safe_load(path.read_text())["outs"]
        return str(outs[0]["md5"])
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise VersioningError(f"cannot read the data version from {path}: {exc}") from None


FileStats = dict[str, tuple[int, int, int, int]]
VERIFIED_FILE = Path(".dvc") / "tmp" / "nas-verified.json"  # in DVC's own tmp folder, which git ignores


def _file_stats(folder: Path) -> FileStats:
    """Every file under ``folder``: size, modification and change times (ns) and inode. Any write or replacement
    changes one of them; the change time cannot be set back, so a rewrite that restores the old ``mtime`` shows too."""
    stats = {str(p.relative_to(folder)): p.stat() for p in folder.rglob("*") if p.is_file()}
    return {name: (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) for name, st in stats.items()}


def _remember_verified(root: Path, version: str, stats: FileStats) -> None:
    """Record that ``data/``, with these file stats, matched ``version`` (checked by DVC, or just ``dvc add``-ed)."""
    path = root / VERIFIED_FILE
    with contextlib.suppress(OSError):  # only a shortcut: without it the next check asks DVC again
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        scratch.write_text(json.dumps({"version": version, "files": stats}))
        os.replace(scratch, path)


def _verified_unchanged(root: Path, version: str) -> bool:
    """Whether DVC found ``data/`` matching ``version`` before and no file under it was written, added, removed or
    replaced since (the same stat shortcut DVC takes before rehashing a file, with the change time added)."""
    try:
        record = json.loads((root / VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("version") != version:
        return False
    files = record.get("files")
    return isinstance(files, dict) and {k: tuple(v) for k, v in files.items()} == _file_stats(root / DATA_DIR)


class DataIntegrityError(VersioningError):
    """The prepared data in the workspace does not match the version recorded in ``data.dvc``."""


_SHOWN_FILES = 5  # the error names this many changed files at most


def data_changes(root: Path) -> dict[str, list[str]]:
    """How ``data/`` differs from ``data.dvc``: ``{"modified"|"added"|"deleted": [paths]}``, empty when it matches.

    One ``dvc data status --granular`` call: DVC hashes the workspace (reusing its mtime-keyed hash cache) and
    compares it with the ``.dir`` manifest in the DVC cache. Without that manifest and DVC's index copy of it in
    ``.dvc/tmp`` (a clone that never pulled) only the directory hash is compared, so a mismatch is just
    ``{"modified": ["data/"]}``; ``"not_in_cache": ["data/"]`` is added to a mismatch whenever the cache lacks it.
    """
    status = json.loads(run_dvc(Path(root), "data", "status", "--json", "--granular", DATA_DIR) or "{}")
    uncommitted = status.get("uncommitted", {})
    changes: dict[str, list[str]] = {}
    for kind in ("modified", "added", "deleted"):
        paths = [p for p in uncommitted.get(kind, []) if isinstance(p, str)]
        files = [p for p in paths if not p.endswith(("/", os.sep))]
        if files or paths:
            changes[kind] = files or paths  # a directory entry alone means no file-level detail
    for rename in uncommitted.get("renamed", []):
        changes.setdefault("deleted", []).append(rename["old"])
        changes.setdefault("added", []).append(rename["new"])
    missing = [p for p in status.get("not_in_cache", []) if p.rstrip("/" + os.sep) == DATA_DIR]
    if changes and missing:
        changes["not_in_cache"] = missing
    return changes


def check_data(root: Path) -> None:
    """Raise DataIntegrityError when ``data/`` differs from ``data.dvc``; nothing to check without either."""
    root = Path(root)
    if not (root / DVC_FILE).is_file() or not (root / DATA_DIR).exists():
        return
    version = tracked_version(root)
    if _verified_unchanged(root, version):
        return  # DVC's answer for exactly these files is known: asking again costs a DVC process (about a second)
    stats = _file_stats(root / DATA_DIR)
    changes = data_changes(root)
    if not changes:
        _remember_verified(root, version, stats)
        return
    no_manifest = bool(changes.pop("not_in_cache", None))
    parts, shown = [], 0
    for kind, paths in changes.items():
        names = paths[: max(_SHOWN_FILES - shown, 1)]
        shown += len(names)
        more = f" and {len(paths) - len(names)} more" if len(paths) > len(names) else ""
        parts.append(f"{kind}: {', '.join(names)}{more}")
    if no_manifest:
        if any(p.endswith(("/", os.sep)) for paths in changes.values() for p in paths):
            parts.append("no file-level detail: the DVC cache lacks its manifest")
        restore = f"restore it with `dvc pull --force {DVC_FILE}` (`dvc checkout` needs the cache)"
    else:
        restore = f"restore it with `dvc checkout --force {DVC_FILE}` (or `dvc pull --force {DVC_FILE}` if the cache is empty)"
    intended = f"or run `dvc add {DATA_DIR}` if the change is intended"
    raise DataIntegrityError(f"{DATA_DIR}/ does not match {DVC_FILE} ({'; '.join(parts)}); {restore}, {intended}")


@dataclass(frozen=True)
class DvcDataStore:
    """Prepared splits under ``<project>/data/``, versioned by ``data.dvc`` and pushed to the DVC remote."""

    project_dir: Path

    def prepare(self, dataset: str, data_root: Path | None = None, download: bool = False) -> DatasetRef:
        """Check ``data/`` against ``data.dvc``, write the prepared splits, ``dvc add`` and push them.

        A workspace that no longer matches ``data.dvc`` (a corrupted or hand-edited file) stops here with
        :class:`DataIntegrityError`, before anything is rewritten or trained.
        """
        root = Path(self.project_dir).resolve()
        with machine_lock("dvc", str(root)):  # two searches starting at once on one project take turns
            ensure_repo(root)
            check_data(root)
            before = _file_stats(root / DATA_DIR)
            path = prepare_dataset(dataset, root / DATA_DIR, DATA_SEED, data_root, download)
            if (root / DVC_FILE).is_file() and _file_stats(root / DATA_DIR) == before:
                version = tracked_version(root)  # checked above and not a file rewritten: `dvc add` would change nothing
            else:
                version = track_data(root)
                _remember_verified(root, version, _file_stats(root / DATA_DIR))  # what `dvc add` hashed is the version
            push_data(root)
        return DatasetRef(dataset, version, path)

    def load(self, dataset: str, version: str) -> PreparedData:
        """The splits of ``version``; DataIntegrityError when this machine's ``data.dvc`` or ``data/`` differ."""
        root = Path(self.project_dir).resolve()
        found = tracked_version(root)
        if found != version:
            raise DataIntegrityError(
                f"{root / DVC_FILE} records data version {found}, the search uses {version}; "
                f"run `dvc checkout {DVC_FILE}` at the search's commit (or `dvc pull`) on this machine"
            )
        check_data(root)
        return load_prepared(root / DATA_DIR, dataset)
