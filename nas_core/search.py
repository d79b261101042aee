"""One search's state and steps: prepare data, propose, record each outcome, select, export, summarise.

The Prefect flow calls these steps; nothing here knows about Prefect. Candidates are evaluated by
:func:`nas_core.candidate.run_candidate` wherever the flow sends their jobs; the search records each
outcome as it arrives and checkpoints after every one, so ``SearchRun(..., resume=True)`` continues a
search that died without training a finished candidate again.

Determinism: a generation's results are told to the strategy together, in proposal order, so the
proposals never depend on which candidate finished first or on the number of workers. Training itself is
seeded; on CPU its float results can differ in the last bits when the torch thread count per candidate
differs (it is the cores divided by ``workers``), which may reorder near-ties between candidates.
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
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from nas_core import versioning
from nas_core.candidate import EPOCH_METRICS, CandidateJob, CandidateOutcome, remember_data
from nas_core.config import SearchConfig
from nas_core.data import DatasetError, PreparedData, inspect_source, load_prepared, parse_dataset, prepare_dataset
from nas_core.evaluators import TableEvaluator
from nas_core.export import ExportReport, export_onnx
from nas_core.genome import Genome
from nas_core.handoff import PREPROCESSING_KEY, preprocessing_metadata, write_search_bundle
from nas_core.registry import Registration, register_search_best
from nas_core.spaces import SPACES, create_space
from nas_core.strategies import CandidateResult, Proposal, Strategy, create_strategy
from nas_core.tracking import ARTIFACTS_DIR_NAME, SearchTracker, _retry, resolve_tracking_uri, ui_command
from nas_core.training import TrainConfig

DATA_SEED = 0  # the split never depends on the search seed: one dataset version per source
# tabular benchmarks (NAS-Bench-201) are on CIFAR-10: costs are computed for its inputs
TABLE_INPUT_SHAPE = (3, 32, 32)
TABLE_NUM_CLASSES = 10
SEARCH_FILE, STATE_FILE, WEIGHTS_FILE, SUMMARY_FILE = "search.json", "state.json", "best_weights.pt", "summary.json"
KILLED_REASON = "killed: the search stopped while this candidate was running; it was queued again on resume"


class ResumeError(ValueError):
    """The folder or id given to resume is not a search that can be continued."""


@dataclass(frozen=True)
class DatasetRef:
    name: str
    version: str
    path: Path


@dataclass
class CandidateRecord:
    """A finished candidate as the search remembers it (weights are kept only for the best)."""

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
    weights: dict[str, torch.Tensor] | None = None
    hash: str = ""  # the identity in the search space
    fidelity: int = 0  # epochs trained

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
            "fidelity": self.fidelity,
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

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to restore the record after a crash (weights are saved separately)."""
        return {**self.summary(), "genome": self.genome.to_dict(), "metrics": self.metrics}

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any]) -> CandidateRecord:
        return cls(
            data["index"], data["generation"], Genome.from_dict(data["genome"]), data["origin"], list(data["parents"]),
            list(data["parent_run_ids"]), data["mlflow_run_id"], data["status"], data["reason"], dict(data["metrics"]),
            hash=data["hash"], fidelity=data["fidelity"],
        )  # fmt: skip


def new_search_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def prepare_and_version(name: str, project_dir: Path, data_root: Path | None = None, download: bool = False) -> DatasetRef:
    """Check ``data/`` against ``data.dvc``, write the prepared splits, ``dvc add`` and push them; return the version.

    A workspace that no longer matches ``data.dvc`` (a corrupted or hand-edited file) stops here with
    :class:`~nas_core.versioning.DataIntegrityError`, before anything is rewritten or trained. ``data_root``
    and ``download`` are for torchvision's datasets (see :mod:`nas_core.sources`).
    """
    project_dir = Path(project_dir).resolve()
    versioning.ensure_repo(project_dir)
    versioning.check_data(project_dir)
    path = prepare_dataset(name, project_dir / versioning.DATA_DIR, DATA_SEED, data_root, download)
    version = versioning.track_data(project_dir)
    versioning.push_data(project_dir)
    return DatasetRef(name, version, path)


