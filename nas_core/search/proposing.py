"""Planning generations: the strategy's proposals, multi-fidelity promotions and proxy screening, never past the
budget, with the generation in flight kept so that a resumed search continues it."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nas_core.config import ConfigError, SearchConfig
from nas_core.data.preparation import PreparedData
from nas_core.evaluation.fidelity import Rungs
from nas_core.evaluation.proxies import score_genome
from nas_core.evaluation.proxy_table import ProxyTableKey, load_or_compute
from nas_core.genome import Genome
from nas_core.latency import (
    LATENCY_FOLDER,
    LATENCY_METRIC,
    LATENCY_SPACES,
    LIMIT_MARGIN,
    GenomeLatency,
    LatencyPredictor,
    LatencyTable,
    ModuleTimer,
)
from nas_core.search.checkpoint import CHECKPOINTS_DIR
from nas_core.search.clock import STOP_BUDGET, STOP_EXHAUSTED, STOP_TIME
from nas_core.search.records import PROMOTION, Evaluation, PlannedEvaluation
from nas_core.search.requests import train_config
from nas_core.search.scheduling import FidelitySchedule, MedianStopping, MultiFidelity, ProxyScreen, SingleFidelity
from nas_core.search.setup import space_options
from nas_core.seeding import GLOBAL_RNG
from nas_core.spaces import SearchSpace, create_space
from nas_core.strategies import CandidateResult, Strategy, create_strategy
from nas_core.strategies.base import listed

# tabular benchmarks (NAS-Bench-201) are on CIFAR-10: their costs are computed for its inputs
TABLE_INPUT_SPEC: tuple[tuple[int, ...], int] = ((3, 32, 32), 10)
PRIOR_FOLDER = "proxies"  # under the project folder: cached proxy tables, shared by every search of the project
PRIOR_SAMPLE = 256  # architectures scored for the prior of a space that cannot be listed (a seeded pool)
PRIOR_SEED = 0  # the proxy table's initialisation seed: one table per space, input shape and proxy, whatever the search seed

log = logging.getLogger(__name__)


def read_init_genome(path: Path, space: SearchSpace) -> Genome:
    """The genome of an ``init_genome`` file: within the limits, valid, and one ``space`` can propose.

    GenomeError names what is wrong; OSError when the file cannot be read.
    """
    genome = Genome.read(path).validate()
    space.check(genome)
    return genome


class Proposer:
    """The space, the strategy and the pieces that decide what the next generation evaluates."""

    def __init__(
        self, config: SearchConfig, output: Path, resume: bool = False, latency_timer: ModuleTimer | None = None
    ) -> None:
        self.config, self.output = config, output
        self.space = create_space(config.space, hparams=config.hparams, **space_options(config))
        self.strategy: Strategy = create_strategy(
            config.strategy, self.space, seed=config.seed, population=config.population, constraint=self.within_limits
        )
        if config.cost_objective and hasattr(self.strategy, "cost_metric"):  # nsga2 minimises it beside accuracy
            self.strategy.cost_metric = config.cost_objective
        self.latency_timer = latency_timer
        self.latency_seconds = 0.0  # spent predicting and measuring latencies, for the overhead figures
        self._measured: dict[str, float] = {}  # identity -> whole network timed (max_latency_ms: the best's check)
        self.latency: GenomeLatency | None = None  # once bound to the data's input shape
        self.fidelity: FidelitySchedule = (
            MultiFidelity(Rungs(config.min_epochs, config.top_epochs, config.eta, config.schedule))
            if config.fidelity == "epochs"
            else SingleFidelity(config.epochs)
        )
        self.screen = ProxyScreen(config.proxy, config.proxy_keep) if config.proxy != "none" else None
        self.stopping = MedianStopping(config.top_epochs) if config.early_stop == "median" else None
        self.generation = 0
        self.stop_reason: str | None = None  # why planning stopped (budget, time, space exhausted)
        self.in_flight: list[PlannedEvaluation] = []  # the generation being evaluated
        self.screened: list[dict[str, Any]] = []  # proposals the zero-cost proxy kept from training
        self.input_spec: tuple[tuple[int, ...], int] = TABLE_INPUT_SPEC
        self.score: Callable[[Genome], float] | None = None  # the proxy's score, once the data is there
        self.prior: dict[str, Any] | None = None  # the proxy table given to the strategy: proxy, file, checksum
        self._costs: dict[str, dict[str, int]] = {}
        if config.init_genome is not None and not resume:
            self.strategy.enqueue(read_init_genome(Path(config.init_genome), self.space))

    def bind(self, input_spec: tuple[tuple[int, ...], int], data: PreparedData | None) -> None:
        """The data's input shape and class count (for costs), and the data the proxy scores on (none for tables)."""
        self.input_spec = input_spec
        self.latency = self._latency_model(input_spec)
        screen, seed = self.screen, self.config.seed
        if screen is not None and data is not None:
            self.score = lambda genome: score_genome(self.space.build, genome, data, screen.name, seed=seed)
        if self.config.prior != "none":
            self.use_prior(input_spec)

    def use_prior(self, input_spec: tuple[tuple[int, ...], int]) -> None:
        """Give the strategy the ``prior`` proxy's table of the space for these inputs (loaded, or computed and cached
        under the project's ``proxies/`` folder): every architecture of a listable space, else a seeded pool of
        :data:`PRIOR_SAMPLE`. Its file and checksum go into the proposer's state."""
        sample = 0 if listed(self.space) else PRIOR_SAMPLE
        key = ProxyTableKey.of(self.space, *input_spec, self.config.prior, seed=PRIOR_SEED, sample=sample)
        folder = Path(self.config.project_dir) / PRIOR_FOLDER

        def progress(done: int, total: int) -> None:
            log.info("prior %s: %d/%d architectures scored", key.proxy, done, total)

        processes = 1 if sample else min(2, os.cpu_count() or 1)  # a pool scores in seconds: spawning would cost more
        table, path = load_or_compute(self.space, key, folder, processes=processes, progress=progress)
        self.strategy.use_prior(table.scores, table.pool())
        self.prior = {"proxy": key.proxy, "file": str(path), "checksum": table.checksum}
        log.info("prior %s from %s (checksum %s)", key.proxy, path, table.checksum)

    def cost(self, genome: Genome) -> dict[str, int]:
        """Parameters and FLOPs of a genome's network, cached by identity."""
        key = self.space.identity(genome)
        if key not in self._costs:
            self._costs[key] = self.space.cost(genome, *self.input_spec)
        return self._costs[key]

    def within_limits(self, genome: Genome) -> bool:
        """The ``max_params`` / ``max_flops`` / ``max_latency_ms`` constraint every strategy honours."""
        limits = {"params": self.config.max_params, "flops": self.config.max_flops}
        if self.config.max_latency_ms is not None and self.latency_ms(genome) > self.config.max_latency_ms:
            return False
        if all(v is None for v in limits.values()):
            return True
        cost = self.cost(genome)
        return all(limit is None or cost[key] <= limit for key, limit in limits.items())

    def _latency_model(self, input_spec: tuple[tuple[int, ...], int]) -> GenomeLatency | None:
        """The latency predictor of this machine for these inputs (None without a timer, or for a space it cannot cut)."""
        if self.latency_timer is None or self.config.space not in LATENCY_SPACES or self.config.table_path is not None:
            if self.config.max_latency_ms is not None or self.config.cost_objective == LATENCY_METRIC:
                raise ConfigError("latency needs a timer for the handoff runtime (the pipeline's search has one)")
            return None
        shape, classes = input_spec
        table = LatencyTable(self.latency_timer, Path(self.config.project_dir) / LATENCY_FOLDER, self.config.latency_batch)
        return LatencyPredictor(lambda genome: self.space.build(genome, shape, classes), shape, table)

    def latency_ms(self, genome: Genome) -> float:
        """The genome's predicted latency on the handoff runtime (milliseconds per call at ``latency_batch``)."""
        if self.latency is None:
            raise ConfigError("latency needs a timer for the handoff runtime (the pipeline's search has one)")
        started = time.perf_counter()
        try:
            return self.latency.latency_ms(genome)
        finally:
            self.latency_seconds += time.perf_counter() - started

    def measured_latency_ms(self, genome: Genome) -> float:
        """The genome's whole network timed on the handoff runtime at ``latency_batch`` (once per identity)."""
        key = self.space.identity(genome)
        if key not in self._measured:
            assert self.latency_timer is not None
            started = time.perf_counter()
            shape, classes = self.input_spec
            with GLOBAL_RNG:  # not between a training candidate's seeding and its build
                network = self.space.build(genome, shape, classes)
            self._measured[key] = float(self.latency_timer.time_network_ms(network, shape, self.config.latency_batch))
            self.latency_seconds += time.perf_counter() - started
            log.info("%s: %.4f ms measured, %.4f ms predicted", key[:8], self._measured[key], self.latency_ms(genome))
        return self._measured[key]

    def meets_latency_limit(self, genome: Genome) -> bool:
        """Whether the genome's network meets ``max_latency_ms`` when measured, with ``LIMIT_MARGIN`` to spare for a
        later measurement (the prediction only screened the proposals: only candidates that may win are measured).
        True without a limit or a timer."""
        limit = self.config.max_latency_ms
        return limit is None or self.latency is None or self.measured_latency_ms(genome) <= (1 - LIMIT_MARGIN) * limit

    def latency_metrics(self, genome: Genome) -> dict[str, float]:
        """``{"latency_ms": ...}`` of this machine for a candidate's metrics, or nothing without a latency model."""
        if self.latency is None:
            return {}
        try:
            return {LATENCY_METRIC: round(self.latency_ms(genome), 5)}
        except Exception as exc:  # noqa: BLE001 - a part the runtime cannot time costs the candidate its figure only
            log.warning("no latency for %s: %s", genome.canonical_hash()[:8], exc)
            return {}

    def latency_params(self) -> dict[str, object]:
        """The search's run parameters that say how latencies were had, and on which machine."""
        if self.latency is None:
            return {}
        source = {"latency.source": self.latency.source, "latency.batch_size": self.latency.batch_size}
        return {**source, **self.latency.machine().params()}

    def checkpoint_path(self, hash_: str, fidelity: int) -> Path:
        """Where a multi-fidelity evaluation's training state is kept until it is promoted (or the search ends)."""
        return self.output / CHECKPOINTS_DIR / f"{hash_}-e{fidelity}.pt"

    def planned(self, index: int) -> PlannedEvaluation:
        return next(p for p in self.in_flight if p.index == index)

    def in_flight_indices(self) -> set[int]:
        return {p.index for p in self.in_flight}

    def unfinished(self, records: Sequence[Evaluation]) -> list[PlannedEvaluation]:
        """Planned evaluations of the generation in flight that have no recorded outcome yet."""
        done = {r.index for r in records}
        return [p for p in self.in_flight if p.index not in done]

    def stop_below(self, records: Sequence[Evaluation], generation: int) -> tuple[float | None, ...]:
        return self.stopping.thresholds(records, generation) if self.stopping else ()

    def plan_generation(self, records: Sequence[Evaluation], fits: Callable[[list[int]], int] | None = None) -> bool:
        """Plan the next generation: promotions first, then up to ``population`` unseen genomes within the budget
        (reused evaluations do not count against it) and, with ``fits``, within the time left.

        ``fits(epochs)`` says how many evaluations of these epochs (in order) can still finish in time. False when
        there is nothing left to evaluate; :attr:`stop_reason` then says why.
        """
        new_so_far = sum(r.origin != PROMOTION for r in records)
        trained = sum(r.origin != PROMOTION and r.trained for r in records)
        promoted = self.fidelity.promotions(records)[: self.config.population]
        count = max(0, min(self.config.population - len(promoted), self.config.budget - trained))
        out_of = STOP_BUDGET
        if fits is not None and (promoted or count):
            start_epochs = self.fidelity.start(new_so_far, self.config.epochs)[0]
            affordable = fits([epochs for _, epochs in promoted] + [start_epochs] * count)
            if affordable < len(promoted) + count:
                out_of = STOP_TIME
                promoted, count = promoted[:affordable], max(0, min(count, affordable - len(promoted)))
        if not promoted and count <= 0:
            self.stop_reason = out_of
            return False
        self.generation += 1
        first = len(records) + 1
        self.in_flight = [
            PlannedEvaluation(first + i, self.generation, e.genome, e.hash, PROMOTION, (e.hash,), epochs, e.bracket,
                              e.mlflow_run_id, e.fidelity, e.proxy)
            for i, (e, epochs) in enumerate(promoted)
        ]  # fmt: skip
        for ordinal, (proposal, score) in enumerate(self._ask(count), start=new_so_far):
            fidelity, bracket = self.fidelity.start(ordinal, train_config(self.config, self.fidelity, proposal.genome).epochs)
            proxy = score if score is None or math.isfinite(score) else None
            index = first + len(self.in_flight)
            self.in_flight.append(
                PlannedEvaluation(index, self.generation, proposal.genome, proposal.hash, proposal.origin,
                                  tuple(proposal.parents), fidelity, bracket, proxy=proxy)
            )  # fmt: skip
        if not self.in_flight:
            self.stop_reason = STOP_EXHAUSTED
            return False
        return True

    def _ask(self, count: int) -> list[tuple[Any, float | None]]:
        """``count`` new proposals; with a zero-cost proxy, scored, and only the best-scoring share kept."""
        if count <= 0:
            return []
        if self.screen is None or self.score is None:
            return [(p, None) for p in self.strategy.ask(count)]
        kept, dropped = self.screen.screen(self.strategy.ask(self.screen.ask_count(count)), count, self.score)
        self.screened += [{"hash": p.hash, "generation": self.generation, "proxy": s} for p, s in dropped]
        return list(kept)

    def generation_done(self) -> None:
        self.in_flight = []

    def drop(self, index: int) -> None:
        """Forget a planned evaluation that will not run (it had not started when the search's time was up)."""
        self.in_flight = [p for p in self.in_flight if p.index != index]

    def warm_start(self, told: Sequence[Evaluation], seeds: Sequence[Genome]) -> None:
        """Before the first ask: queue ``seeds`` to be trained first, and tell the strategy earlier results."""
        for genome in seeds:
            self.strategy.enqueue(genome)
        self.strategy.tell(  # latencies of this machine: an earlier search may have run on another one
            [
                CandidateResult(e.genome, e.status, e.metrics.get("val_accuracy"), "", self.here(e.metrics, e.genome), e.hash)
                for e in told
            ]
        )

    def here(self, metrics: dict[str, Any], genome: Genome) -> dict[str, Any]:
        """``metrics`` with the latency of this machine (none when there is no latency model here)."""
        return {**{k: v for k, v in metrics.items() if k != LATENCY_METRIC}, **self.latency_metrics(genome)}

    def state(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "strategy": self.strategy.state_dict(),
            "in_flight": [p.to_dict() for p in self.in_flight],
            "screened": self.screened,
            "stop_reason": self.stop_reason,
            "prior": self.prior,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.strategy.load_state_dict(state["strategy"])
        self.generation = state["generation"]
        self.in_flight = [PlannedEvaluation.from_dict(p) for p in state["in_flight"]]
        self.screened = list(state.get("screened", []))
        self.stop_reason = state.get("stop_reason")
        saved = (state.get("prior") or {}).get("checksum")
        if saved and self.prior is not None and saved != self.prior["checksum"]:
            log.warning("the prior's table changed since the search started (%s, now %s)", saved, self.prior["checksum"])
