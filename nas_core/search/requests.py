"""Turning a planned evaluation into a self-contained :class:`EvaluationRequest`: what to train, how, where to log it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_core.config import SearchConfig
from nas_core.evaluation.training import TrainConfig
from nas_core.genome import Genome
from nas_core.provenance import Provenance
from nas_core.search.final import training_params
from nas_core.search.identity import context_key, evaluation_key
from nas_core.search.memory import genome_tag
from nas_core.search.records import EvaluationRequest, PlannedEvaluation
from nas_core.search.scheduling import FidelitySchedule
from nas_core.search.setup import space_options, threads_per_candidate


def train_config(config: SearchConfig, fidelity: FidelitySchedule, genome: Genome | None = None) -> TrainConfig:
    """The search-wide training settings, overridden by the genome's own hyperparameters."""
    settings = TrainConfig(
        epochs=config.top_epochs,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        time_limit_s=config.candidate_timeout,
        schedule_epochs=fidelity.schedule_epochs,
        precision=config.precision,
        augment=config.augment,
    )
    return dataclasses.replace(settings, **genome.hparams) if genome is not None else settings


@dataclass(frozen=True)
class RequestContext:
    """What every request of one search shares."""

    config: SearchConfig
    provenance: Provenance
    tracker: Any  # TrackerSpec
    data: Any  # DataStore
    fidelity: FidelitySchedule
    table: tuple[str, str, str] | None
    describe: Any  # the space's describe(genome) -> run params

    def request(
        self,
        planned: PlannedEvaluation,
        parent_run_ids: Sequence[str],
        stop_below: tuple[float | None, ...],
        checkpoint: Path,
        deadline: float | None = None,
        per_device: int = 1,
    ) -> EvaluationRequest:
        config, provenance = self.config, self.provenance
        train = dataclasses.replace(
            train_config(config, self.fidelity, planned.genome), epochs=planned.fidelity, stop_below=stop_below
        )
        settings = {"evaluator": config.evaluator} if self.table else training_params(train)
        table_version = provenance.dataset_version if self.table else None
        key = evaluation_key(config, train, planned.hash, provenance.dataset_version, table_version)
        context = context_key(config, train_config(config, self.fidelity), provenance.dataset_version, table_version)
        return EvaluationRequest(
            search_id=provenance.search_id,
            planned=planned,
            run_name=f"candidate-{planned.index:03d}-{planned.hash[:8]}",
            run_params={**self.describe(planned.genome), **settings},
            run_tags={
                **provenance.tags(prefix=""),
                "role": "candidate",
                "index": planned.index,
                "generation": planned.generation,
                "strategy": config.strategy,
                "origin": planned.origin,
                "hash": planned.hash,
                "fidelity": train.epochs,
                "parents": ",".join(parent_run_ids),
                "parent_hashes": ",".join(planned.parents),
                **self.fidelity.tags(planned),
                "space": config.space,
                "evaluation_key": key,
                "context_key": context,
                **genome_tag(planned.genome),
            },
            parent_run_id=provenance.search_run_id or "",
            tracker=self.tracker,
            data=self.data,
            dataset=config.dataset,
            dataset_version=provenance.dataset_version,
            space=config.space,
            space_options=space_options(config),
            hparams=config.hparams,
            train=train,
            table=self.table,
            devices=config.device,
            per_device=per_device,
            threads=threads_per_candidate(config.workers),
            # a promotion continues its saved state; without it (lost, or moved aside as damaged) it trains from scratch
            start_checkpoint=str(checkpoint) if planned.from_fidelity is not None and checkpoint.is_file() else None,
            keep_state=self.fidelity.keep_state(train.epochs),
            proxy=(config.proxy, planned.proxy) if planned.proxy is not None else None,
            deadline=deadline,
            evaluation_key=key,
        )
