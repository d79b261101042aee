"""The files a search keeps in its output folder so that it can be resumed: ``search.json``, ``state.json``, weights."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SEARCH_FILE, STATE_FILE, WEIGHTS_FILE = "search.json", "state.json", "best_weights.pt"
FINAL_WEIGHTS_FILE = "final_weights.pt"
CHECKPOINTS_DIR = "checkpoints"
STATE_FORMAT = 3


class ResumeError(ValueError):
    """The folder or id given to resume is not a search that can be continued."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def save_tensors_atomic(path: Path, data: Any) -> None:
    """``torch.save`` so that a crash never leaves half a file."""
    import torch  # here: reading search files (summary.json, the CLI's checks) must not pay for importing torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)


def load_tensors(path: Path) -> Any:
    import torch

    return torch.load(path, weights_only=True)


def load_weights(path: Path, hash_: str | None) -> dict[str, Any] | None:
    """The weights saved in ``path`` when they are those of the architecture ``hash_`` (else None)."""
    if hash_ is None or not path.is_file():
        return None
    stored = load_tensors(path)
    return stored["weights"] if stored["hash"] == hash_ else None


def read_saved_search(folder: Path) -> dict[str, Any]:
    """The ``search.json`` a search writes into its output folder as soon as it starts."""
    path = Path(folder) / SEARCH_FILE
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResumeError(f"'{folder}' holds no search to resume (no {SEARCH_FILE}); pass a search's --output folder") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot read {path}: {exc}") from None
    if not isinstance(saved, dict) or "search_id" not in saved or "config" not in saved:
        raise ResumeError(f"{path} is not a search record that can be resumed")
    return saved


def write_saved_search(folder: Path, search_id: str, run_id: str, config: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / SEARCH_FILE, {"search_id": search_id, "mlflow_run_id": run_id, "config": config})


def read_state(folder: Path) -> dict[str, Any] | None:
    """The last checkpoint of the search in ``folder`` (None before the first one)."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"cannot read {path}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a checkpoint of format {STATE_FORMAT}; it cannot be resumed by this version")
    return state


def write_state(folder: Path, state: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / STATE_FILE, {"format": STATE_FORMAT, **state})