SPACE_FOR_DIMS = {2: "image", 1: "sequence"}  # the space a search uses when none is set: by the data's spatial dims
_INPUTS = {2: "images (C x H x W)", 1: "sequences (C x L)"}


def space_dims(space: str) -> int:
    """Spatial dimensions of the inputs a registered space builds networks for (2 unless it says otherwise)."""
    return int(getattr(SPACES[space], "input_ndim", 2))


def fit_space_to_data(config: SearchConfig) -> SearchConfig:
    """Check that the dataset's source is there (without reading it) and pick or check the space for it.

    Without an explicit ``space`` the search follows the data: ``image`` for images, ``sequence`` for
    N x C x L arrays. An explicit space built for the other kind of input is a DatasetError.
    """
    if config.table_path is not None:
        return config
    dims = inspect_source(config.dataset, config.data_root, config.download)
    if dims == space_dims(config.space):
        return config
    if "space" not in config.model_fields_set:
        return config.model_copy(update={"space": SPACE_FOR_DIMS[dims]})
    fitting = " or ".join(name for name in SPACES if space_dims(name) == dims)
    raise DatasetError(
        f"dataset '{config.dataset}' holds {_INPUTS[dims]} but space '{config.space}' builds networks for "
        f"{_INPUTS[space_dims(config.space)]}; use --space {fitting} (or leave --space out)"
    )


def space_options(config: SearchConfig) -> dict[str, Any]:
    """The config settings that the chosen space takes (e.g. min_nodes/max_nodes for ``image``)."""
    accepted = {f.name for f in dataclasses.fields(SPACES[config.space])}
    return {k: v for k, v in {"min_nodes": config.min_nodes, "max_nodes": config.max_nodes}.items() if k in accepted}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def threads_per_candidate(workers: int) -> int:
    """Each parallel candidate's share of the cores (no oversubscription)."""
    return max(1, (os.cpu_count() or 1) // workers)


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


def find_search_output(target: str, project_dir: Path) -> Path:
    """The output folder of the search to resume: ``target`` is that folder or the search id."""
    folder = Path(target)
    if folder.is_dir():
        read_saved_search(folder)  # says what is wrong with it
        return folder.resolve()
    guess = Path("outputs") / target
    if (guess / SEARCH_FILE).is_file():
        return guess.resolve()
    uri = resolve_tracking_uri(project_dir)
    if not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).is_file():  # never create a store to look
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        query = f"tags.`nas.search_id` = '{target}' and tags.`nas.role` = 'search'"
        experiments = [e.experiment_id for e in client.search_experiments()]
        for run in client.search_runs(experiments, query) if experiments else []:
            output = Path(run.data.tags.get("nas.output", ""))
            if (output / SEARCH_FILE).is_file():
                return output
    raise ResumeError(f"no search output folder or search id '{target}' found (looked in outputs/ and MLflow at {uri})")


