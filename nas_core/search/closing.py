"""What the loop writes to the tracker when an evaluation ends: final metrics, status and reason, links between runs."""

from __future__ import annotations

import json

from nas_core.evaluation.worker import EPOCH_METRICS  # logged per epoch (with the epochs), not as final metrics
from nas_core.search.final import FINAL_METRICS
from nas_core.search.ports import Tracker
from nas_core.search.records import Epochs, Evaluation, EvaluationResult, FinalModel

KILLED_REASON = "killed: the search stopped while this candidate was running; it was queued again on resume"


def _end(
    tracker: Tracker,
    run_id: str,
    ok: bool,
    status: str,
    reason: str,
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
    step: int = 0,
    epochs: Epochs = (),
) -> None:
    """Close a run with its ``epochs``' metrics, final ``metrics`` (at ``step``), status, reason and ``tags``: one
    write, then the status."""
    tags = {"status": status, **({"failure_reason": reason} if reason else {}), **(tags or {})}
    tracker.close_run(run_id, ok, metrics=metrics, tags=tags, step=step, history=epochs)


def close_evaluation(tracker: Tracker, evaluation: Evaluation, looked_up: bool) -> None:
    """Log an evaluation's epochs, final metrics (all of them for a table lookup, which has no epochs), status and reason.

    A successful one also gets its result as the ``metrics`` tag (JSON): what a later search reuses, exactly; one
    that learning-curve early stopping ended, the epoch as the ``early_stopped`` tag.
    """
    final = {k: v for k, v in evaluation.metrics.items() if looked_up or k not in EPOCH_METRICS}
    result = {"metrics": json.dumps(evaluation.metrics, sort_keys=True)} if evaluation.ok else {}
    if "stopped_at_epoch" in evaluation.metrics:
        result["early_stopped"] = str(int(evaluation.metrics["stopped_at_epoch"]))
    ok, status, reason = evaluation.ok, evaluation.status, evaluation.reason
    run_id, step, epochs = evaluation.mlflow_run_id, evaluation.fidelity, evaluation.epochs
    _end(tracker, run_id, ok, status, reason, tags=result, metrics=final, step=step, epochs=epochs)


def close_final(tracker: Tracker, final: FinalModel, search_run_id: str, link_source: bool = True, epochs: Epochs = ()) -> None:
    """Close the final training's run with its ``epochs``; when it worked, link it from the search's run and
    (``link_source``) the candidate's."""
    logged = {k: v for k, v in final.metrics.items() if k in FINAL_METRICS}
    _end(tracker, final.run_id, final.ok, final.status, final.reason, metrics=logged, step=final.epochs, epochs=epochs)
    if final.ok:
        for run_id in (final.source_run_id, search_run_id) if link_source else (search_run_id,):
            tracker.set_tags(run_id, {"final_run_id": final.run_id})


def close_recovery(tracker: Tracker, result: EvaluationResult, original_val_accuracy: float | None) -> None:
    """Close the run that trained the best again; it logs its validation accuracy beside the original's (the same on CPU)."""
    logged = {k: v for k, v in result.metrics.items() if k not in EPOCH_METRICS}
    if original_val_accuracy is not None:
        logged["original_val_accuracy"] = original_val_accuracy
    _end(tracker, result.run_id, result.ok, result.status, result.reason, metrics=logged, epochs=result.epochs)


def close_killed(tracker: Tracker, run_id: str) -> None:
    """A run its process left RUNNING without a recorded result: KILLED (its candidate is queued again)."""
    tracker.close_run(run_id, ok=False, tags={"status": "killed", "failure_reason": KILLED_REASON}, status="KILLED")
