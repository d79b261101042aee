"""The search loop: prepare -> (propose -> evaluate -> record -> select)* -> final training -> export -> finish.

:meth:`Search.run` drives it, like ``optuna.Study.optimize``; the Prefect flow runs the same steps as tasks. What
the search evaluates and for how long comes from pieces it is given (the fidelity schedule, the proxy screen, median
stopping, the table lookup, final training); where results go comes from the ports (tracker, data store, exporter,
reporter, observer). Each outcome is checkpointed as it arrives, so ``resume=True`` continues a search that died
without evaluating a finished candidate again.

Determinism: a generation's results are told to the strategy together, in proposal order, so the proposals never
depend on which candidate finished first or on the number of workers.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import nn

from nas_core.config import SearchConfig
from nas_core.data.preparation import PreparedData, load_prepared
from nas_core.evaluation.packing import GpuWatch
from nas_core.evaluation.stopping import clear_stop, request_stop
from nas_core.evaluation.table import TableEvaluator
from nas_core.evaluation.training import preload_training_imports
from nas_core.evaluation.worker import remember_data
from nas_core.genome import Genome
from nas_core.latency import ModuleTimer
from nas_core.provenance import Provenance
from nas_core.search import checkpoint as files
from nas_core.search.clock import STOP_INTERRUPTED, SearchClock
from nas_core.search.closing import close_evaluation, close_final, close_killed, close_recovery
from nas_core.search.execution import Evaluate, Stage, Stopwatch, evaluate_here, run_inline
from nas_core.search.final import FINAL_ROLE, RECOVERY_ROLE, FinalStage, FinalTraining, WeightsRecovery, exported_metrics
from nas_core.search.front import FRONT_DIR, FrontWeights, choose, front_of
from nas_core.search.identity import context_key
from nas_core.search.memory import EvaluationMemory, StoredEvaluation
from nas_core.search.ports import (
    DataStore,
    ExportOutcome,
    ExportRequest,
    FrontModel,
    MemoryTracker,
    ModelExporter,
    ModelExportError,
    NoReports,
    Observer,
    Reporter,
    SilentObserver,
    Tracker,
)
from nas_core.search.proposing import TABLE_INPUT_SPEC, Proposer
from nas_core.search.records import (
    PROMOTION,
    SKIPPED,
    WARM_START,
    DatasetRef,
    Evaluation,
    EvaluationRequest,
    EvaluationResult,
    FinalModel,
    PlannedEvaluation,
)
from nas_core.search.requests import RequestContext, train_config
from nas_core.search.setup import new_search_id, resolve_config
from nas_core.search.summary import BestModel, SearchSummary
from nas_core.search.warm_start import WarmStart, check_warm_start, seed_genomes, told_evaluations
from nas_core.strategies import CandidateResult

PLOTTED_CANDIDATES = 5  # the best few whose figures are drawn, once, at the end (as many as the report's curves)


class Search:
    """One search: its state and its steps. :meth:`run` calls the steps in order; a flow may call them itself."""

    def __init__(
        self,
        config: SearchConfig,
        data_store: DataStore,
        *,
        search_id: str | None = None,
        resume: bool = False,
        connect_tracker: Callable[[], Tracker] = MemoryTracker,
        exporter: ModelExporter | None = None,
        reporter: Reporter | None = None,
        observer: Observer | None = None,
        latency_timer: ModuleTimer | None = None,
    ) -> None:
        self.search_id = search_id or new_search_id()
        self.resume = resume
        self.config = config = resolve_config(config, self.search_id)
        self.output = Path(config.output)  # resolved: absolute
        self.data_store, self.connect_tracker = data_store, connect_tracker
        self.exporter, self.reporter = exporter, reporter or NoReports()
        self.observer: Observer = observer or SilentObserver()
        self.table = (
            TableEvaluator.load(config.table_path, config.select_metric, config.report_metric) if config.table_path else None
        )
        self.proposer = Proposer(config, self.output, resume, latency_timer)
        self.records: list[Evaluation] = []  # every finished evaluation, in the order they finished
        self.told: list[Evaluation] = []  # earlier searches' evaluations a warm start told the strategy
        self.warm: WarmStart | None = None
        self.memory: EvaluationMemory | None = None  # the tracking store's earlier evaluations (with a warm start)
        self.clock = SearchClock(config.time_budget_seconds, config.workers)
        self.gpus = GpuWatch()  # the GPUs candidates train on here (utilisation, packing): set by prepare()
        self.candidates_spent: float | None = None  # the clock when the search stopped proposing
        self.by_hash: dict[str, Evaluation] = {}  # each architecture's longest evaluation
        self.best_weights: dict[str, Any] | None = None  # of best() only
        self.front = FrontWeights(self.output) if config.export == "pareto" else None  # the front's weights, to export
        training = FinalTraining(config.final_epochs, config.final_splits) if config.final_epochs else None
        self.finalist = FinalStage(training, self.output)
        self.killed_on_resume = 0
        self.prepared = False  # True once prepare() has restored or started the search: abort() may checkpoint
        self.dataset: DatasetRef | None = None
        self.data: PreparedData | None = None
        self.tracker: Tracker | None = None
        self.run_id = ""
        self.owns_run = True  # False when the search's run is someone else's (an outer `mlflow run`): they close it
        self.provenance: Provenance | None = None
        self.export_outcome: ExportOutcome | None = None
        self.plotting: Future[None] | None = None  # the best few's figures, drawn while the best is exported
        self.model_error: str | None = None  # why a search that should have a model has none (summary.json says it)
        self.finished: SearchSummary | None = None  # what finish() wrote
        self.started, self.started_at = time.monotonic(), time.time()
        self.stopwatch = Stopwatch()
        self.timed, self.timings = self.stopwatch.timed, self.stopwatch.seconds

    @property
    def space(self):  # noqa: ANN201 - a SearchSpace
        return self.proposer.space

    @property
    def strategy(self):  # noqa: ANN201 - a Strategy
        return self.proposer.strategy

    @property
    def generation(self) -> int:
        return self.proposer.generation

    @property
    def experiment_name(self) -> str:
        return self.tracker.experiment_name if self.tracker is not None else self.config.experiment_name

    def planned_evaluations(self) -> int:
        """How many evaluations the search expects to make (the budget, plus promotions when multi-fidelity)."""
        return self.proposer.fidelity.planned_evaluations(self.config.budget)

    # ---- the loop -----------------------------------------------------------------------------
    def run(self, evaluate: Evaluate = evaluate_here, stage: Stage = run_inline) -> SearchSummary:
        """Run the whole search; ``evaluate`` yields results as they finish, ``stage`` runs each step (e.g. as a task)."""
        clear_stop()
        try:
            stage("prepare", self.prepare)
            self.observer.resumed(self.records, self.killed_on_resume)
            while requests := stage("propose", self.propose):
                self.observer.stage(f"training generation {self.generation}")
                mark = self.gpus.mark()
                with self.timed("candidates"):
                    for result in evaluate(requests):
                        self.record(result)
                self.gpus.measure(mark)
                stage("select", self.select)
            if request := self.final_request():
                self.observer.stage(f"final training ({request.train.epochs} epochs)")
                with self.timed("final"):
                    self.record_final(next(iter(evaluate([request]))))
            if request := self.recovery_request():
                self.observer.stage(f"retraining the best ({request.train.epochs} epochs): its weights were lost")
                with self.timed("recover"):
                    self.record_recovery(next(iter(evaluate([request]))))
            outcome = None
            self.plotting = self.draw_figures_meanwhile()
            if self.can_export():
                self.observer.stage("exporting ONNX")
                outcome = stage("export", self.export)
            self.observer.stage("writing summary, plots and report")
            return stage("finish", lambda: self.finish(outcome))
        except BaseException as exc:
            self.gpus.stop()
            request_stop()  # evaluations still training in this process's threads are orphans now: they stop at a batch
            self.abort(f"{type(exc).__name__}: {exc}")
            raise

    # ---- steps --------------------------------------------------------------------------------
    def prepare(self) -> DatasetRef:
        """Record the search, prepare and version the data, open (or reopen) the search's run."""
        self.observer.stage("preparing data")
        with self.timed("prepare"):
            return self._prepare()

    def _prepare(self) -> DatasetRef:
        self.output.mkdir(parents=True, exist_ok=True)
        saved = files.read_saved_search(self.output) if self.resume and (self.output / files.SEARCH_FILE).is_file() else {}
        self.run_id = saved.get("mlflow_run_id", "")
        self._write_search_file()  # first thing: from here on the search can be resumed
        preloading = None
        if self.table is not None:
            self.dataset = DatasetRef(f"table:{self.table.path.name}", self.table.version, self.table.path.resolve())
        else:
            preloading = preload_training_imports()  # while the data store waits on DVC and the tracker
            self.dataset = self.data_store.prepare(self.config.dataset, self.config.data_root, self.config.download)
            self.data = load_prepared(self.dataset.path.parent, self.config.dataset)  # just prepared and versioned
            remember_data(self.data_store, self.config.dataset, self.dataset.version, self.data)  # workers here reuse it
        self.proposer.bind(self.input_spec(), self.data)
        if not self.gpus.watching:
            self.gpus = self._watch_gpus()
        self.provenance = Provenance.of_search(self.search_id, self.dataset.name, self.dataset.version)
        self.tracker = self.connect_tracker()
        state = None
        if self.run_id:
            self.tracker.reopen_run(self.run_id)
            state = self._restore()
        else:
            params = {k: v for k, v in self.config.model_dump(mode="json").items() if v is not None}
            params.update(self.proposer.latency_params())  # the machine latencies are predicted for
            tags = {
                **self.provenance.tags(prefix=""),
                "role": "search",
                "strategy": self.config.strategy,
                "output": str(self.output),
            }
            self.run_id, self.owns_run = self.tracker.open_search_run(f"search-{self.search_id}", params, tags)
            self._write_search_file()
        self.provenance = self.provenance.with_search_run(self.run_id)
        if self.config.warm_start != "none":
            self.memory = self.tracker.memory()
            if state is None and self.config.warm_start != "reuse":
                self._warm_start(self.memory)
        if preloading is not None:  # a one-off cost of the process, paid here: the first candidates would wait for it
            preloading.join()
        self.prepared = True
        return self.dataset

    def _warm_start(self, memory: EvaluationMemory) -> None:
        """Tell the strategy the earlier searches' comparable results, and queue their best architectures (seeds)."""
        assert self.dataset is not None and self.tracker is not None
        check_warm_start(self.config, memory.searches(), self.tracker.tracking_uri)
        context = context_key(
            self.config, train_config(self.config, self.proposer.fidelity), self.dataset.version,
            self.dataset.version if self.table is not None else None,
        )  # fmt: skip
        self.told, searches = told_evaluations(memory, self.config, context, self.space, self.search_id)
        seeds = seed_genomes(memory, self.config, self.space)
        self.proposer.warm_start(self.told, seeds)
        for evaluation in self.told:
            self._know(evaluation)
        self.warm = WarmStart(self.config.warm_start, searches, len(self.told), len(seeds))
        self.tracker.log_json(self.run_id, [e.summary() for e in self.told], "warm_start.json")
        self.write_checkpoint()

    def _watch_gpus(self) -> GpuWatch:
        """The GPUs candidates train on here (none for tables and remote clusters, whose GPUs are elsewhere)."""
        remote = self.config.runner == "dask" and bool(self.config.dask_address)
        if self.table is not None or remote:
            return GpuWatch()
        return GpuWatch.of(self.config.device, self.config.candidates_per_gpu)

    def _write_search_file(self) -> None:
        files.write_saved_search(self.output, self.search_id, self.run_id, self.config.model_dump(mode="json"))

    def _restore(self) -> dict[str, Any] | None:
        """Continue from the last checkpoint; close the runs the dead process left RUNNING. The checkpoint's state."""
        assert self.tracker is not None
        files.remove_partial_files(self.output)  # half-written by the dead process (e.g. .model.onnx.tmp)
        state = files.read_state(self.output)
        if state is not None:
            self.proposer.load_state(state)
            self.clock.restore(state.get("spent_seconds", 0.0))
            self.gpus.load(state.get("packing"))
            self.warm = WarmStart.from_dict(state.get("warm_start"))
            for data in state.get("told", []):
                self.told.append(Evaluation.from_dict(data))
                self._know(self.told[-1])
            for data in state["finished"]:
                self._remember(Evaluation.from_dict(data))
            self.finalist.restore(state.get("final"))
            weights = files.load_weights(self.output / files.WEIGHTS_FILE, getattr(self.best(), "hash", None))
            self.best_weights = self._fitting(weights)
        self.killed_on_resume += self._close_running()
        return state

    def _close_running(self) -> int:
        """Close the search's evaluation runs left RUNNING: with their outcome when it was checkpointed, else KILLED
        (their candidates are queued again on resume); the number killed."""
        assert self.tracker is not None
        recorded, killed = {r.mlflow_run_id: r for r in self.records}, 0
        for run_id in self.tracker.running_runs(self.search_id, ("candidate", FINAL_ROLE, RECOVERY_ROLE)):
            if run_id in recorded:  # checkpointed, but the process died (or stopped) before closing the run
                close_evaluation(self.tracker, recorded[run_id], self.table is not None)
            else:
                close_killed(self.tracker, run_id)
                killed += 1
        return killed

    def _fitting(self, weights: dict[str, Any] | None) -> dict[str, Any] | None:
        """``weights`` when they load into the best's network (else None: they are retrained)."""
        best = self.best()
        if weights is None or best is None or self.data is None:
            return weights
        try:
            data = self.data
            self.space.build(best.genome, data.input_shape, data.num_classes, data.mean, data.std).load_state_dict(weights)
        except (RuntimeError, KeyError, TypeError):
            return None
        return weights

    def input_spec(self) -> tuple[tuple[int, ...], int]:
        """Input shape and class count the networks are built for (CIFAR-10's for tables)."""
        if self.data is not None:
            return tuple(self.data.input_shape), self.data.num_classes
        return TABLE_INPUT_SPEC

    def cost(self, genome: Genome) -> dict[str, int]:
        return self.proposer.cost(genome)

    def propose(self) -> list[EvaluationRequest]:
        """The requests to evaluate next: the unfinished ones of the generation in flight (after a resume), else a new
        generation: multi-fidelity promotions first, then up to ``population`` unseen genomes, never past the budget
        or the time budget. Candidates evaluated exactly so before (in the tracking store) are reused, not requested.
        """
        with self.timed("propose"):
            while True:
                if self.proposer.in_flight and not self.proposer.unfinished(self.records):
                    self.select()  # resumed after the generation's last candidate, or every candidate was reused
                if not self.proposer.unfinished(self.records):
                    fits = None if self.clock.budget_seconds is None else self._fits
                    if not self.proposer.plan_generation(self.records, fits):
                        self.candidates_spent = self.clock.spent()
                        return []
                    self.write_checkpoint()
                if requests := self._to_train(self.proposer.unfinished(self.records)):
                    return requests

    def _fits(self, epochs: list[int]) -> int:
        return self.clock.affordable(epochs, self.records)

    def _to_train(self, planned: list[PlannedEvaluation]) -> list[EvaluationRequest]:
        """Requests for ``planned``, except new candidates whose exact evaluation the store holds: those are reused."""
        requests = []
        for one in planned:
            request = self.request(one, deadline=self.clock.deadline())
            found = self.memory.lookup(request.evaluation_key) if self.memory and one.origin != PROMOTION else None
            if found is None:
                requests.append(request)
            else:
                self.record_reused(request, found)
        return requests

    def request(self, planned: PlannedEvaluation, deadline: float | None = None) -> EvaluationRequest:
        """A self-contained request for one planned evaluation (not started after ``deadline``, unix time)."""
        assert self.tracker is not None and self.provenance is not None
        table = (str(self.table.path), self.table.select_metric, self.table.report_metric) if self.table else None
        context = RequestContext(
            self.config, self.provenance, self.tracker.spec(), self.data_store, self.proposer.fidelity, table, self.space.describe
        )
        parent_run_ids = [self.by_hash[h].mlflow_run_id for h in planned.parents if h in self.by_hash]
        stop_below = self.proposer.stop_below(self.records, planned.generation)
        return context.request(
            planned,
            parent_run_ids,
            stop_below,
            self.proposer.checkpoint_path(planned.hash, planned.from_fidelity or 0),
            deadline,
            self.gpus.per_gpu(self.config.max_candidates_per_gpu),
        )

    def record_reused(self, request: EvaluationRequest, found: StoredEvaluation) -> Evaluation:
        """Record an earlier run's result for a planned candidate: a run of its own, tagged ``reused_from``; no training."""
        assert self.tracker is not None
        planned = request.planned
        tags = {**request.run_tags, "status": "running", "reused_from": found.run_id}
        run_id = self.tracker.start_run(request.run_name, request.run_params, tags, parent_run_id=request.parent_run_id)
        parent_run_ids = tuple(self.by_hash[h].mlflow_run_id for h in planned.parents if h in self.by_hash)
        evaluation = Evaluation(
            planned.index, planned.generation, planned.genome, planned.origin, planned.parents, parent_run_ids, run_id,
            "ok", metrics=self.proposer.here(found.metrics, planned.genome), hash=planned.hash,
            fidelity=planned.fidelity, bracket=planned.bracket, proxy=planned.proxy,
            finished_seconds=round(time.time() - self.started_at, 3), reused_from=found.run_id,
        )  # fmt: skip
        return self._close(evaluation, None)

    def record(self, result: EvaluationResult) -> Evaluation | None:
        """Remember one result, checkpoint, then close its run (in that order, for resume).

        None for a request skipped because the search's time was up: it is dropped from the generation.
        """
        if result.status == SKIPPED:
            self.proposer.drop(result.index)
            return None
        planned = self.proposer.planned(result.index)
        metrics = dict(result.metrics)
        if self.table is not None and result.ok:
            metrics.update(self.cost(planned.genome))
        if result.ok:
            metrics.update(self.proposer.latency_metrics(planned.genome))
        parent_run_ids = (
            (planned.promoted_from,)
            if planned.promoted_from
            else tuple(self.by_hash[h].mlflow_run_id for h in planned.parents if h in self.by_hash)
        )
        evaluation = Evaluation(
            result.index, planned.generation, planned.genome, planned.origin, planned.parents, parent_run_ids,
            result.run_id, result.status, result.reason, metrics, hash=planned.hash, fidelity=planned.fidelity,
            bracket=planned.bracket, promoted_from=planned.promoted_from, proxy=planned.proxy,
            finished_seconds=round(time.time() - self.started_at, 3), timing=dict(result.timing), curve=tuple(result.curve),
            epochs=result.epochs,
        )  # fmt: skip
        if result.state is not None and result.ok:
            files.save_tensors_atomic(self.proposer.checkpoint_path(evaluation.hash, evaluation.fidelity), result.state)
        if planned.from_fidelity is not None:  # continued: the shorter run's state is no longer needed
            self.proposer.checkpoint_path(planned.hash, planned.from_fidelity).unlink(missing_ok=True)
        return self._close(evaluation, result.weights)

    def _close(self, evaluation: Evaluation, weights: dict[str, Any] | None) -> Evaluation:
        """Remember, keep the weights when it is the best, checkpoint, close its run, report."""
        assert self.tracker is not None
        self._remember(evaluation)
        if evaluation.ok and self.best() is evaluation:  # a reused best has no weights here: retrained if it wins
            if weights is not None:
                files.save_tensors_atomic(self.output / files.WEIGHTS_FILE, {"hash": evaluation.hash, "weights": weights})
            self.best_weights = weights
        if self.front is not None and evaluation.ok:
            self.front.offer(evaluation, weights, self.records)
        self.write_checkpoint()
        close_evaluation(self.tracker, evaluation, self.table is not None or not evaluation.trained)
        best = self.best()
        if best is not None:
            self.tracker.log_metrics(self.run_id, {"best_val_accuracy": best.metrics["val_accuracy"]}, step=len(self.records))
        self.observer.recorded(evaluation)
        return evaluation

    def _remember(self, evaluation: Evaluation) -> None:
        self.records.append(evaluation)
        self._know(evaluation)

    def _know(self, evaluation: Evaluation) -> None:
        known = self.by_hash.get(evaluation.hash)
        if known is None or evaluation.fidelity >= known.fidelity:  # parents link to an architecture's longest training
            self.by_hash[evaluation.hash] = evaluation

    def write_checkpoint(self) -> None:
        files.write_state(
            self.output,
            {
                "search_id": self.search_id,
                **self.proposer.state(),
                "spent_seconds": round(self.clock.spent(), 3),
                "packing": self.gpus.state(),
                "warm_start": self.warm.to_dict() if self.warm else None,
                "told": [r.to_dict() for r in self.told],
                "finished": [r.to_dict() for r in self.records],
                "final": self.finalist.model.to_dict() if self.finalist.model else None,
            },
        )

    def select(self) -> Evaluation | None:
        """Tell the strategy the generation's results in proposal order, checkpoint; return the best so far.

        Promotions are not told again: the strategy learns each architecture once, from its first evaluation.
        """
        with self.timed("select"):
            indices = self.proposer.in_flight_indices()
            generation = sorted((r for r in self.records if r.index in indices and r.origin != PROMOTION), key=lambda r: r.index)
            self.strategy.tell(
                [
                    CandidateResult(
                        r.genome, r.status, r.metrics.get("val_accuracy") if r.ok else None, r.reason, r.metrics, r.hash
                    )
                    for r in generation
                ]
            )
            self.proposer.generation_done()
            self.gpus.generation_done()
            self.write_checkpoint()
            return self.best()

    def best(self) -> Evaluation | None:
        """The best evaluation so far: of this search, or one a warm start told it (then its weights are retrained).

        With ``max_latency_ms``, the best that meets the limit when its network is measured (proposals were only
        screened by the predicted latency).
        """
        finished = sorted((r for r in (*self.told, *self.records) if r.ok), key=Evaluation.best_key, reverse=True)
        return next((r for r in finished if self.proposer.meets_latency_limit(r.genome)), None)

    # ---- final training and export ----------------------------------------------------------------
    def current_final(self) -> FinalModel | None:
        """The final model of the current best, when it was retrained successfully."""
        return self.finalist.current(self.best())

    def final_request(self) -> EvaluationRequest | None:
        """The request that retrains the best, or None (no final budget, nothing to export, or already done)."""
        best, training = self.best(), self.finalist.training
        if best is None or training is None or self.table is not None or not self.finalist.needed_for(best):
            return None
        return training.adapt(self.request(training.planned(best, self.generation)), best)

    def record_final(self, result: EvaluationResult) -> FinalModel:
        """Keep the retrained winner as the model to export; link its run with the candidate's and the search's."""
        best = self.best()
        assert best is not None and self.tracker is not None
        final = self.finalist.accept(best, result)
        own = best.origin != WARM_START  # a warm start's best is another search's run: its run is not linked
        close_final(self.tracker, final, self.run_id, link_source=own, epochs=result.epochs)
        self.write_checkpoint()
        return final

    def recovery_request(self) -> EvaluationRequest | None:
        """The request that trains the best again when its weights were lost (and no final model stands in), else None."""
        best = self.best()
        lost = best is not None and self.table is None and self.best_weights is None and self.current_final() is None
        if not lost or self.exporter is None:
            return None
        return WeightsRecovery.adapt(self.request(WeightsRecovery.planned(best)), best)

    def record_recovery(self, result: EvaluationResult) -> None:
        """Keep the retrained best's weights (checkpointed like the original's); when it failed, say why there is no model."""
        best = self.best()
        assert best is not None and self.tracker is not None
        close_recovery(self.tracker, result, best.metrics.get("val_accuracy"))
        if result.ok and result.weights is not None:
            files.save_tensors_atomic(self.output / files.WEIGHTS_FILE, {"hash": best.hash, "weights": result.weights})
            self.best_weights = result.weights
        else:
            self.model_error = f"the best's weights were lost and training it again failed: {result.reason or result.status}"

    def can_export(self) -> bool:
        """A trained best model exists (table evaluations have no weights to export) and an exporter is set."""
        has_weights = self.best_weights is not None or self.current_final() is not None
        return self.exporter is not None and self.best() is not None and has_weights

    def best_model(self) -> nn.Module:
        """The model to export: the best candidate's network with its final-training weights, else as trained."""
        best = self.best()
        assert best is not None and self.best_weights is not None and self.data is not None
        model = self.space.build(best.genome, self.data.input_shape, self.data.num_classes, self.data.mean, self.data.std)
        model.load_state_dict(self.finalist.weights if self.current_final() is not None else self.best_weights)
        return model.eval()

    def exported_metrics(self) -> dict[str, float]:
        """The exported model's metrics: the best's validation metrics, test metrics of the final model if retrained."""
        best = self.best()
        assert best is not None
        return exported_metrics(best, self.current_final())

    def export_request(self) -> ExportRequest:
        """The model to hand over, its metrics and its provenance."""
        best, final = self.best(), self.current_final()
        assert best is not None and self.provenance is not None and self.data is not None
        provenance = self.provenance.for_model(best.hash, best.mlflow_run_id, final.run_id if final else None)
        config = self.config
        return ExportRequest(
            self.best_model(), best, self.exported_metrics(), provenance, self.data, self.output, self.run_id,
            config.quantize, config.max_accuracy_drop, self.front_models(best), config.export_latency_ms,
            config.latency_batch, config.latency_threads, config.latency_provider,
        )  # fmt: skip

    def front_models(self, best: Evaluation) -> tuple[FrontModel, ...] | None:
        """``export: pareto``: the chosen front members other than the best, with their kept weights (fastest first);
        None without ``export: pareto``."""
        if self.front is None or self.data is None:
            return None
        front = self.front
        kept = [e for e in front_of(self.records) if front.has(e.hash)]
        chosen = choose(kept, best, self.config.pareto_limit, self.config.export_latency_ms)
        data, models = self.data, []
        for evaluation in (e for e in chosen if e.hash != best.hash):
            weights = front.weights(evaluation.hash)
            if weights is None:  # damaged or gone: the others are still handed over
                continue
            model = self.space.build(evaluation.genome, data.input_shape, data.num_classes, data.mean, data.std)
            model.load_state_dict(weights)
            models.append(FrontModel(model.eval(), evaluation))
        return tuple(models)

    def export(self) -> ExportOutcome | None:
        """Export the best model through the exporter (ONNX, registry and handoff bundle in the pipeline).

        None when the model itself cannot be exported (:class:`ModelExportError`): the search finishes and says why.
        """
        assert self.exporter is not None and self.tracker is not None
        with self.timed("export"):
            try:
                self.export_outcome = self.exporter.export(self.export_request(), self.tracker)
            except ModelExportError as exc:
                self.model_error = f"export failed: {exc}"
            return self.export_outcome

    def abort(self, reason: str) -> None:
        """The search itself broke or was interrupted: keep the checkpoint, close the runs in flight as KILLED and the
        search's run as FAILED; it can be resumed.

        Best effort: the tracking store may be what broke (a resume closes whatever is left RUNNING), and the error
        the caller sees must stay the one that stopped the search.
        """
        if self.prepared:  # not before: an empty state must never replace the one a resume has yet to load
            with contextlib.suppress(Exception):
                self.write_checkpoint()
        if self.tracker is None or not self.run_id:
            return
        with contextlib.suppress(Exception):
            self._close_running()
        with contextlib.suppress(Exception):
            self.tracker.set_tags(
                self.run_id, {"status": "failed", "failure_reason": reason[:5000], "stop_reason": STOP_INTERRUPTED}
            )
            if self.owns_run:
                self.tracker.end_run(self.run_id, ok=False)

    def finish(self, outcome: ExportOutcome | None = None) -> SearchSummary:
        """Write ``summary.json`` and the reports; log them, and close the search's run (FAILED when nothing trained)."""
        finishing = time.monotonic()
        self.gpus.stop()
        assert self.tracker is not None and self.dataset is not None
        summary = self.summary(outcome)
        if self.plotting is None:
            self.plot_best()
        else:
            self.plotting.result()
        for path, folder in self.reporter.report(summary):
            self.tracker.log_artifact(self.run_id, path, folder)
        self.timings["finish"] = time.monotonic() - finishing
        elapsed = round(time.monotonic() - self.started, 2)
        timings = {**{k: round(v, 3) for k, v in self.timings.items()}, "total": elapsed}
        if self.proposer.latency is not None:  # inside propose and candidates: not a stage of its own
            timings["latency_prediction"] = round(self.proposer.latency_seconds, 3)
        summary = SearchSummary(**{**summary.__dict__, "elapsed_seconds": elapsed, "timings": timings})
        self.tracker.log_metrics(self.run_id, {f"seconds_{k}": v for k, v in timings.items()})
        self.tracker.log_artifact(self.run_id, summary.write(self.output))
        if (self.output / "report.html").is_file():
            self.tracker.log_artifact(self.run_id, self.output / "report.html")
        ok = summary.best is not None and summary.best.model_error is None
        failure = {"failure_reason": summary.best.model_error} if summary.best and summary.best.model_error else {}
        self.tracker.set_tags(self.run_id, {"status": "ok" if ok else "failed", **failure})
        if self.owns_run:
            self.tracker.end_run(self.run_id, ok)
        shutil.rmtree(self.output / files.CHECKPOINTS_DIR, ignore_errors=True)  # only needed to continue promoted runs
        shutil.rmtree(self.output / FRONT_DIR, ignore_errors=True)  # only needed to export the front
        self.finished = summary
        return summary

    def draw_figures_meanwhile(self) -> Future[None]:
        """:meth:`plot_best` in a thread of its own, started now, while this thread exports the best: the tracker may
        draw in another process (the MLflow one does), so the two use two cores."""
        drawing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nas-figures")
        try:
            return drawing.submit(self.plot_best)
        finally:
            drawing.shutdown(wait=False)  # its one thread ends with the figures

    def plot_best(self) -> None:
        """Draw the figures of the best few trained candidates (from the epochs the search holds) and of the final
        model (from its logged metrics)."""
        assert self.tracker is not None
        if self.table is not None:  # looked up: no epochs, no training to show
            return
        ranked = sorted((r for r in self.records if r.ok and r.trained), key=Evaluation.best_key, reverse=True)
        shown = [
            (r.mlflow_run_id, r.genome, f"candidate-{r.index:03d}-{r.hash[:8]}", r.epochs) for r in ranked[:PLOTTED_CANDIDATES]
        ]
        best, final = self.best(), self.current_final()
        if best is not None and final is not None:
            shown.append((final.run_id, best.genome, "final model", ()))  # its epochs are in its run only
        dims = int(getattr(type(self.space), "input_ndim", 2))
        for run_id, genome, title, epochs in shown:
            self.tracker.log_evaluation_plots(run_id, genome, title, dims, epochs)

    def summary(self, outcome: ExportOutcome | None) -> SearchSummary:
        """The search as it stands (timings are added by :meth:`finish`)."""
        assert self.tracker is not None and self.dataset is not None
        screen = self.proposer.screen
        return SearchSummary(
            search_id=self.search_id, mlflow_tracking_uri=self.tracker.tracking_uri, mlflow_experiment=self.experiment_name,
            mlflow_run_id=self.run_id, mlflow_ui=self.tracker.ui_hint(), output=str(self.output),
            dataset={"name": self.dataset.name, "version": self.dataset.version}, strategy=self.config.strategy,
            budget=self.config.budget, seed=self.config.seed, fidelity=self.proposer.fidelity.summary(),
            proxy=screen.summary(self.records, len(self.proposer.screened)) if screen else None,
            final=self.finalist.model.to_dict() if self.finalist.model else None,
            candidates=tuple(r.summary() for r in sorted(self.records, key=lambda r: r.index)),
            best=self._best_model(outcome), stop_reason=self.proposer.stop_reason,
            time_budget_seconds=self.clock.budget_seconds,
            spent_seconds=round(self.candidates_spent if self.candidates_spent is not None else self.clock.spent(), 3),
            device_seconds=round(self.device_seconds(), 3), warm_start=self.warm.to_dict() if self.warm else None,
            gpus=self.gpus.summary(), pareto=outcome.front if outcome and self.front is not None else None,
        )  # fmt: skip

    def device_seconds(self) -> float:
        """Wall seconds of what this search trained: its candidates (not the reused ones) and the final training."""
        final = self.finalist.model
        spent = [r.metrics.get("wall_seconds", r.metrics.get("train_seconds", 0.0)) for r in self.records if r.trained]
        return float(sum(spent)) + (final.metrics.get("train_seconds", 0.0) if final else 0.0)

    def _best_model(self, outcome: ExportOutcome | None) -> BestModel | None:
        best, final = self.best(), self.current_final()
        if best is None:
            return None
        return BestModel.of(best, self.exported_metrics(), final.run_id if final else None, outcome, self.missing_model(outcome))

    def missing_model(self, outcome: ExportOutcome | None) -> str | None:
        """Why a search that trains and exports has no exported model (None when it has one, or none is expected)."""
        if outcome is not None or self.exporter is None or self.table is not None or self.best() is None:
            return None
        return self.model_error or "the best's weights are missing"