def outer_mlflow_run(tracking_uri: str) -> Run | None:
    """The run ``mlflow run`` opened for this process (``MLFLOW_RUN_ID``), when it is RUNNING in this store."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    try:
        run = _retry(lambda: MlflowClient(tracking_uri).get_run(run_id))
    except MlflowException:  # another store's run, or a stale variable: the search opens its own run
        return None
    return run if run.info.status == "RUNNING" else None


class SearchRun:
    """The state of one search. Steps are called in order by the flow (or directly, in tests)."""

    def __init__(self, config: SearchConfig, search_id: str | None = None, resume: bool = False) -> None:
        self.search_id = search_id or new_search_id()
        self.resume = resume
        self.output = Path(config.output or Path("outputs") / self.search_id).resolve()
        self.project_dir = Path(config.project_dir).resolve()
        absolute = {"output": self.output, "project_dir": self.project_dir}
        if config.init_genome is not None:
            absolute["init_genome"] = Path(config.init_genome).resolve()
        kind, source_path = parse_dataset(config.dataset)
        if source_path is not None:  # abspath, not resolve: the file name names the prepared folder
            absolute["dataset"] = f"{kind}:{os.path.abspath(source_path)}"
        if config.data_root is not None:
            absolute["data_root"] = Path(config.data_root).resolve()
        self.config = config = fit_space_to_data(config.model_copy(update=absolute))  # search.json must work from any folder
        self.space = create_space(config.space, hparams=config.hparams, **space_options(config))
        self.strategy: Strategy = create_strategy(
            config.strategy, self.space, seed=config.seed, population=config.population, constraint=self.within_limits
        )
        self.table = (
            TableEvaluator.load(config.table_path, config.select_metric, config.report_metric) if config.table_path else None
        )
        self._costs: dict[str, dict[str, int]] = {}
        if config.init_genome is not None and not resume:
            self.strategy.enqueue(Genome.from_json(Path(config.init_genome).read_text()))
        self.records: list[CandidateRecord] = []  # every finished candidate, in the order they finished
        self.by_hash: dict[str, CandidateRecord] = {}
        self.current: list[dict[str, Any]] = []  # the generation in flight: its proposals with their indices
        self.generation = 0
        self.killed_on_resume = 0
        self.started = time.monotonic()
        self.dataset: DatasetRef | None = None
        self.data: PreparedData | None = None
        self.tracker: SearchTracker | None = None
        self.run_id = ""
        self.owns_run = True  # False when the parent run is an outer `mlflow run`'s: that command closes it
        self.experiment_name = config.experiment_name
        self.on_record: Callable[[CandidateRecord], None] | None = None
        self.registration: Registration | None = None  # the best model's version in the MLflow model registry
        self.handoff: Path | None = None  # the handoff bundle written by export()

    # ---- stages ---------------------------------------------------------------------------
    def prepare(self) -> DatasetRef:
        """Record the search, prepare and version the data, open (or reopen) the search's MLflow run."""
        self.output.mkdir(parents=True, exist_ok=True)
        saved = read_saved_search(self.output) if self.resume and (self.output / SEARCH_FILE).is_file() else {}
        self.run_id = saved.get("mlflow_run_id", "")
        self._write_search_file()  # first thing: from here on the search can be resumed
        if self.table is not None:
            self.dataset = DatasetRef(f"table:{self.table.path.name}", self.table.version, self.table.path.resolve())
        else:
            self.dataset = prepare_and_version(self.config.dataset, self.project_dir, self.config.data_root, self.config.download)
            self.data = load_prepared(self.project_dir / versioning.DATA_DIR, self.config.dataset)
            remember_data(self.project_dir, self.config.dataset, self.dataset.version, self.data)
        tracking_uri = resolve_tracking_uri(self.project_dir)
        outer = None if self.run_id else outer_mlflow_run(tracking_uri)
        if outer is not None:  # candidates go to the outer run's experiment, so that they nest under it
            self.tracker = SearchTracker.attach(tracking_uri, outer.info.experiment_id)
            self.experiment_name = _retry(lambda: self.tracker.client.get_experiment(outer.info.experiment_id)).name
        else:
            self.tracker = SearchTracker(tracking_uri, self.config.experiment_name, self.project_dir / ARTIFACTS_DIR_NAME)
        if self.run_id:
            self.tracker.reopen_run(self.run_id)
            self._restore()
        else:
            params = {k: v for k, v in self.config.model_dump(mode="json").items() if v is not None}
            tags = {
                "search_id": self.search_id,
                "role": "search",
                "strategy": self.config.strategy,
                "dataset": self.dataset.name,
                "dataset_version": self.dataset.version,
                "output": str(self.output),
            }
            if outer is not None:
                self._adopt_run(outer, f"search-{self.search_id}", params, tags)
            else:
                self.run_id = self.tracker.start_run(f"search-{self.search_id}", params, tags)
            self._write_search_file()
        return self.dataset

    def _adopt_run(self, run: Run, name: str, params: dict[str, Any], tags: dict[str, Any]) -> None:
        """Make an outer ``mlflow run``'s run the search's parent; that command ends it with its exit status.

        ``mlflow run`` has already logged the entry point's parameters as typed (``budget`` "2.0", say) and MLflow
        refuses to change a logged value, so those keep their values and only the other settings are added.
        """
        assert self.tracker is not None
        self.run_id, self.owns_run = run.info.run_id, False
        self.tracker.log_params(self.run_id, {k: v for k, v in params.items() if k not in run.data.params})
        _retry(lambda: self.tracker.client.update_run(self.run_id, name=name))
        self.tracker.set_tags(self.run_id, tags)

    def _write_search_file(self) -> None:
        write_json_atomic(
            self.output / SEARCH_FILE,
            {"search_id": self.search_id, "mlflow_run_id": self.run_id, "config": self.config.model_dump(mode="json")},
        )

    def _restore(self) -> None:
        """Continue from the last checkpoint; close the runs the dead process left RUNNING."""
        assert self.tracker is not None
        path = self.output / STATE_FILE
        if path.is_file():
            state = json.loads(path.read_text())
            self.strategy.load_state_dict(state["strategy"])
            self.generation = state["generation"]
            self.current = state["current"]
            for data in state["finished"]:
                self._remember(CandidateRecord.from_checkpoint(data))
            best = self.best()
            weights_path = self.output / WEIGHTS_FILE
            if best is not None and weights_path.is_file():
                saved = torch.load(weights_path, weights_only=True)
                if saved["hash"] == best.hash:
                    best.weights = saved["weights"]
        recorded = {r.mlflow_run_id: r for r in self.records}
        for run in self.tracker.search_runs({"search_id": self.search_id, "role": "candidate"}, status="RUNNING"):
            record = recorded.get(run.info.run_id)
            if record is not None:  # checkpointed, but the process died before closing the run
                self._close_run(record)
            else:
                self.tracker.set_tags(run.info.run_id, {"status": "killed", "failure_reason": KILLED_REASON})
                self.tracker.end_run(run.info.run_id, ok=False, status="KILLED")
                self.killed_on_resume += 1

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

    def unfinished(self) -> list[dict[str, Any]]:
        """Proposals of the generation in flight that have no recorded outcome yet."""
        done = {r.index for r in self.records}
        return [entry for entry in self.current if entry["index"] not in done]

    def remaining(self) -> int:
        return self.config.budget - len(self.records)

    def propose(self) -> list[CandidateJob]:
        """The jobs to run next: the unfinished ones of the generation in flight (after a resume), else a new
        generation of up to ``population`` unseen genomes, never past the budget."""
        if self.current and not self.unfinished():
            self.select()  # resumed after the generation's last candidate but before it was told to the strategy
        if not self.unfinished():
            count = min(self.config.population, self.remaining())
            if count <= 0:
                return []
            self.generation += 1
            proposals = self.strategy.ask(count)
            first = len(self.records) + 1
            self.current = [self._entry(p, first + i) for i, p in enumerate(proposals)]
            self._checkpoint()
        return [self._job(entry) for entry in self.unfinished()]

    def _entry(self, proposal: Proposal, index: int) -> dict[str, Any]:
        return {
            "index": index,
            "generation": self.generation,
            "genome": proposal.genome.to_dict(),
            "hash": proposal.hash,
            "origin": proposal.origin,
            "parents": list(proposal.parents),
        }

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

    def _job(self, entry: dict[str, Any]) -> CandidateJob:
        """A self-contained job for one proposal: what to train, how, and where to log it."""
        assert self.tracker is not None and self.dataset is not None
        genome = Genome.from_dict(entry["genome"])
        train = self.train_config(genome)
        settings = (
            {"evaluator": self.config.evaluator}
            if self.table
            else {f"train.{k}": v for k, v in vars(train).items() if k != "device"}
        )
        parent_run_ids = [self.by_hash[h].mlflow_run_id for h in entry["parents"] if h in self.by_hash]
        table = (str(self.table.path), self.table.select_metric, self.table.report_metric) if self.table else None
        return CandidateJob(
            search_id=self.search_id,
            index=entry["index"],
            generation=entry["generation"],
            genome=entry["genome"],
            hash=entry["hash"],
            origin=entry["origin"],
            parents=tuple(entry["parents"]),
            run_name=f"candidate-{entry['index']:03d}-{entry['hash'][:8]}",
            run_params={**self.space.describe(genome), **settings},
            run_tags={
                "search_id": self.search_id,
                "role": "candidate",
                "index": entry["index"],
                "generation": entry["generation"],
                "strategy": self.config.strategy,
                "origin": entry["origin"],
                "hash": entry["hash"],
                "fidelity": train.epochs,
                "parents": ",".join(parent_run_ids),
                "parent_hashes": ",".join(entry["parents"]),
                "dataset": self.dataset.name,
                "dataset_version": self.dataset.version,
            },
            parent_run_id=self.run_id,
            tracking_uri=self.tracker.tracking_uri,
            experiment_id=self.tracker.experiment_id,
            project_dir=str(self.project_dir),
            dataset=self.config.dataset,
            dataset_version=self.dataset.version,
            space=self.config.space,
            space_options=space_options(self.config),
            hparams=self.config.hparams,
            train=train,
            table=table,
            devices=self.config.device,
            per_device=self.config.candidates_per_gpu,
            threads=threads_per_candidate(self.config.workers),
        )

    def record(self, outcome: CandidateOutcome) -> CandidateRecord:
        """Remember one outcome, checkpoint, then close its MLflow run (in that order, for resume)."""
        entry = next(e for e in self.current if e["index"] == outcome.index)
        genome = Genome.from_dict(entry["genome"])
        metrics = dict(outcome.metrics)
        if self.table is not None and outcome.ok:
            metrics.update(self.cost(genome))
        record = CandidateRecord(
            outcome.index, entry["generation"], genome, entry["origin"], list(entry["parents"]),
            [self.by_hash[h].mlflow_run_id for h in entry["parents"] if h in self.by_hash], outcome.run_id,
            outcome.status, outcome.reason, metrics, outcome.weights, hash=entry["hash"], fidelity=self.config.epochs,
        )  # fmt: skip
        previous_best = self.best()
        self._remember(record)
        if record.ok and self.best() is record:
            if record.weights is not None:
                self._save_weights(record)
            if previous_best is not None:
                previous_best.weights = None
        else:
            record.weights = None
        self._checkpoint()
        self._close_run(record)
        best = self.best()
        if best is not None:
            self.tracker.log_metrics(self.run_id, {"best_val_accuracy": best.metrics["val_accuracy"]}, step=len(self.records))
        if self.on_record is not None:
            self.on_record(record)
        return record

    def _remember(self, record: CandidateRecord) -> None:
        self.records.append(record)
        self.by_hash[record.hash] = record

    def _save_weights(self, record: CandidateRecord) -> None:
        tmp = self.output / f".{WEIGHTS_FILE}.tmp"
        torch.save({"hash": record.hash, "weights": record.weights}, tmp)
        os.replace(tmp, self.output / WEIGHTS_FILE)

    def _close_run(self, record: CandidateRecord) -> None:
        """Log final metrics, status and reason; close the candidate's run."""
        assert self.tracker is not None
        run_id = record.mlflow_run_id
        final = {k: v for k, v in record.metrics.items() if k not in EPOCH_METRICS or self.table}  # else in the history
        if final:
            self.tracker.log_metrics(run_id, final, step=record.fidelity)
        self.tracker.set_tags(run_id, {"status": record.status, **({"failure_reason": record.reason} if record.reason else {})})
        self.tracker.end_run(run_id, record.ok)

    def _checkpoint(self) -> None:
        write_json_atomic(
            self.output / STATE_FILE,
            {
                "format": 2,
                "search_id": self.search_id,
                "generation": self.generation,
                "strategy": self.strategy.state_dict(),
                "current": self.current,
                "finished": [r.checkpoint() for r in self.records],
            },
        )

    def select(self) -> CandidateRecord | None:
        """Tell the strategy the generation's results in proposal order, checkpoint; return the best so far."""
        indices = {entry["index"] for entry in self.current}
        generation = sorted((r for r in self.records if r.index in indices), key=lambda r: r.index)
        self.strategy.tell(
            [
                CandidateResult(r.genome, r.status, r.metrics.get("val_accuracy") if r.ok else None, r.reason, r.metrics, r.hash)
                for r in generation
            ]
        )
        self.current = []
        self._checkpoint()
        return self.best()

    def best(self) -> CandidateRecord | None:
        finished = [r for r in self.records if r.ok]
        return max(finished, key=CandidateRecord.selection_key) if finished else None

    def can_export(self) -> bool:
        """A trained best model exists (table evaluations have no weights to export)."""
        best = self.best()
        return best is not None and best.weights is not None

    def best_model(self) -> nn.Module:
        """The best candidate's network with its trained weights."""
        best = self.best()
        assert best is not None and best.weights is not None and self.data is not None
        model = self.space.build(best.genome, self.data.input_shape, self.data.num_classes, self.data.mean, self.data.std)
        model.load_state_dict(best.weights)
        return model.eval()

    def export(self) -> ExportReport:
        """Export the best candidate to ``<output>/model.onnx`` (verified), log it on the parent run, register it in
        the MLflow model registry and write the handoff bundle (``<output>/handoff/``)."""
        best = self.best()
        assert best is not None and self.data is not None and self.dataset is not None
        metadata = {
            "nas.genome": best.genome.to_json(),
            "nas.hash": best.hash,
            "nas.dataset": self.dataset.name,
            "nas.dataset_version": self.dataset.version,
            "nas.metrics": json.dumps(best.metrics, sort_keys=True),
            "nas.mlflow_run_id": best.mlflow_run_id,
            "nas.search_mlflow_run_id": self.run_id,
            "nas.search_id": self.search_id,
            "nas.input_range": (
                "float32 in [{:g}, {:g}]".format(*self.data.input_range) if self.data.input_range else "float32 features"
            )
            + "; normalisation is inside the model",
            "nas.classes": json.dumps(self.data.classes),
            PREPROCESSING_KEY: preprocessing_metadata(self.data),
        }
        report = export_onnx(self.best_model(), self.output / "model.onnx", self.data.x["test"], metadata)
        assert self.tracker is not None
        self.tracker.log_artifact(self.run_id, report.path, "model")
        self.tracker.log_metrics(self.run_id, {"onnx_max_abs_diff": report.max_abs_diff})
        self.tracker.set_tags(self.run_id, {"best_run_id": best.mlflow_run_id, "best_hash": best.hash})
        self.registration = register_search_best(self, report.path)
        self.handoff = write_search_bundle(self, report, self.registration)
        return report

    def abort(self, reason: str) -> None:
        """Close the parent run as FAILED (the search itself broke, not just a candidate); it can be resumed."""
        if self.tracker is not None and self.run_id:
            self.tracker.set_tags(self.run_id, {"status": "failed", "failure_reason": reason[:5000]})
            if self.owns_run:
                self.tracker.end_run(self.run_id, ok=False)

    def finish(self, report: ExportReport | None) -> dict[str, Any]:
        """Write ``summary.json``, log it, and close the parent run (FAILED when nothing trained)."""
        assert self.tracker is not None and self.dataset is not None
        best = self.best()
        summary: dict[str, Any] = {
            "search_id": self.search_id,
            "mlflow_tracking_uri": self.tracker.tracking_uri,
            "mlflow_experiment": self.experiment_name,
            "mlflow_run_id": self.run_id,
            "mlflow_ui": ui_command(self.tracker.tracking_uri),
            "output": str(self.output),
            "dataset": {"name": self.dataset.name, "version": self.dataset.version},
            "strategy": self.config.strategy,
            "budget": self.config.budget,
            "seed": self.config.seed,
            "elapsed_seconds": round(time.monotonic() - self.started, 2),
            "candidates": [r.summary() for r in sorted(self.records, key=lambda r: r.index)],
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
                "handoff_path": str(self.handoff) if self.handoff else None,
                "registry": self.registration.to_dict() if self.registration else None,
            }
        write_json_atomic(self.output / SUMMARY_FILE, summary)
        self.tracker.log_artifact(self.run_id, self.output / SUMMARY_FILE)
        self.tracker.set_tags(self.run_id, {"status": "ok" if summary["best"] else "failed"})
        if self.owns_run:
            self.tracker.end_run(self.run_id, summary["best"] is not None)
        return summary


def set_torch_threads(workers: int) -> int:
    """Give each parallel candidate its share of the cores (no oversubscription)."""
    threads = threads_per_candidate(workers)
    torch.set_num_threads(threads)
    return threads
