"""The ask/tell contract every strategy follows, and the values that cross it."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from nas_core.genome import Genome
from nas_core.registry import Registry
from nas_core.spaces import SearchSpace, SpaceExhausted

_MAX_DRAWS = 200  # draws per requested genome before concluding the space is exhausted
PRIOR_POOL = 20  # a prior draw is a random unseen genome among the best-scored this many (see Strategy.use_prior)


@dataclass(frozen=True)
class Proposal:
    """A genome a strategy wants evaluated, with where it came from.

    ``hash`` is the genome's identity in its space (``space.identity``); by default the graph's
    canonical hash.
    """

    genome: Genome
    origin: str  # "sample", "prior", "mutation", "crossover", "local", "model" or "enqueued"
    parents: tuple[str, ...] = ()  # identities of the parents
    hash: str = ""

    def __post_init__(self) -> None:
        if not self.hash:
            object.__setattr__(self, "hash", self.genome.canonical_hash())


@dataclass(frozen=True)
class CandidateResult:
    """How a proposal's evaluation ended; ``fitness`` is a validation metric, None if it failed."""

    genome: Genome
    status: str  # "ok" or "failed"
    fitness: float | None
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    hash: str = ""  # the identity in the space; by default the graph's canonical hash

    def __post_init__(self) -> None:
        if not self.hash:
            object.__setattr__(self, "hash", self.genome.canonical_hash())

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.fitness is not None


@lru_cache(maxsize=4)
def _listed(space: SearchSpace) -> tuple[tuple[str, Genome], ...]:
    return tuple((space.identity(g), g) for g in (getattr(space, "enumerate", lambda: None)() or ()))


def listed(space: SearchSpace) -> tuple[tuple[str, Genome], ...]:
    """(identity, genome) of every architecture of a listable space (empty if it cannot be listed), cached per space."""
    try:
        return _listed(space)
    except TypeError:  # an unhashable space: nothing to cache on
        return _listed.__wrapped__(space)


def rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def set_rng_state(rng: random.Random, state: Sequence[Any]) -> None:
    rng.setstate((state[0], tuple(state[1]), state[2]))


