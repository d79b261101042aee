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
import math
import os
import secrets
import shutil
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
from nas_core.fidelity import Evaluation, Rungs, promotions
from nas_core.final import FINAL_ROLE, FinalModel, exported_metrics, restore_final
from nas_core.genome import Genome
from nas_core.handoff import PREPROCESSING_KEY, preprocessing_metadata, write_search_bundle
from nas_core.proxies import rank_correlation, score_genome
from nas_core.registry import Registration, register_search_best
from nas_core.spaces import SPACES, create_space
from nas_core.strategies import CandidateResult, Proposal, Strategy, create_strategy
from nas_core.tracking import ARTIFACTS_DIR_NAME, SearchTracker, _retry, is_transient, resolve_tracking_uri, ui_command
from nas_core.training import TrainConfig

DATA_SEED = 0  # the split never depends on the search seed: one dataset version per source
# tabular benchmarks (NAS-Bench-201) are on CIFAR-10: costs are computed for its inputs
TABLE_INPUT_SHAPE = (3, 32, 32)
TABLE_NUM_CLASSES = 10
SEARCH_FILE, STATE_FILE, WEIGHTS_FILE, SUMMARY_FILE = "search.json", "state.json", "best_weights.pt", "summary.json"
CHECKPOINTS_DIR, PLOTS_DIR, REPORT_FILE = "checkpoints", "plots", "report.html"
EARLY_STOP_CURVES = 3  # fewest earlier curves reaching an epoch before median early stopping judges that epoch
PROMOTION = "promotion"  # the origin of a multi-fidelity evaluation that continues an architecture at a longer budget
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
    bracket: int = 0  # multi-fidelity: the hyperband bracket
    promoted_from: str = ""  # multi-fidelity: the run this evaluation continued from
    proxy: float | None = None  # the zero-cost proxy's score at initialisation
    finished_seconds: float | None = None  # since the search (this process) started
    timing: dict[str, float] = field(default_factory=dict)  # train_started/train_ended (unix time)
    curve: list[float] = field(default_factory=list)  # validation accuracy per epoch trained

    def __post_init__(self) -> None:
        self.hash = self.hash or self.genome.canonical_hash()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def selection_key(self) -> tuple[float, float, float]:
        """Validation accuracy, then validation F1, then fewer parameters. Never a test metric."""
        m = self.metrics
        return (m.get("val_accuracy", -1.0), m.get("val_f1", -1.0), -m.get("params", 0.0))

    def best_key(self) -> tuple[float, ...]:
        """What makes the search's best: the longest training (multi-fidelity), then :meth:`selection_key`."""
        return (self.fidelity, *self.selection_key())

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
            "test_accuracy": self.metrics.get("test_accuracy"),
            "params": self.metrics.get("params"),
            "flops": self.metrics.get("flops"),
            "mlflow_run_id": self.mlflow_run_id,
            "parents": self.parents,
            "parent_run_ids": self.parent_run_ids,
            "bracket": self.bracket,
            "promoted_from": self.promoted_from or None,
            "proxy": self.proxy,
            "finished_seconds": self.finished_seconds,
            "train_seconds": self.metrics.get("train_seconds"),
            "wall_seconds": self.metrics.get("wall_seconds"),
            **{k: self.timing.get(k) for k in ("train_started", "train_ended")},
            "stopped_at_epoch": self.metrics.get("stopped_at_epoch"),
        }

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to restore the record after a crash (weights are saved separately)."""
        return {
            **self.summary(),
            "genome": self.genome.to_dict(),
            "metrics": self.metrics,
            "timing": self.timing,
            "curve": self.curve,
        }

    @classmethod
    def from_checkpoint(cls, data: dict[str, Any]) -> CandidateRecord:
        return cls(
            data["index"], data["generation"], Genome.from_dict(data["genome"]), data["origin"], list(data["parents"]),
            list(data["parent_run_ids"]), data["mlflow_run_id"], data["status"], data["reason"], dict(data["metrics"]),
            hash=data["hash"], fidelity=data["fidelity"], bracket=data.get("bracket", 0),
            promoted_from=data.get("promoted_from") or "", proxy=data.get("proxy"),
            finished_seconds=data.get("finished_seconds"), timing=dict(data.get("timing", {})),
            curve=list(data.get("curve", [])),
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


def training_params(train: TrainConfig) -> dict[str, Any]:
    """A candidate's training settings as MLflow params (``train.*``); where and how it stops is logged elsewhere."""
    return {f"train.{k}": v for k, v in vars(train).items() if k not in ("device", "train_splits", "stop_below")}


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
        self.rungs = (
            Rungs(config.min_epochs, config.top_epochs, config.eta, config.schedule) if config.fidelity == "epochs" else None
        )
        self.screened: list[dict[str, Any]] = []  # proposals the zero-cost proxy kept from training
        self.final: FinalModel | None = None  # the winner retrained with the final budget (--final-epochs)
        self.started_at = time.time()
        self.timings: dict[str, float] = {}  # seconds per stage, in this process

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time spent inside the block to ``timings[stage]`` (for the overhead benchmark)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.monotonic() - started

    def planned_evaluations(self) -> int:
        """How many evaluations the search expects to make (the budget, plus promotions when multi-fidelity)."""
        return self.rungs.planned_evaluations(self.config.budget) if self.rungs else self.config.budget

    # ---- stages ---------------------------------------------------------------------------
    def prepare(self) -> DatasetRef:
        """Record the search, prepare and version the data, open (or reopen) the search's MLflow run."""
        with self.timed("prepare"):
            return self._prepare()

    def _prepare(self) -> DatasetRef:
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
            self.screened = list(state.get("screened", []))
            restore_final(self, state.get("final"))
            best = self.best()
            weights_path = self.output / WEIGHTS_FILE
            if best is not None and weights_path.is_file():
                saved = torch.load(weights_path, weights_only=True)
                if saved["hash"] == best.hash:
                    best.weights = saved["weights"]
        recorded = {r.mlflow_run_id: r for r in self.records}
        running = [
            run
            for role in ("candidate", FINAL_ROLE)
            for run in self.tracker.search_runs({"search_id": self.search_id, "role": role}, status="RUNNING")
        ]
        for run in running:
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

    def new_architectures(self) -> int:
        """Architectures evaluated for the first time so far (what the budget counts)."""
        return sum(r.origin != PROMOTION for r in self.records)

    def remaining(self) -> int:
        return self.config.budget - self.new_architectures()

    def propose(self) -> list[CandidateJob]:
        """The jobs to run next: the unfinished ones of the generation in flight (after a resume), else a new
        generation: multi-fidelity promotions first, then up to ``population`` unseen genomes, never past the budget."""
        with self.timed("propose"):
            if self.current and not self.unfinished():
                self.select()  # resumed after the generation's last candidate but before it was told to the strategy
            if not self.unfinished():
                promoted = self.promotions()[: self.config.population]
                count = min(self.config.population - len(promoted), self.remaining())
                if not promoted and count <= 0:
                    return []
                self.generation += 1
                first = len(self.records) + 1
                self.current = [self._promotion_entry(r, first + i) for i, r in enumerate(promoted)]
                ordinal = self.new_architectures()
                for proposal, score in self._ask(count):
                    self.current.append(self._entry(proposal, first + len(self.current), ordinal, score))
                    ordinal += 1
                self.write_checkpoint()
            return [self.job_for(entry) for entry in self.unfinished()]

    def promotions(self) -> list[CandidateRecord]:
        """Multi-fidelity: the finished evaluations to continue at their next rung now (none otherwise)."""
        if self.rungs is None:
            return []
        ordered = sorted(self.records, key=lambda r: r.index)
        evaluations = [Evaluation(r.hash, r.bracket, r.fidelity, r.selection_key() if r.ok else None) for r in ordered]
        chosen = promotions(self.rungs, evaluations)
        by_identity = {(r.hash, r.fidelity): r for r in ordered}
        return [by_identity[(e.hash, e.epochs)] for e in chosen]

    def _ask(self, count: int) -> list[tuple[Proposal, float | None]]:
        """``count`` new proposals; with a zero-cost proxy, scored, and only the best-scoring ``proxy_keep`` share kept."""
        if count <= 0:
            return []
        if self.config.proxy == "none" or self.data is None:
            return [(p, None) for p in self.strategy.ask(count)]
        proposals = self.strategy.ask(math.ceil(count / self.config.proxy_keep))
        scores = [self._proxy_score(p.genome) for p in proposals]
        ranked = sorted(range(len(proposals)), key=lambda i: -scores[i] if math.isfinite(scores[i]) else math.inf)
        kept = sorted(ranked[:count])  # in proposal order
        for i in ranked[count:]:
            self.screened.append({"hash": proposals[i].hash, "generation": self.generation, "proxy": scores[i]})
        return [(proposals[i], scores[i]) for i in kept]

    def _proxy_score(self, genome: Genome) -> float:
        assert self.data is not None
        try:
            return score_genome(self.space.build, genome, self.data, self.config.proxy, seed=self.config.seed)
        except Exception:  # a genome that cannot be built or scored ranks last; training reports why it fails
            return -math.inf

    def _entry(self, proposal: Proposal, index: int, ordinal: int, proxy: float | None) -> dict[str, Any]:
        bracket = self.rungs.bracket_of(ordinal) if self.rungs else 0
        return {
            "index": index,
            "generation": self.generation,
            "genome": proposal.genome.to_dict(),
            "hash": proposal.hash,
            "origin": proposal.origin,
            "parents": list(proposal.parents),
            "fidelity": self.rungs.epochs[bracket] if self.rungs else self.train_config(proposal.genome).epochs,
            "bracket": bracket,
            "promoted_from": "",
            "proxy": proxy if proxy is None or math.isfinite(proxy) else None,
        }

    def _promotion_entry(self, record: CandidateRecord, index: int) -> dict[str, Any]:
        assert self.rungs is not None
        return {
            "index": index,
            "generation": self.generation,
            "genome": record.genome.to_dict(),
            "hash": record.hash,
            "origin": PROMOTION,
            "parents": [record.hash],
            "fidelity": self.rungs.epochs[self.rungs.rung_of(record.fidelity) + 1],
            "from_fidelity": record.fidelity,
            "bracket": record.bracket,
            "promoted_from": record.mlflow_run_id,
            "proxy": record.proxy,
        }

    def checkpoint_path(self, hash_: str, fidelity: int) -> Path:
        """Where a multi-fidelity evaluation's training state is kept until it is promoted (or the search ends)."""
        return self.output / CHECKPOINTS_DIR / f"{hash_}-e{fidelity}.pt"

    def train_config(self, genome: Genome | None = None) -> TrainConfig:
        """The search-wide training settings, overridden by the genome's own hyperparameters."""
        c = self.config
        settings = TrainConfig(
            epochs=c.top_epochs,
            batch_size=c.batch_size,
            optimizer=c.optimizer,
            lr=c.lr,
            weight_decay=c.weight_decay,
            seed=c.seed,
            time_limit_s=c.candidate_timeout,
            schedule_epochs=c.top_epochs if self.rungs else None,
            precision=c.precision,
            augment=c.augment,
        )
        return dataclasses.replace(settings, **genome.hparams) if genome is not None else settings

    def job_for(self, entry: dict[str, Any]) -> CandidateJob:
        """A self-contained job for one proposal: what to train, how, and where to log it."""
        assert self.tracker is not None and self.dataset is not None
        genome = Genome.from_dict(entry["genome"])
        train = dataclasses.replace(
            self.train_config(genome),
            epochs=entry.get("fidelity", self.config.epochs),
            stop_below=self.stopping_curve(entry["generation"]),
        )
        settings = {"evaluator": self.config.evaluator} if self.table else training_params(train)
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
                **self._fidelity_tags(entry),
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
            start_checkpoint=(
                str(self.checkpoint_path(entry["hash"], entry["from_fidelity"])) if "from_fidelity" in entry else None
            ),
            keep_state=self.rungs is not None and train.epochs < self.rungs.max_epochs,
            proxy=(self.config.proxy, entry["proxy"]) if entry.get("proxy") is not None else None,
        )

    def stopping_curve(self, generation: int) -> tuple[float | None, ...]:
        """Median early stopping: per epoch, the median validation accuracy of earlier generations' candidates
        (None for the first quarter of the epochs and where fewer than 3 curves reach that epoch).

        Only earlier generations count, so a generation's jobs (and a resumed search's) get the same thresholds.
        """
        if self.config.early_stop == "none":
            return ()
        curves = [r.curve for r in self.records if r.ok and r.curve and r.generation < generation]
        grace = max(1, self.config.top_epochs // 4)
        thresholds: list[float | None] = []
        for epoch in range(1, self.config.top_epochs + 1):
            values = [c[epoch - 1] for c in curves if len(c) >= epoch]
            thresholds.append(statistics.median(values) if epoch > grace and len(values) >= EARLY_STOP_CURVES else None)
        return tuple(thresholds)

    def _fidelity_tags(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self.rungs is None or entry["fidelity"] not in self.rungs.epochs:
            return {}
        tags = {"bracket": entry["bracket"], "rung": self.rungs.rung_of(entry["fidelity"])}
        if entry["promoted_from"]:
            tags.update(promoted_from=entry["promoted_from"], resumed_from_epoch=entry["from_fidelity"])
        return tags

    def record(self, outcome: CandidateOutcome) -> CandidateRecord:
        """Remember one outcome, checkpoint, then close its MLflow run (in that order, for resume)."""
        entry = next(e for e in self.current if e["index"] == outcome.index)
        genome = Genome.from_dict(entry["genome"])
        metrics = dict(outcome.metrics)
        if self.table is not None and outcome.ok:
            metrics.update(self.cost(genome))
        parent_run_ids = (
            [entry["promoted_from"]]
            if entry.get("promoted_from")
            else [self.by_hash[h].mlflow_run_id for h in entry["parents"] if h in self.by_hash]
        )
        record = CandidateRecord(
            outcome.index, entry["generation"], genome, entry["origin"], list(entry["parents"]), parent_run_ids,
            outcome.run_id, outcome.status, outcome.reason, metrics, outcome.weights, hash=entry["hash"],
            fidelity=entry.get("fidelity", self.config.epochs), bracket=entry.get("bracket", 0),
            promoted_from=entry.get("promoted_from", ""), proxy=entry.get("proxy"),
            finished_seconds=round(time.time() - self.started_at, 3), timing=dict(outcome.timing),
            curve=list(outcome.curve),
        )  # fmt: skip
        if outcome.state is not None and outcome.ok:
            self._save_state(record, outcome.state)
        if "from_fidelity" in entry:  # continued: the shorter run's state is no longer needed
            self.checkpoint_path(record.hash, entry["from_fidelity"]).unlink(missing_ok=True)
        previous_best = self.best()
        self._remember(record)
        if record.ok and self.best() is record:
            if record.weights is not None:
                self._save_weights(record)
            if previous_best is not None:
                previous_best.weights = None
        else:
            record.weights = None
        self.write_checkpoint()
        self._close_run(record)
        best = self.best()
        if best is not None:
            self.tracker.log_metrics(self.run_id, {"best_val_accuracy": best.metrics["val_accuracy"]}, step=len(self.records))
        if self.on_record is not None:
            self.on_record(record)
        return record

    def _remember(self, record: CandidateRecord) -> None:
        self.records.append(record)
        known = self.by_hash.get(record.hash)
        if known is None or record.fidelity >= known.fidelity:  # parents link to an architecture's longest training
            self.by_hash[record.hash] = record

    def _save_state(self, record: CandidateRecord, state: dict[str, Any]) -> None:
        path = self.checkpoint_path(record.hash, record.fidelity)
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)

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

    def write_checkpoint(self) -> None:
        write_json_atomic(
            self.output / STATE_FILE,
            {
                "format": 2,
                "search_id": self.search_id,
                "generation": self.generation,
                "strategy": self.strategy.state_dict(),
                "current": self.current,
                "finished": [r.checkpoint() for r in self.records],
                "screened": self.screened,
                "final": self.final.summary() if self.final else None,
            },
        )

    def select(self) -> CandidateRecord | None:
        """Tell the strategy the generation's results in proposal order, checkpoint; return the best so far.

        Promotions are not told again: the strategy learns each architecture once, from its first evaluation.
        """
        with self.timed("select"):
            return self._select()

    def _select(self) -> CandidateRecord | None:
        indices = {entry["index"] for entry in self.current}
        generation = sorted((r for r in self.records if r.index in indices and r.origin != PROMOTION), key=lambda r: r.index)
        self.strategy.tell(
            [
                CandidateResult(r.genome, r.status, r.metrics.get("val_accuracy") if r.ok else None, r.reason, r.metrics, r.hash)
                for r in generation
            ]
        )
        self.current = []
        self.write_checkpoint()
        return self.best()

    def best(self) -> CandidateRecord | None:
        finished = [r for r in self.records if r.ok]
        return max(finished, key=CandidateRecord.best_key) if finished else None

    def can_export(self) -> bool:
        """A trained best model exists (table evaluations have no weights to export)."""
        best = self.best()
        return best is not None and best.weights is not None

    def best_model(self) -> nn.Module:
        """The model to export: the best candidate's network with its final-training weights, else as trained."""
        best = self.best()
        assert best is not None and best.weights is not None and self.data is not None
        model = self.space.build(best.genome, self.data.input_shape, self.data.num_classes, self.data.mean, self.data.std)
        final = self.final if self.final is not None and self.final.ok and self.final.source_hash == best.hash else None
        model.load_state_dict(final.weights if final is not None else best.weights)
        return model.eval()

    def exported_metrics(self) -> dict[str, float]:
        """The exported model's metrics: the best's validation metrics, test metrics of the final model if retrained."""
        best = self.best()
        assert best is not None
        return exported_metrics(best, self.final if self.final is not None and self.final.source_hash == best.hash else None)

    def export(self) -> ExportReport:
        """Export the best candidate to ``<output>/model.onnx`` (verified), log it on the parent run, register it in
        the MLflow model registry and write the handoff bundle (``<output>/handoff/``)."""
        with self.timed("export"):
            return self._export()

    def _export(self) -> ExportReport:
        best = self.best()
        assert best is not None and self.data is not None and self.dataset is not None
        metadata = {
            "nas.genome": best.genome.to_json(),
            "nas.hash": best.hash,
            "nas.dataset": self.dataset.name,
            "nas.dataset_version": self.dataset.version,
            "nas.metrics": json.dumps(self.exported_metrics(), sort_keys=True),
            "nas.mlflow_run_id": best.mlflow_run_id,
            **({"nas.final_run_id": self.final.run_id} if self.final is not None and self.final.ok else {}),
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
        """Write ``summary.json``, the search's plots and its HTML report; log them, and close the parent run (FAILED
        when nothing trained)."""
        finishing = time.monotonic()
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
            "fidelity": (
                {"mode": "epochs", "schedule": self.config.schedule, "rungs": self.rungs.epochs, "eta": self.config.eta}
                if self.rungs
                else {"mode": "none", "epochs": self.config.epochs}
            ),
            "proxy": self._proxy_summary(),
            "final": self.final.summary() if self.final else None,
            "candidates": [r.summary() for r in sorted(self.records, key=lambda r: r.index)],
            "best": None,
        }
        if best is not None:
            exported = self.exported_metrics()
            summary["best"] = {
                "hash": best.hash,
                "mlflow_run_id": best.mlflow_run_id,
                "fidelity": best.fidelity,
                "val_accuracy": best.metrics["val_accuracy"],
                "val_f1": best.metrics.get("val_f1"),
                "test_accuracy": exported["test_accuracy"],
                "test_f1": exported.get("test_f1"),
                "candidate_test_accuracy": best.metrics["test_accuracy"],
                "final_run_id": self.final.run_id if self.final is not None and self.final.ok else None,
                "params": int(best.metrics["params"]),
                "flops": int(best.metrics["flops"]),
                "genome": best.genome.to_dict(),
                "onnx_path": str(report.path) if report else None,
                "onnx_max_abs_diff": report.max_abs_diff if report else None,
                "handoff_path": str(self.handoff) if self.handoff else None,
                "registry": self.registration.to_dict() if self.registration else None,
            }
        self._log_plots_and_report(summary)
        self.timings["finish"] = time.monotonic() - finishing
        summary["elapsed_seconds"] = round(time.monotonic() - self.started, 2)
        summary["timings"] = {**{k: round(v, 3) for k, v in self.timings.items()}, "total": summary["elapsed_seconds"]}
        self.tracker.log_metrics(self.run_id, {f"seconds_{k}": v for k, v in summary["timings"].items()})
        write_json_atomic(self.output / SUMMARY_FILE, summary)
        self.tracker.log_artifact(self.run_id, self.output / SUMMARY_FILE)
        if (self.output / REPORT_FILE).is_file():
            self.tracker.log_artifact(self.run_id, self.output / REPORT_FILE)
        self.tracker.set_tags(self.run_id, {"status": "ok" if summary["best"] else "failed"})
        if self.owns_run:
            self.tracker.end_run(self.run_id, summary["best"] is not None)
        shutil.rmtree(self.output / CHECKPOINTS_DIR, ignore_errors=True)  # only needed to continue promoted runs
        return summary

    def _proxy_summary(self) -> dict[str, Any] | None:
        """The proxy's name, its rank correlation with validation accuracy on this search's data, and what it screened."""
        if self.config.proxy == "none":
            return None
        first = [r for r in self.records if r.ok and r.origin != PROMOTION and r.proxy is not None]
        return {
            "name": self.config.proxy,
            "keep": self.config.proxy_keep,
            "rank_correlation": rank_correlation([r.proxy for r in first], [r.metrics["val_accuracy"] for r in first]),
            "pairs": len(first),
            "screened_out": len(self.screened),
        }

    def _log_plots_and_report(self, summary: dict[str, Any]) -> None:
        """The search's PNGs (``plots/``) and the HTML report, on disk and on the parent run. Never fails the search."""
        from nas_core.plots import search_plots
        from nas_core.report import write_report

        assert self.tracker is not None
        try:
            for path in search_plots(summary, self.output / PLOTS_DIR).values():
                self.tracker.log_artifact(self.run_id, path, PLOTS_DIR)
            write_report(self.output, self.output / REPORT_FILE, summary=summary)
        except Exception as exc:
            if is_transient(exc):
                raise
            warnings.warn(f"could not draw the search's plots or report: {type(exc).__name__}: {exc}", stacklevel=2)


def set_torch_threads(workers: int) -> int:
    """Give each parallel candidate its share of the cores (no oversubscription)."""
    threads = threads_per_candidate(workers)
    torch.set_num_threads(threads)
    return threads
