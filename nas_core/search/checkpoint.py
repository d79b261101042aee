"""The files a search keeps in its output folder so that it can be resumed: ``search.json``, ``state.json``, weights."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SEARCH_FILE, STATE_FILE, WEIGHTS_FILE = "search.json", "state.json", "best_weights.pt"
FINAL_WEIGHTS_FILE = "final_weights.pt"
CHECKPOINTS_DIR = "checkpoints"
STATE_FORMAT = 3
PARTIAL_SUFFIX = ".tmp"  # ``.<name>.tmp``: a file being written (atomically replaced); left behind only by a kill
DAMAGED_SUFFIX = ".damaged"  # a damaged file the search can do without is moved aside under this suffix
# what a state.json holds, by key: the type each value must have (``final`` may be null)
STATE_TYPES: dict[str, type | tuple[type, ...]] = {
    "search_id": str,
    "generation": int,
    "strategy": dict,
    "in_flight": list,
    "finished": list,
    "screened": list,
    "final": (dict, type(None)),
}


class ResumeError(ValueError):
    """The folder or id given to resume is not a search that can be continued."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    tmp = partial_file(path)
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def save_tensors_atomic(path: Path, data: Any) -> None:
    """``torch.save`` so that a crash never leaves half a file."""
    import torch  # here: reading search files (summary.json, the CLI's checks) must not pay for importing torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_file(path)
    torch.save(data, tmp)
    os.replace(tmp, path)


def load_tensors(path: Path) -> Any:
    import torch

    return torch.load(path, weights_only=True)


def partial_file(path: Path) -> Path:
    """Where ``path`` is written before it is atomically renamed into place."""
    return path.with_name(f".{path.name}{PARTIAL_SUFFIX}")


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the half-written files (``.<name>.tmp``) a killed search left in ``folder``; return them."""
    folder = Path(folder)
    leftovers = sorted([*folder.glob(f".*{PARTIAL_SUFFIX}"), *(folder / CHECKPOINTS_DIR).glob(f".*{PARTIAL_SUFFIX}")])
    for path in leftovers:
        if path.is_file():
            path.unlink(missing_ok=True)
    return leftovers


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
        text = path.read_text()
        state = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResumeError(_damaged(path, "empty" if not path.stat().st_size else f"not JSON: {exc}")) from None
    if not isinstance(state, dict):
        raise ResumeError(_damaged(path, f"a JSON {type(state).__name__}, not an object"))
    if isinstance(state.get("format"), int) and state["format"] != STATE_FORMAT:
        raise ResumeError(
            f"{path} is a checkpoint of format {state['format']}, not {STATE_FORMAT}; this version cannot resume it"
        )
    if state.get("format") != STATE_FORMAT:
        raise ResumeError(_damaged(path, "no checkpoint format"))
    return state


def _damaged(path: Path, detail: str) -> str:
    return (
        f"{path} is damaged ({detail}); the search cannot continue from it. Its finished candidates stay in MLflow "
        f"under the search's run; start a new search with the same settings (the 'config' of {path.parent / SEARCH_FILE})"
    )


def check_state(state: dict[str, Any], path: Path, search_id: str, restore: Callable[[dict[str, Any]], None]) -> None:
    """Raise :class:`ResumeError` naming ``path`` unless ``state`` is a whole checkpoint of ``search_id``.

    ``restore`` loads the state the way the search will (into a fresh proposer and strategy), so a value the search
    could not use fails here, before anything starts.
    """
    from nas_core.search.records import Evaluation, FinalModel

    wrong = [f"'{k}' missing" if k not in state else f"'{k}' is not {_type_name(t)}" for k, t in STATE_TYPES.items()
             if not isinstance(state.get(k), t) or k not in state]  # fmt: skip
    if wrong:
        raise ResumeError(_damaged(path, ", ".join(wrong)))
    if state["search_id"] != search_id:
        raise ResumeError(_damaged(path, f"it belongs to search {state['search_id']}, not {search_id}"))
    try:
        for data in state["finished"]:
            _check_evaluation(Evaluation.from_dict(data))
        if state["final"] is not None:
            FinalModel.from_dict(state["final"])
        restore(state)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ResumeError(
            _damaged(path, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'a bad value'}")
        ) from None


def _type_name(types: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", type(None): "null"}
    return " or ".join(names[t] for t in (types if isinstance(types, tuple) else (types,)))


def _check_evaluation(evaluation: Any) -> None:
    """A restored evaluation has the types the search computes with (the rest is only reported)."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in evaluation.metrics.values())
    ok = isinstance(evaluation.index, int) and isinstance(evaluation.fidelity, int) and isinstance(evaluation.hash, str)
    if not (
        ok and numbers and evaluation.status in ("ok", "failed") and (not evaluation.ok or "val_accuracy" in evaluation.metrics)
    ):
        raise ValueError(f"finished evaluation {evaluation.index!r} has a wrong value (index, hash, fidelity, status or metrics)")


