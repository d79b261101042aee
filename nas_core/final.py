"""Final training of the winner: the best genome retrained with the final budget before it is exported.

Search budgets are short. With ``final_epochs`` set, the best architecture is trained again from its seed for
``final_epochs`` epochs, by default on train + validation (validation has done its job: selection), and
evaluated once on the test split. That model is the one exported and registered. Its MLflow run is tagged
``nas.role=final`` and ``nas.source_run_id`` (the candidate it came from); the candidate's and the search's
runs get ``nas.final_run_id``. If final training fails, the search exports the best candidate as trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from nas_core.candidate import CandidateJob, CandidateOutcome

if TYPE_CHECKING:
    from nas_core.search import CandidateRecord, SearchRun

FINAL_ROLE = "final"
FINAL_WEIGHTS_FILE = "final_weights.pt"
SPLITS = {"train+val": ("train", "val"), "train": ("train",)}


@dataclass
class FinalModel:
    """The retrained winner; ``weights`` (CPU) only when it trained successfully."""

    source_hash: str
    source_run_id: str
    run_id: str
    epochs: int
    splits: str
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.weights is not None

    def summary(self) -> dict[str, Any]:
        return {
            "mlflow_run_id": self.run_id,
            "source_run_id": self.source_run_id,
            "source_hash": self.source_hash,
            "epochs": self.epochs,
            "trained_on": self.splits,
            "status": self.status,
            "reason": self.reason,
            "test_accuracy": self.metrics.get("test_accuracy"),
            "test_f1": self.metrics.get("test_f1"),
            "train_seconds": self.metrics.get("train_seconds"),
        }

    @classmethod
    def from_summary(cls, data: dict[str, Any], weights: dict[str, torch.Tensor] | None) -> FinalModel:
        metrics = {k: data[k] for k in ("test_accuracy", "test_f1", "train_seconds") if data.get(k) is not None}
        return cls(
            data["source_hash"], data["source_run_id"], data["mlflow_run_id"], data["epochs"], data["trained_on"],
            data["status"], data["reason"], metrics, weights,
        )  # fmt: skip


def final_job(run: SearchRun) -> CandidateJob | None:
    """The job that retrains the search's best, or None (no final budget, nothing to export, or already done)."""
    from nas_core.search import training_params  # the search imports this module

    best = run.best()
    if not run.config.final_epochs or best is None or best.weights is None:
        return None
    if run.final is not None and run.final.source_hash == best.hash:
        return None  # restored after a resume
    train = dataclasses.replace(
        run.train_config(best.genome),
        epochs=run.config.final_epochs,
        schedule_epochs=None,
        train_splits=SPLITS[run.config.final_splits],
        stop_below=(),
    )
    job = run.job_for(
        {
            "index": 0,
            "generation": run.generation,
            "genome": best.genome.to_dict(),
            "hash": best.hash,
            "origin": FINAL_ROLE,
            "parents": [best.hash],
            "fidelity": train.epochs,
            "bracket": 0,
            "promoted_from": "",
        }
    )
    tags = {
        **{k: v for k, v in job.run_tags.items() if k not in ("index", "generation", "origin", "parents", "parent_hashes")},
        "role": FINAL_ROLE,
        "final": "true",
        "source_run_id": best.mlflow_run_id,
        "trained_on": run.config.final_splits,
    }
    params = {**job.run_params, **training_params(train), "train.train_splits": run.config.final_splits}
    return dataclasses.replace(
        job, train=train, run_name=f"final-{best.hash[:8]}", run_tags=tags, run_params=params, keep_state=False, proxy=None
    )


def record_final(run: SearchRun, outcome: CandidateOutcome) -> FinalModel:
    """Remember the final model, save its weights, link its run with the candidate's and the search's, close it."""
    best = run.best()
    assert best is not None and run.tracker is not None
    final = FinalModel(
        best.hash, best.mlflow_run_id, outcome.run_id, run.config.final_epochs, run.config.final_splits,
        outcome.status, outcome.reason, dict(outcome.metrics), outcome.weights,
    )  # fmt: skip
    if final.ok:
        torch.save({"hash": best.hash, "weights": final.weights}, run.output / FINAL_WEIGHTS_FILE)
    run.final = final
    tracker = run.tracker
    logged = {k: v for k, v in final.metrics.items() if k in ("test_accuracy", "test_f1", "params", "flops", "train_seconds")}
    if logged:
        tracker.log_metrics(final.run_id, logged, step=final.epochs)
    tracker.set_tags(final.run_id, {"status": final.status, **({"failure_reason": final.reason} if final.reason else {})})
    tracker.end_run(final.run_id, final.ok)
    if final.ok:
        tracker.set_tags(best.mlflow_run_id, {"final_run_id": final.run_id})
        tracker.set_tags(run.run_id, {"final_run_id": final.run_id})
    run.write_checkpoint()
    return final


def restore_final(run: SearchRun, saved: dict[str, Any] | None) -> None:
    """After a resume: the final model recorded before the crash (with its weights), if any."""
    path = run.output / FINAL_WEIGHTS_FILE
    if not saved:
        return
    weights = None
    if saved["status"] == "ok" and path.is_file():
        stored = torch.load(path, weights_only=True)
        weights = stored["weights"] if stored["hash"] == saved["source_hash"] else None
    run.final = FinalModel.from_summary(saved, weights)


def exported_metrics(best: CandidateRecord, final: FinalModel | None) -> dict[str, float]:
    """Metrics of the exported model: the selection metrics of the best candidate, test metrics of the final model."""
    metrics = dict(best.metrics)
    if final is not None and final.ok:
        metrics.update({k: v for k, v in final.metrics.items() if k in ("test_accuracy", "test_f1")})
        metrics["final_epochs"] = float(final.epochs)
    return metrics