class Strategy:
    """Base of all strategies: proposes unseen genomes via ``ask``, learns via ``tell``.

    Subclasses implement ``_propose`` (one proposal, which may repeat a seen genome: the base
    filters duplicates by identity and genomes that break the constraint) and may extend ``tell``
    and the state dict. ``constraint`` (e.g. a parameter limit) is honoured by every strategy.
    Population-based subclasses set ``takes_population``: they accept ``population_size``.

    ``use_prior`` gives what is known before any evaluation (a score per identity, e.g. a zero-cost proxy table):
    with one, the base's random samples become prior draws, so every strategy's random phase (initial population,
    initial design, restarts) starts from the best-scored architectures.
    """

    name = "base"
    takes_population: ClassVar[bool] = False

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        constraint: Callable[[Genome], bool] | None = None,
    ) -> None:
        self.space = space
        self.rng = random.Random(seed)
        self.constraint = constraint
        self.seen: set[str] = set()
        self.queue: list[dict[str, Any]] = []
        self._rejected: set[str] = set()  # identities that break the constraint (derived, not state)
        self.prior: dict[str, float] = {}  # identity -> prior score, higher is better (given again on resume, not state)
        self.prior_pool = PRIOR_POOL
        self._prior_genomes: dict[str, Genome] = {}  # identity -> genome of a scored pool (a space that cannot be listed)
        self._prior_ranking: list[tuple[str, Genome]] | None = None  # derived from the prior

    def use_prior(self, scores: Mapping[str, float], genomes: Mapping[str, Genome] | None = None) -> None:
        """Take a score per identity known before any evaluation (higher is better; e.g. a zero-cost proxy table).

        In the base, each random sample becomes a prior draw: a random unseen genome among the ``prior_pool``
        best-scored architectures (origin ``prior``): those of the listable space, or, for a space that cannot be
        listed, of ``genomes`` (identity -> genome: a scored pool). Subclasses may use the scores more (see their
        docstrings). With no scored genome to draw from, nothing changes.
        The prior is not part of :meth:`state_dict`: on resume, give it again (before or after loading the state).
        """
        self.prior = {h: float(s) for h, s in scores.items() if not math.isnan(float(s))}
        self._prior_genomes = dict(genomes or {})
        self._prior_ranking = None

    def _prior_proposal(self) -> Proposal | None:
        """A random unseen, allowed genome among the ``prior_pool`` best-scored ones; None without a usable prior."""
        if not self.prior:
            return None
        if self._prior_ranking is None:
            known = listed(self.space) or tuple(self._prior_genomes.items())
            scored = [(h, g) for h, g in known if h in self.prior]
            self._prior_ranking = sorted(scored, key=lambda entry: -self.prior[entry[0]])  # stable: ties keep list order
        pool: list[Genome] = []
        for identity, genome in self._prior_ranking:
            if identity not in self.seen and identity not in self._rejected:
                pool.append(genome)
                if len(pool) >= self.prior_pool:
                    break
        return self.proposal(self.rng.choice(pool), "prior") if pool else None

    def identity(self, genome: Genome) -> str:
        return self.space.identity(genome)

    def proposal(self, genome: Genome, origin: str, parents: Sequence[str] = ()) -> Proposal:
        return Proposal(genome, origin, tuple(parents), self.identity(genome))

    def enqueue(self, genome: Genome) -> None:
        """Propose ``genome`` before anything else (e.g. a known-good architecture)."""
        self.queue.append(genome.validate().to_dict())

    def allowed(self, proposal: Proposal) -> bool:
        """Unseen and within the constraint."""
        if proposal.hash in self.seen or proposal.hash in self._rejected:
            return False
        if self.constraint is not None and not self.constraint(proposal.genome):
            self._rejected.add(proposal.hash)
            return False
        return True

    def ask(self, n: int) -> list[Proposal]:
        """Up to ``n`` proposals whose identities were never proposed before in this search.

        When the strategy keeps proposing seen genomes and the space can be enumerated, unseen
        genomes are drawn from the enumeration, so nothing is repeated while unseen ones remain.
        """
        proposals: list[Proposal] = []
        draws = 0
        while len(proposals) < n:
            draws += 1
            if draws > _MAX_DRAWS * n:
                proposals += self._unseen_from_enumeration(n - len(proposals))
                break
            try:
                if self.queue:
                    proposal = self.proposal(Genome.from_dict(self.queue.pop(0)), "enqueued")
                else:
                    proposal = self._propose()
            except SpaceExhausted:
                proposals += self._unseen_from_enumeration(n - len(proposals))
                break
            if self.allowed(proposal):
                self.seen.add(proposal.hash)
                proposals.append(proposal)
        return proposals

    def _unseen_from_enumeration(self, n: int) -> list[Proposal]:
        everything = getattr(self.space, "enumerate", lambda: None)()
        if everything is None:
            return []
        unseen = [g for g in everything if self.allowed(self.proposal(g, "sample"))]
        picked = self.rng.sample(unseen, min(n, len(unseen)))
        for genome in picked:
            self.seen.add(self.identity(genome))
        return [self.proposal(g, "sample") for g in picked]

    def tell(self, results: Sequence[CandidateResult]) -> None:
        """Learn from finished evaluations (failures included).

        Told results it did not propose (a warm start tells earlier searches' evaluations before the first
        ask) are never proposed; each strategy's docstring says how else they count.
        """
        for result in results:
            self.seen.add(result.hash)

    def _propose(self) -> Proposal:
        """A prior draw when there is a prior (see :meth:`use_prior`), else a random sample."""
        return self._prior_proposal() or self.proposal(self.space.sample(self.rng), "sample")

    def state_dict(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data."""
        return {"name": self.name, "rng": rng_state(self.rng), "seen": sorted(self.seen), "queue": list(self.queue)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of strategy '{state.get('name')}' cannot be loaded into '{self.name}'")
        set_rng_state(self.rng, state["rng"])
        self.seen = set(state["seen"])
        self.queue = list(state["queue"])


# name -> strategy class, constructed as ``cls(space, seed=..., constraint=..., [population_size=...])``
STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a strategy under ``name`` (the string used in configs and flags)."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        if cls.name != name:
            raise ValueError(f"strategy class {cls.__name__} is named '{cls.name}', not '{name}'")
        return STRATEGIES.add(name, cls)

    return decorate
