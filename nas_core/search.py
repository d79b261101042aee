"""One search's state and steps: prepare data, propose, evaluate (tracked), select, export, summarise.

The Prefect flow calls these steps as tasks; nothing here knows about Prefect.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nas_core import versioning
from nas_core.config import SearchConfig
from nas_core.data import PreparedData, load_prepared, prepare_dataset
from nas_core.evaluators import TableEvaluator
from nas_core.export import ExportReport, export_onnx
from nas_core.genome import Genome
from nas_core.spaces import SPACES, create_space
from nas_core.strategies import CandidateResult, Proposal, Strategy, create_strategy
from nas_core.tracking import ARTIFACTS_DIR_NAME, SearchTracker, resolve_tracking_uri, ui_command
from nas_core.training import TrainConfig, train_genome

EPOCH_METRICS = ("train_loss", "val_loss", "val_accuracy", "val_f1")
DATA_SEED = 0  # the split never depends on the search seed: one dataset version per source
# tabular benchmarks (NAS-Bench-201) are on CIFAR-10: costs are computed for its inputs
TABLE_INPUT_SHAPE = (3, 32, 32)
TABLE_NUM_CLASSES = 10


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: str
    path: Path


@dataclass
class CandidateRecord:
    """A finished candidate as the search remembers it (the model is kept only for the best)."""

    index: int
    generation: int
    genome: Genome
    origin: str
    parents: list[str]
    parent_run_ids: list[str]
    mlflow_run_id: str
    status: str
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    model: nn.Module | None = None
    hash: str = ""  # the identity in the search space

    def __post_init__(self) -> None:
        self.hash = self.hash or self.genome.canonical_hash()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def selection_key(self) -> tuple[float, float, float]:
        """Validation accuracy, then validation F1, then fewer parameters. Never a test metric."""
        m = self.metrics
        return (m.get("val_accuracy", -1.0), m.get("val_f1", -1.0), -m.get("params", 0.0))

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "generation": self.generation,
            "hash": self.hash,
            "status": self.status,
            "reason": self.reason,
            "origin": self.origin,
            "val_accuracy": self.metrics.get("val_accuracy"),
            "val_f1": self.metrics.get("val_f1"),
            "params": self.metrics.get("params"),
            "flops": self.metrics.get("flops"),
            "mlflow_run_id": self.mlflow_run_id,
            "parents": self.parents,
            "parent_run_ids": self.parent_run_ids,
        }


def new_search_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def prepare_and_version(name: str, project_dir: Path) -> DatasetRef:
    """Write the prepared splits under ``data/``, ``dvc add`` them, push to the remote; return the version."""
    project_dir = Path(project_dir).resolve()
    versioning.ensure_repo(project_dir)
    path = prepare_dataset(name, project_dir / versioning.DATA_DIR, seed=DATA_SEED)
    version = versioning.track_data(project_dir)
    versioning.push_data(project_dir)
    return DatasetRef(name, version, path)


def space_options(config: SearchConfig) -> dict[str, Any]:
    """The config settings that the chosen space takes (e.g. min_nodes/max_nodes for ``image``)."""
    accepted = {f.name for f in dataclasses.fields(SPACES[config.space])}
    return {k: v for k, v in {"min_nodes": config.min_nodes, "max_nodes": config.max_nodes}.items() if k in accepted}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


class SearchRun:
    """The state of one search. Steps are called in order by the flow (or directly, in tests)."""

    def __init__(self, config: SearchConfig, search_id: str | None = None) -> None:
        self.config = config
        self.search_id = search_id or new_search_id()
        self.output = Path(config.output or Path("outputs") / self.search_id).resolve()
        self.project_dir = Path(config.project_dir).resolve()
        self.space = create_space(config.space, hparams=config.hparams, **space_options(config))
        self.strategy: Strategy = create_strategy(
            config.strategy, self.space, seed=config.seed, population=config.population, constraint=self.within_limits
        )
        self.table = (
            TableEvaluator.load(config.table_path, config.select_metric, config.report_metric) if config.table_path else None
        )
        self._costs: dict[str, dict[str, int]] = {}
        if config.init_genome is not None:
            self.strategy.enqueue(Genome.from_json(Path(config.init_genome).read_text()))
        self.records: list[CandidateRecord] = []
        self.by_hash: dict[str, CandidateRecord] = {}
        self.generation = 0
        self.started = time.monotonic()
        self.dataset: DatasetRef | None = None
        self.data: PreparedData | None = None
        self.tracker: SearchTracker | None = None
        self.run_id = ""
        self.on_record: Callable[[CandidateRecord], None] | None = None

    # ---- stages ---------------------------------------------------------------------------
    def prepare(self) -> DatasetRef:
        """Prepare and version the data (or the table), then open the search's parent run in MLflow."""
        self.output.mkdir(parents=True, exist_ok=True)
        if self.table is not None:
            self.dataset = DatasetRef(f"table:{self.table.path.name}", self.table.version, self.table.path.resolve())
        else:
            self.dataset = prepare_and_version(self.config.dataset, self.project_dir)
            self.data = load_prepared(self.project_dir / versioning.DATA_DIR, self.config.dataset)
        tracking_uri = resolve_tracking_uri(self.project_dir)
        self.tracker = SearchTracker(tracking_uri, self.config.experiment_name, self.project_dir / ARTIFACTS_DIR_NAME)
        params = {k: v for k, v in self.config.model_dump(mode="json").items() if v is not None}
        self.run_id = self.tracker.start_run(
            f"search-{self.search_id}",
            params,
            {
                "search_id": self.search_id,
                "role": "search",
                "strategy": self.config.strategy,
                "dataset": self.dataset.name,
                "dataset_version": self.dataset.version,
                "output": str(self.output),
            },
        )
        write_json_atomic(self.output / "search.json", {"search_id": self.search_id, "mlflow_run_id": self.run_id})
        return self.dataset

    def input_spec(self) -> tuple[tuple[int, ...], int]:
        """Input shape and class count the networks are built for (CIFAR-10's for tables)."""
        if self.data is not None:
            return tuple(self.data.input_shape), self.data.num_classes
        return TABLE_INPUT_SHAPE, TABLE_NUM_CLASSES

    def cost(self, genome: Genome) -> dict[str, int]:
        """Parameters and FLOPs of a genome's network, cached by identity."""
        key = self.space.identity(genome)
        if key not in self._costs:
            self._costs[key] = self.space.cost(genome, *self.input_spec())
        return self._costs[key]

    def within_limits(self, genome: Genome) -> bool:
        """The ``max_params`` / ``max_flops`` constraint every strategy honours."""
        if self.config.max_params is None and self.config.max_flops is None:
            return True
        cost = self.cost(genome)
        return (self.config.max_params is None or cost["params"] <= self.config.max_params) and (
            self.config.max_flops is None or cost["flops"] <= self.config.max_flops
        )

    def remaining(self) -> int:
        return self.config.budget - len(self.records)

    def propose(self) -> list[Proposal]:
        """The next generation: up to ``population`` unseen genomes, never past the budget."""
        self.generation += 1
        return self.strategy.ask(min(self.config.population, self.remaining()))

    def train_config(self, genome: Genome | None = None) -> TrainConfig:
        """The search-wide training settings, overridden by the genome's own hyperparameters."""
        c = self.config
        settings = TrainConfig(
            epochs=c.epochs,
            batch_size=c.batch_size,
            optimizer=c.optimizer,
            lr=c.lr,
            weight_decay=c.weight_decay,
            seed=c.seed,
            time_limit_s=c.candidate_timeout,
        )
        return dataclasses.replace(settings, **genome.hparams) if genome is not None else settings

    def evaluate(self, proposal: Proposal, index: int) -> CandidateRecord:
        """Train (or look up) one proposal under its own nested MLflow run; a bad candidate fails, never raises."""
        assert self.tracker is not None and self.dataset is not None
        genome = proposal.genome
        train_config = self.train_config(genome)
        settings = (
            {"evaluator": self.config.evaluator} if self.table else {f"train.{k}": v for k, v in vars(train_config).items()}
        )
        parent_run_ids = [self.by_hash[h].mlflow_run_id for h in proposal.parents if h in self.by_hash]
        run_id = self.tracker.start_run(
            f"candidate-{index:03d}-{proposal.hash[:8]}",
            {**self.space.describe(genome), **settings},
            {
                "search_id": self.search_id,
                "role": "candidate",
                "index": index,
                "generation": self.generation,
                "strategy": self.config.strategy,
                "origin": proposal.origin,
                "hash": proposal.hash,
                "parents": ",".join(parent_run_ids),
                "parent_hashes": ",".join(proposal.parents),
                "dataset": self.dataset.name,
                "dataset_version": self.dataset.version,
                "status": "running",
            },
            parent_run_id=self.run_id,
        )
        self.tracker.log_json(run_id, genome.to_dict(), "genome.json")
        record = CandidateRecord(
            index, self.generation, genome, proposal.origin, list(proposal.parents), parent_run_ids, run_id, "failed",
            hash=proposal.hash,
        )  # fmt: skip
        try:
            if self.table is not None:
                record.status, record.metrics = "ok", {**self.table.evaluate(self.space, genome), **self.cost(genome)}
            else:
                assert self.data is not None
                result = train_genome(
                    genome,
                    self.data,
                    train_config,
                    on_epoch=lambda m: self.tracker.log_metrics(run_id, {k: getattr(m, k) for k in EPOCH_METRICS}, step=m.epoch),
                    build=self.space.build,
                )
                record.status, record.reason, record.model = result.status, result.reason, result.model
                record.metrics = result.metrics()
        except Exception as exc:  # a broken candidate must not end the search
            record.status = "failed"
            record.reason = f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return self._finish_candidate(record)

    def _finish_candidate(self, record: CandidateRecord) -> CandidateRecord:
        """Log final metrics, status and reason; close the candidate's run."""
        assert self.tracker is not None
        run_id = record.mlflow_run_id
        final = {k: v for k, v in record.metrics.items() if k not in EPOCH_METRICS or self.table}  # else in the history
        if final:
            self.tracker.log_metrics(run_id, final, step=self.config.epochs)
        self.tracker.set_tags(run_id, {"status": record.status, **({"failure_reason": record.reason} if record.reason else {})})
        self.tracker.end_run(run_id, record.ok)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def select(self, records: list[CandidateRecord]) -> CandidateRecord | None:
        """Tell the strategy, keep the best model only, checkpoint the strategy; return the best so far."""
        self.strategy.tell(
            [
                CandidateResult(r.genome, r.status, r.metrics.get("val_accuracy") if r.ok else None, r.reason, r.metrics, r.hash)
                for r in records
            ]
        )
        assert self.tracker is not None
        for record in records:
            self.records.append(record)
            self.by_hash[record.hash] = record
            best = self.best()
            if best is not None:
                self.tracker.log_metrics(self.run_id, {"best_val_accuracy": best.metrics["val_accuracy"]}, step=len(self.records))
        best = self.best()
        for record in self.records:
            if record is not best:
                record.model = None
        write_json_atomic(
            self.output / "state.json",
            {
                "search_id": self.search_id,
                "generation": self.generation,
                "strategy": self.strategy.state_dict(),
                "finished": [r.summary() for r in self.records],
            },
        )
        return best

    def best(self) -> CandidateRecord | None:
        finished = [r for r in self.records if r.ok]
        return max(finished, key=CandidateRecord.selection_key) if finished else None

    def can_export(self) -> bool:
        """A trained best model exists (table evaluations have no weights to export)."""
        best = self.best()
        return best is not None and best.model is not None

    def export(self) -> ExportReport:
        """Export the best candidate to ``<output>/model.onnx`` (verified) and log it on the parent run."""
        best = self.best()
        assert best is not None and best.model is not None and self.data is not None and self.dataset is not None
        metadata = {
            "nas.genome": best.genome.to_json(),
            "nas.hash": best.hash,
            "nas.dataset": self.dataset.name,
            "nas.dataset_version": self.dataset.version,
            "nas.metrics": json.dumps(best.metrics, sort_keys=True),
            "nas.mlflow_run_id": best.mlflow_run_id,
            "nas.search_mlflow_run_id": self.run_id,
            "nas.search_id": self.search_id,
            "nas.input_range": "float32 in [0, 1]; normalisation is inside the model",
            "nas.classes": json.dumps(self.data.classes),
        }
        report = export_onnx(best.model, self.output / "model.onnx", self.data.x["test"], metadata)
        assert self.tracker is not None
        self.tracker.log_artifact(self.run_id, report.path, "model")
        self.tracker.log_metrics(self.run_id, {"onnx_max_abs_diff": report.max_abs_diff})
        self.tracker.set_tags(self.run_id, {"best_run_id": best.mlflow_run_id, "best_hash": best.hash})
        return report

    def abort(self, reason: str) -> None:
        """Close the parent run as FAILED (the search itself broke, not just a candidate)."""
        if self.tracker is not None and self.run_id:
            self.tracker.set_tags(self.run_id, {"status": "failed", "failure_reason": reason[:5000]})
            self.tracker.end_run(self.run_id, ok=False)

    def finish(self, report: ExportReport | None) -> dict[str, Any]:
        """Write ``summary.json``, log it, and close the parent run (FAILED when nothing trained)."""
        assert self.tracker is not None and self.dataset is not None
        best = self.best()
        summary: dict[str, Any] = {
            "search_id": self.search_id,
            "mlflow_tracking_uri": self.tracker.tracking_uri,
            "mlflow_experiment": self.config.experiment_name,
            "mlflow_run_id": self.run_id,
            "mlflow_ui": ui_command(self.tracker.tracking_uri),
            "output": str(self.output),
            "dataset": {"name": self.dataset.name, "version": self.dataset.version},
            "strategy": self.config.strategy,
            "budget": self.config.budget,
            "seed": self.config.seed,
            "elapsed_seconds": round(time.monotonic() - self.started, 2),
            "candidates": [r.summary() for r in self.records],
            "best": None,
        }
        if best is not None:
            summary["best"] = {
                "hash": best.hash,
                "mlflow_run_id": best.mlflow_run_id,
                "val_accuracy": best.metrics["val_accuracy"],
                "val_f1": best.metrics.get("val_f1"),
                "test_accuracy": best.metrics["test_accuracy"],
                "test_f1": best.metrics.get("test_f1"),
                "params": int(best.metrics["params"]),
                "flops": int(best.metrics["flops"]),
                "genome": best.genome.to_dict(),
                "onnx_path": str(report.path) if report else None,
                "onnx_max_abs_diff": report.max_abs_diff if report else None,
            }
        write_json_atomic(self.output / "summary.json", summary)
        self.tracker.log_artifact(self.run_id, self.output / "summary.json")
        self.tracker.set_tags(self.run_id, {"status": "ok" if summary["best"] else "failed"})
        self.tracker.end_run(self.run_id, summary["best"] is not None)
        return summary


def set_torch_threads(workers: int) -> int:
    """Give each parallel candidate its share of the cores (no oversubscription)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    torch.set_num_threads(threads)
    return threads