def check_weights(path: Path, hash_: str | None = None) -> str | None:
    """Why the weights file ``path`` cannot be used (None when it can, or does not exist)."""
    if not path.is_file():
        return None
    try:
        stored = load_tensors(path)
    except Exception as exc:  # torch.load raises many types for a truncated or foreign file
        first = str(exc).splitlines()[0].split(". ")[0] if str(exc) else ""
        return f"unreadable: {type(exc).__name__}: {first}".rstrip(": ")
    if not isinstance(stored, dict) or not isinstance(stored.get("hash"), str) or not isinstance(stored.get("weights"), dict):
        return "not a weights file of this search"
    return None


def check_resume_files(folder: Path, search_id: str, trained: bool, restore: Callable[[dict[str, Any]], None]) -> list[str]:
    """Check every file a resume of the search in ``folder`` reads, before anything starts.

    A damaged ``state.json`` raises :class:`ResumeError` naming it (the search cannot continue: its strategy's
    state is lost). Damaged weights (best, final, promotion checkpoints) the search can rebuild by training
    again: they are moved aside (``<file>.damaged``) and one line each, returned, says what will be retrained.
    ``trained``: the search trains its candidates (table lookups have no weights); ``restore``: see :func:`check_state`.
    """
    folder = Path(folder)
    state = read_state(folder)
    if state is not None:
        check_state(state, folder / STATE_FILE, search_id, restore)
    if not trained:
        return []
    notes = [*_weights_notes(folder, state), *_promotion_notes(folder)]
    for damaged, _ in notes:
        if damaged.exists():
            os.replace(damaged, damaged.with_name(damaged.name + DAMAGED_SUFFIX))
    return [note for _, note in notes]


def _weights_notes(folder: Path, state: dict[str, Any] | None) -> list[tuple[Path, str]]:
    """The best's and the final model's weights files that are damaged or missing, and what the search redoes."""
    notes = []
    best, final = _best_trained(state), (state or {}).get("final")
    best_weights, final_weights = folder / WEIGHTS_FILE, folder / FINAL_WEIGHTS_FILE
    problem, final_problem = check_weights(best_weights), check_weights(final_weights)
    final_ok = bool(final and final["status"] == "ok")
    stands_in = (
        final_ok and best is not None and final["source_hash"] == best.hash and final_weights.exists() and not final_problem
    )
    if problem or (best is not None and not best_weights.exists() and not stands_in):
        what = f"is damaged ({problem})" if problem else "is missing"
        if best is None:
            redo = "it is written again when a candidate finishes"
        elif stands_in:
            redo = "the final model is exported instead, as it would have been"
        else:
            redo = (
                f"the best architecture {best.hash[:12]} will be retrained from its seed ({best.fidelity} epochs) to rebuild it"
            )
        notes.append((best_weights, f"{best_weights} {what}; {redo}"))
    if final_problem or (final_ok and not final_weights.exists()):
        what = f"is damaged ({final_problem})" if final_problem else "is missing"
        notes.append((final_weights, f"{final_weights} {what}; the final training of the best will run again"))
    return notes


def _promotion_notes(folder: Path) -> list[tuple[Path, str]]:
    """Damaged multi-fidelity checkpoints: their promotions train from scratch (to the same result) instead."""
    notes = []
    for path in sorted((folder / CHECKPOINTS_DIR).glob("*.pt")):
        problem = check_weights_state(path)
        if problem:
            notes.append((path, f"{path} is damaged ({problem}); the promotion that continues it will train from scratch"))
    return notes


def check_weights_state(path: Path) -> str | None:
    """Why the training state ``path`` (a multi-fidelity checkpoint) cannot be continued (None when it can)."""
    try:
        stored = load_tensors(path)
    except Exception as exc:  # torch.load raises many types for a truncated or foreign file
        return f"unreadable: {type(exc).__name__}"
    return None if isinstance(stored, dict) and isinstance(stored.get("model"), dict) else "not a training state"


def _best_trained(state: dict[str, Any] | None) -> Any:
    """The best evaluation of a checkpoint (as the search picks it), or None."""
    from nas_core.search.records import Evaluation

    finished = [Evaluation.from_dict(d) for d in (state or {}).get("finished", [])]
    ok = [e for e in finished if e.ok]
    return max(ok, key=Evaluation.best_key) if ok else None


def write_state(folder: Path, state: dict[str, Any]) -> None:
    write_json_atomic(Path(folder) / STATE_FILE, {"format": STATE_FORMAT, **state})
