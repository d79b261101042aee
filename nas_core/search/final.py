"""Final training of the winner: the best genome retrained with the final budget before it is exported.

Search budgets are short. With ``final_epochs`` set, the best architecture is trained again from its seed for
``final_epochs`` epochs, by default on train + validation (validation has done its job: selection), and evaluated
once on the test split. That model is the one exported and registered. Its run is tagged ``role=final`` and
``source_run_id`` (the candidate it came from); the candidate's and the search's runs get ``final_run_id``. If final
training fails, the search exports the best candidate as trained.

When the best candidate's weights were lost (the process died while they were written, or the file was damaged)
and no final model stands in for them, :class:`WeightsRecovery` trains the best again exactly as it was evaluated
(same genome, epochs and seed: on CPU, the same weights) under a run tagged ``role=recovery``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_core.evaluation.training import TrainConfig
from nas_core.search.checkpoint import FINAL_WEIGHTS_FILE, load_weights, save_tensors_atomic
from nas_core.search.records import Evaluation, EvaluationRequest, EvaluationResult, FinalModel, PlannedEvaluation

FINAL_ROLE = "final"
RECOVERY_ROLE = "recovery"
SPLITS = {"train+val": ("train", "val"), "train": ("train",)}
FINAL_METRICS = ("test_accuracy", "test_f1", "params", "flops", "train_seconds")


@dataclass(frozen=True)
class FinalTraining:
    """Retrain the best for ``epochs`` epochs on ``splits`` ("train+val" or "train")."""

    epochs: int
    splits: str = "train+val"

    def planned(self, best: Evaluation, generation: int) -> PlannedEvaluation:
        return PlannedEvaluation(0, generation, best.genome, best.hash, FINAL_ROLE, (best.hash,), self.epochs)

    def adapt(self, request: EvaluationRequest, best: Evaluation) -> EvaluationRequest:
        """The candidate request turned into the final one: other budget and splits, its own run name and tags."""
        train = dataclasses.replace(
            request.train, epochs=self.epochs, schedule_epochs=None, train_splits=SPLITS[self.splits], stop_below=()
        )
        dropped = ("index", "generation", "origin", "parents", "parent_hashes")
        tags = {
            **{k: v for k, v in request.run_tags.items() if k not in dropped},
            "role": FINAL_ROLE,
            "final": "true",
            "source_run_id": best.mlflow_run_id,
            "trained_on": self.splits,
        }
        params = {**request.run_params, **training_params(train), "train.train_splits": self.splits}
        return dataclasses.replace(
            request, train=train, run_name=f"final-{best.hash[:8]}", run_tags=tags, run_params=params, keep_state=False,
            proxy=None,
        )  # fmt: skip

    def model(self, best: Evaluation, result: EvaluationResult) -> FinalModel:
        return FinalModel(best.hash, best.mlflow_run_id, result.run_id, self.epochs, self.splits, result.status, result.reason,
                          dict(result.metrics))  # fmt: skip


class WeightsRecovery:
    """The best evaluation trained again as it was (its request rebuilt), to get back weights that were lost."""

    @staticmethod
    def planned(best: Evaluation) -> PlannedEvaluation:
        return PlannedEvaluation(best.index, best.generation, best.genome, best.hash, best.origin, best.parents, best.fidelity,
                                 best.bracket)  # fmt: skip

    @staticmethod
    def adapt(request: EvaluationRequest, best: Evaluation) -> EvaluationRequest:
        """The candidate's own request (from scratch, its full epochs), never stopped early, under its own run."""
        tags = {**request.run_tags, "role": RECOVERY_ROLE, "source_run_id": best.mlflow_run_id}
        return dataclasses.replace(
            request, train=dataclasses.replace(request.train, stop_below=()), run_name=f"recover-{best.hash[:8]}",
            run_tags=tags, start_checkpoint=None, keep_state=False, proxy=None,
        )  # fmt: skip


def training_params(train: TrainConfig) -> dict[str, Any]:
    """A training's settings as run params (``train.*``); where and how it stops is logged elsewhere."""
    return {f"train.{k}": v for k, v in vars(train).items() if k not in ("device", "train_splits", "stop_below")}


def exported_metrics(best: Evaluation, final: FinalModel | None) -> dict[str, float]:
    """Metrics of the exported model: the selection metrics of the best candidate, test metrics of the final model."""
    metrics = dict(best.metrics)
    if final is not None and final.ok:
        metrics.update({k: v for k, v in final.metrics.items() if k in ("test_accuracy", "test_f1")})
        metrics["final_epochs"] = float(final.epochs)
    return metrics


class FinalStage:
    """Final training as a piece of the loop: whether the best still needs it, and the retrained model and weights."""

    def __init__(self, training: FinalTraining | None, output: Path) -> None:
        self.training, self.output = training, output
        self.model: FinalModel | None = None
        self.weights: dict[str, Any] | None = None

    def restore(self, saved: dict[str, Any] | None) -> None:
        """After a resume: the final model recorded before the crash, with its weights; without them it trains again."""
        self.model = FinalModel.from_dict(saved) if saved else None
        if self.model is not None and self.model.ok:
            self.weights = load_weights(self.output / FINAL_WEIGHTS_FILE, self.model.source_hash)
            if self.weights is None:  # lost: a model without weights cannot be exported, so it is retrained
                self.model = None

    def needed_for(self, best: Evaluation | None) -> bool:
        """There is a final budget and ``best`` has not been retrained yet."""
        done = self.model is not None and best is not None and self.model.source_hash == best.hash
        return self.training is not None and best is not None and not done

    def accept(self, best: Evaluation, result: EvaluationResult) -> FinalModel:
        """Keep the retrained model (and save its weights when it trained)."""
        assert self.training is not None
        self.model = self.training.model(best, result)
        if self.model.ok and result.weights is not None:
            save_tensors_atomic(self.output / FINAL_WEIGHTS_FILE, {"hash": best.hash, "weights": result.weights})
            self.weights = result.weights
        return self.model

    def current(self, best: Evaluation | None) -> FinalModel | None:
        """The final model of ``best``, when it was retrained successfully."""
        model = self.model
        ok = model is not None and model.ok and self.weights is not None and best is not None
        return model if ok and model.source_hash == best.hash else None
