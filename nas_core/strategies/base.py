"""The ask/tell contract every strategy follows, and the values that cross it."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace, SpaceExhausted

_MAX_DRAWS = 200  # draws per requested genome before concluding the space is exhausted


@dataclass(frozen=True)
class Proposal:
    """A genome a strategy wants evaluated, with where it came from."""

    genome: Genome
    origin: str  # "sample", "mutation", "crossover" or "enqueued"
    parents: tuple[str, ...] = ()  # canonical hashes of the parents

    @property
    def hash(self) -> str:
        return self.genome.canonical_hash()


@dataclass(frozen=True)
class CandidateResult:
    """How a proposal's evaluation ended; ``fitness`` is a validation metric, None if it failed."""

    genome: Genome
    status: str  # "ok" or "failed"
    fitness: float | None
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return self.genome.canonical_hash()

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.fitness is not None


def rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: Sequence[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class Strategy:
    """Base of all strategies: proposes unseen genomes via ``ask``, learns via ``tell``.

    Subclasses implement ``_propose`` (one proposal, may repeat a seen genome: the base filters
    duplicates by canonical hash) and may extend ``tell`` and the state dict.
    """

    name = "base"

    def __init__(self, space: SearchSpace, *, seed: int | None = None) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.seen: set[str] = set()
        self.queue: list[dict[str, Any]] = []

    def enqueue(self, genome: Genome) -> None:
        """Propose ``genome`` before anything else (e.g. a known-good architecture)."""
        self.queue.append(genome.validate().to_dict())

    def ask(self, n: int) -> list[Proposal]:
        """Up to ``n`` proposals whose canonical hashes were never proposed before in this search."""
        proposals: list[Proposal] = []
        draws = 0
        while len(proposals) < n and draws < _MAX_DRAWS * n:
            draws += 1
            try:
                proposal = Proposal(Genome.from_dict(self.queue.pop(0)), "enqueued") if self.queue else self._propose()
            except SpaceExhausted:
                break
            if proposal.hash in self.seen:
                continue
            self.seen.add(proposal.hash)
            proposals.append(proposal)
        return proposals

    def tell(self, results: Sequence[CandidateResult]) -> None:
        """Learn from finished evaluations (failures included)."""
        for result in results:
            self.seen.add(result.hash)

    def _propose(self) -> Proposal:
        return Proposal(self.space.sample(self.rng), "sample")

    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data."""
        return {"name": self.name, "rng": rng_state(self.rng), "seen": sorted(self.seen), "queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of strategy '{state.get('name')}' cannot be loaded into '{self.name}'")
        set_rng_state(self.rng, state["rng"])
        self.seen = set(state["seen"])
        self.queue = list(state["queue"])
