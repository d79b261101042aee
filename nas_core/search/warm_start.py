"""Warm start: what a new search takes from earlier searches of its experiment before its strategy's first ask.

- **Told results**: the earlier evaluations comparable with this search's (same context key: space, evaluator, data
  version, training settings) become :class:`Evaluation` records of origin ``warm-start`` that point at their source
  runs. The strategy is told them (its population, surrogate or archive starts full) and they compete for the best,
  so a warm-started search never ends below the searches it continues. Nothing is trained or logged for them.
- **Seed genomes**: the best N architectures of the chosen searches in the same space, on any data version, are
  queued to be trained first (a new data version has no comparable results, but good architectures stay good).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nas_core.config import SearchConfig, warm_start_searches
from nas_core.genome import Genome
from nas_core.search.memory import EarlierSearch, EvaluationMemory, StoredEvaluation, WarmStartError, longest_per_architecture
from nas_core.search.records import WARM_START, Evaluation
from nas_core.spaces import SearchSpace


@dataclass(frozen=True)
class WarmStart:
    """What a search took from earlier ones (``summary.json``'s ``warm_start``)."""

    mode: str  # "auto" or the search ids
    searches: tuple[str, ...]  # the searches whose evaluations were told
    told: int  # evaluations told to the strategy
    seeded: int  # architectures queued to be trained first

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "searches": list(self.searches), "told": self.told, "seeded": self.seeded}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WarmStart | None:
        if data is None:
            return None
        return cls(data["mode"], tuple(data["searches"]), data["told"], data["seeded"])


def check_warm_start(config: SearchConfig, searches: Sequence[EarlierSearch], store: str) -> None:
    """The searches ``config.warm_start`` names exist in ``searches`` and used the same space; else a WarmStartError."""
    named = warm_start_searches(config.warm_start)
    if named is None:
        return
    known = {s.search_id: s for s in searches}
    missing = [i for i in named if i not in known]
    if missing:
        raise WarmStartError(
            f"warm_start: no search '{missing[0]}' in experiment '{config.experiment_name}' of {store}; "
            "the MLflow UI lists them (tag nas.search_id on the search runs), or use --warm-start auto"
        )
    other = next((known[i] for i in named if known[i].space and known[i].space != config.space), None)
    if other is not None:
        raise WarmStartError(
            f"warm_start: search '{other.search_id}' searched space '{other.space}', not '{config.space}'; "
            "warm-start from searches of the same space"
        )


def _fits(space: SearchSpace, genome: Genome, identity: str | None = None) -> bool:
    """Whether this space can propose ``genome`` (and sees the same architecture in it as the store did)."""
    try:
        space.check(genome)
        return identity is None or space.identity(genome) == identity
    except (ValueError, KeyError, TypeError):  # a genome another version of the space wrote: not this search's to use
        return False


def told_evaluations(
    memory: EvaluationMemory, config: SearchConfig, context: str, space: SearchSpace, search_id: str
) -> tuple[list[Evaluation], tuple[str, ...]]:
    """The earlier evaluations to tell the strategy (comparable ones of the chosen searches, one per architecture,
    oldest first), and the searches they come from."""
    chosen = [
        s
        for s in memory.comparable(context, warm_start_searches(config.warm_start))
        if s.search_id != search_id and _fits(space, s.genome, s.hash)
    ]
    kept = longest_per_architecture(chosen)
    return [_told(s) for s in kept], tuple(sorted({s.search_id for s in kept}))


def _told(stored: StoredEvaluation) -> Evaluation:
    return Evaluation(
        0, 0, stored.genome, WARM_START, (), (), stored.run_id, "ok", metrics=dict(stored.metrics), hash=stored.hash,
        fidelity=stored.fidelity, reused_from=stored.run_id,
    )  # fmt: skip


def seed_genomes(memory: EvaluationMemory, config: SearchConfig, space: SearchSpace) -> list[Genome]:
    """The best ``seed_genomes`` architectures of the chosen searches in this space (any data version)."""
    if not config.seed_genomes:
        return []
    best = memory.best_of(config.space, warm_start_searches(config.warm_start), config.seed_genomes)
    return [s.genome for s in best if _fits(space, s.genome)]
