"""The typed, immutable records that pass between the search's steps.

One candidate travels as: the strategy's :class:`~nas_core.strategies.Proposal` -> a :class:`PlannedEvaluation`
(the proposal with its place in the search: index, generation, fidelity) -> an :class:`EvaluationRequest` (all a
worker needs, anywhere) -> an :class:`EvaluationResult` (what the worker measured) -> an :class:`Evaluation` (the
search's record of it, checkpointed and summarised). Every record round-trips through ``to_dict``/``from_dict``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nas_core.evaluation.training import TrainConfig
from nas_core.genome import Genome

PROMOTION = "promotion"  # the origin of a multi-fidelity evaluation that continues an architecture at a longer budget
WARM_START = "warm-start"  # the origin of an earlier search's evaluation that a warm start told the strategy
Epochs = tuple[tuple[int, dict[str, float]], ...]  # (epoch, its metrics) for each epoch trained
SKIPPED = "skipped"  # the status of a request that had not started when the search's time was up (not recorded)


@dataclass(frozen=True)
class DatasetRef:
    """A prepared dataset and its version (the DVC hash, or a content hash without DVC)."""

    name: str
    version: str
    path: Path


@dataclass(frozen=True)
class PlannedEvaluation:
    """A proposal with its place in the search: what to evaluate, at which fidelity, and why."""

    index: int
    generation: int
    genome: Genome
    hash: str
    origin: str
    parents: tuple[str, ...]
    fidelity: int
    bracket: int = 0
    promoted_from: str = ""  # multi-fidelity: the run this evaluation continues
    from_fidelity: int | None = None  # multi-fidelity: the epochs it continues from
    proxy: float | None = None  # the zero-cost proxy's score at initialisation

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # asdict would deep-copy the genome
        return {**values, "genome": self.genome.to_dict(), "parents": list(self.parents)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlannedEvaluation:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        return cls(**{**values, "genome": Genome.from_dict(data["genome"]), "parents": tuple(data["parents"])})


@dataclass(frozen=True)
class EvaluationRequest:
    """Everything a worker needs to evaluate one planned evaluation, anywhere (plain, picklable data).

    ``tracker`` and ``data`` are picklable specs of the search's adapters (see :mod:`nas_core.search.ports`).
    """

    search_id: str
    planned: PlannedEvaluation
    run_name: str
    run_params: dict[str, Any]
    run_tags: dict[str, Any]
    parent_run_id: str
    tracker: Any  # a TrackerSpec
    data: Any  # a DataStore
    dataset: str
    dataset_version: str
    space: str
    space_options: dict[str, Any]
    hparams: dict[str, list[Any]] | None
    train: TrainConfig
    table: tuple[str, str, str] | None = None  # (path, select metric, report metric) for table lookups
    devices: str = "auto"  # which devices this worker may lease: "auto", "cpu", "cuda", "0,1", ...
    per_device: int = 1  # candidates sharing one GPU at once
    threads: int | None = None  # torch threads for this evaluation (its share of the cores)
    start_checkpoint: str | None = None  # multi-fidelity: continue from this saved training state
    keep_state: bool = False  # multi-fidelity: return the training state, to continue it if promoted
    proxy: tuple[str, float] | None = None  # the zero-cost proxy's name and score, logged on the run
    deadline: float | None = None  # unix time: a request not started by then is skipped (the search's time is up)
    evaluation_key: str = ""  # its identity (nas_core.search.identity): a finished run with the same key is reusable

    @property
    def index(self) -> int:
        return self.planned.index

    @property
    def hash(self) -> str:
        return self.planned.hash

    @property
    def fidelity(self) -> int:
        return self.train.epochs


@dataclass(frozen=True)
class EvaluationResult:
    """What a worker measured. ``weights`` (CPU tensors) come back only for a trained, successful evaluation."""

    index: int
    run_id: str
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] | None = None
    worker: str = ""
    device: str = ""
    state: dict[str, Any] | None = None  # training state (TrainState.to_dict) when the request asked to keep it
    timing: dict[str, float] = field(default_factory=dict)  # train_started/train_ended: unix time around training
    curve: tuple[float, ...] = ()  # validation accuracy per epoch (for early stopping)
    epochs: Epochs = ()  # the metrics of each epoch trained, logged when the search closes the run

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation as the search records it (weights are kept by the search, for the best only)."""

    index: int
    generation: int
    genome: Genome
    origin: str
    parents: tuple[str, ...]
    parent_run_ids: tuple[str, ...]
    mlflow_run_id: str
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    hash: str = ""  # the identity in the search space
    fidelity: int = 0  # epochs trained
    bracket: int = 0  # multi-fidelity: the hyperband bracket
    promoted_from: str = ""  # multi-fidelity: the run this evaluation continued from
    proxy: float | None = None  # the zero-cost proxy's score at initialisation
    finished_seconds: float | None = None  # since the search (this process) started
    timing: dict[str, float] = field(default_factory=dict)  # train_started/train_ended (unix time)
    curve: tuple[float, ...] = ()  # validation accuracy per epoch trained
    epochs: Epochs = ()  # the metrics of each epoch trained (kept until its run is closed, even across a crash)
    reused_from: str = ""  # the earlier run whose result this is (reused or told by a warm start): nothing was trained

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def trained(self) -> bool:
        """Whether this search trained it (or looked it up in its table), rather than reusing an earlier result."""
        return not self.reused_from

    def selection_key(self) -> tuple[float, float, float]:
        """Validation accuracy, then validation F1, then fewer parameters. Never a test metric."""
        m = self.metrics
        return (m.get("val_accuracy", -1.0), m.get("val_f1", -1.0), -m.get("params", 0.0))

    def best_key(self) -> tuple[float, ...]:
        """What makes the search's best: the longest training (multi-fidelity), then :meth:`selection_key`."""
        return (self.fidelity, *self.selection_key())

    def summary(self) -> dict[str, Any]:
        """The candidate's row in ``summary.json``."""
        m = self.metrics
        return {
            "index": self.index,
            "generation": self.generation,
            "hash": self.hash,
            "fidelity": self.fidelity,
            "status": self.status,
            "reason": self.reason,
            "origin": self.origin,
            **{k: m.get(k) for k in ("val_accuracy", "val_f1", "test_accuracy", "params", "flops", "latency_ms")},
            "mlflow_run_id": self.mlflow_run_id,
            "parents": list(self.parents),
            "parent_run_ids": list(self.parent_run_ids),
            "bracket": self.bracket,
            "promoted_from": self.promoted_from or None,
            "proxy": self.proxy,
            "finished_seconds": self.finished_seconds,
            "train_seconds": m.get("train_seconds"),
            "wall_seconds": m.get("wall_seconds"),
            **{k: self.timing.get(k) for k in ("train_started", "train_ended")},
            "stopped_at_epoch": m.get("stopped_at_epoch"),
            "reused_from": self.reused_from or None,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to restore the record after a crash."""
        return {**self.summary(), "genome": self.genome.to_dict(), "metrics": self.metrics, "timing": self.timing,
                "curve": list(self.curve), "epochs": [[step, metrics] for step, metrics in self.epochs]}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        return cls(
            data["index"], data["generation"], Genome.from_dict(data["genome"]), data["origin"], tuple(data["parents"]),
            tuple(data["parent_run_ids"]), data["mlflow_run_id"], data["status"], data["reason"], dict(data["metrics"]),
            hash=data["hash"], fidelity=data["fidelity"], bracket=data.get("bracket", 0),
            promoted_from=data.get("promoted_from") or "", proxy=data.get("proxy"),
            finished_seconds=data.get("finished_seconds"), timing=dict(data.get("timing", {})),
            curve=tuple(data.get("curve", ())), epochs=tuple((int(s), dict(m)) for s, m in data.get("epochs", ())),
            reused_from=data.get("reused_from") or "",
        )  # fmt: skip


@dataclass(frozen=True)
class FinalModel:
    """The winner retrained with the final budget; its weights are kept by the search."""

    source_hash: str
    source_run_id: str
    run_id: str
    epochs: int
    splits: str
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "mlflow_run_id": self.run_id,
            "source_run_id": self.source_run_id,
            "source_hash": self.source_hash,
            "epochs": self.epochs,
            "trained_on": self.splits,
            "status": self.status,
            "reason": self.reason,
            **{k: self.metrics.get(k) for k in ("test_accuracy", "test_f1", "train_seconds")},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinalModel:
        metrics = {k: data[k] for k in ("test_accuracy", "test_f1", "train_seconds") if data.get(k) is not None}
        return cls(
            data["source_hash"], data["source_run_id"], data["mlflow_run_id"], data["epochs"], data["trained_on"],
            data["status"], data["reason"], metrics,
        )  # fmt: skip
