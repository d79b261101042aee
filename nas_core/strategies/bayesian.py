"""Bayesian optimisation: a Gaussian process on architecture encodings, and an acquisition function.

The surrogate is a GP with a squared-exponential kernel on ``space.encode`` features; on the
NAS-Bench-201 space the one-hot edge ops are joined by a path encoding (BANANAS, White et al. 2021):
for every input-to-output path of the cell, the sequence of ops along it, counted per sequence, so
cells computing the same paths look alike whatever the edge they sit on. Kernel lengthscale and noise
are chosen by marginal likelihood on a small grid at every refit; the signal variance has a closed
form. Targets are rank-transformed to normal quantiles (a Gaussian copula), which keeps the few
diverged architectures (10 % accuracy) from dominating the fit.

Candidates are every unseen genome when the space can be enumerated (NAS-Bench-201: 6,466), else
mutations of the best genomes so far (and of those mutations) plus random samples. The first
``initial`` proposals are random samples. Acquisitions: ``ei`` (expected improvement), ``ucb``
(mean + beta sd), ``thompson`` (the best of one draw from every candidate's marginal posterior) and,
by default, ``alternate``: expected improvement and Thompson draws in turn, which exploits like EI
but keeps exploring, so the search does not settle on a local optimum (on NAS-Bench-201 CIFAR-10,
EI alone stays on one in ~14 % of searches even at 200 queries; alternating, in ~3 %). Within one
``ask`` the batch is filled greedily with the "kriging believer": each pick is added to the model at
its predicted mean before the next pick.

Measured with ``benchmarks/strategies.py`` (NAS-Bench-201 CIFAR-10, select val_acc_200, report
test_acc_200, 100 seeds, one query at a time): 93.94 / 94.32 / 94.35 / 94.36 mean test accuracy at
25 / 50 / 100 / 200 queries, the best-by-validation architecture found in 96 % of searches at 100
(Optuna's TPE: 93.62 / 94.02 / 94.18 / 94.25; regularized evolution 94.12 at 100; optimum 94.37).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_core.genome import Genome
from nas_core.spaces import SearchSpace, SpaceExhausted
from nas_core.spaces.nb201 import EDGES, NB201_OPS, NB201Space, genome_to_cell
from nas_core.strategies.base import CandidateResult, Proposal, Strategy, register_strategy

if TYPE_CHECKING:  # scipy is imported where it is used: checking a strategy name stays cheap
    from scipy import sparse

ACQUISITIONS = ("ei", "ucb", "thompson", "alternate")
LENGTHSCALES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)  # multiples of the typical distance between encodings (see _scale)
NOISE_RATIOS = (1e-4, 1e-3, 1e-2, 1e-1)  # noise variance over signal variance


# ---- NAS-Bench-201 path encoding ------------------------------------------------------------


def _cell_paths() -> list[tuple[int, ...]]:
    """Every input-to-output path of the cell, as indices into EDGES."""
    last = max(to for to, _ in EDGES)
    paths: list[tuple[int, ...]] = []

    def walk(node: int, path: tuple[int, ...]) -> None:
        if node == last:
            paths.append(path)
            return
        for i, (to, source) in enumerate(EDGES):
            if source == node:
                walk(to, path + (i,))

    walk(0, ())
    return paths


_PATHS = _cell_paths()
_PATH_OPS = tuple(op for op in NB201_OPS if op != "none")
_PATH_INDEX = {
    ops: i
    for i, ops in enumerate(seq for n in sorted({len(p) for p in _PATHS}) for seq in itertools.product(_PATH_OPS, repeat=n))
}


def path_encoding(cell: Sequence[str]) -> np.ndarray:
    """How often each op sequence occurs along an input-to-output path (paths through ``none`` carry nothing)."""
    features = np.zeros(len(_PATH_INDEX))
    for path in _PATHS:
        ops = tuple(cell[i] for i in path)
        if "none" not in ops:
            features[_PATH_INDEX[ops]] += 1.0
    return features


def features(space: SearchSpace, genome: Genome) -> np.ndarray:
    """The surrogate's input: ``space.encode``, plus the path encoding on NAS-Bench-201."""
    encoded = np.asarray(space.encode(genome), dtype=np.float64).ravel()
    if isinstance(space, NB201Space):
        encoded = np.concatenate([encoded, path_encoding(genome_to_cell(genome))])
    return encoded


@dataclass(frozen=True)
class Enumeration:
    """Every genome of an enumerable space, with identities, features and squared feature norms."""

    genomes: tuple[Genome, ...]
    identities: tuple[str, ...]
    matrix: sparse.csr_matrix  # encodings are mostly zeros: sparse products are ~10x faster
    sqnorms: np.ndarray
    index: dict[str, int]


@lru_cache(maxsize=4)
def _enumerated(space: SearchSpace) -> Enumeration | None:
    from scipy import sparse

    everything = space.enumerate()
    if not everything:
        return None
    genomes = tuple(everything)
    identities = tuple(space.identity(g) for g in genomes)
    matrix = np.array([features(space, g) for g in genomes])
    index = {h: i for i, h in enumerate(identities)}
    return Enumeration(genomes, identities, sparse.csr_matrix(matrix), (matrix * matrix).sum(1), index)


def enumerated(space: SearchSpace) -> Enumeration | None:
    """The space's enumeration (None if it has none), computed once per (hashable) space and process."""
    try:
        return _enumerated(space)
    except TypeError:  # an unhashable space: nothing to cache on
        return _enumerated.__wrapped__(space)


# ---- the Gaussian process --------------------------------------------------------------------


def _sq_dist(a: np.ndarray | sparse.spmatrix, b: np.ndarray, a_sqnorms: np.ndarray | None = None) -> np.ndarray:
    from scipy import sparse

    if a_sqnorms is None:
        a_sqnorms = np.asarray(a.multiply(a).sum(1)).ravel() if sparse.issparse(a) else (a * a).sum(1)
    return np.maximum(a_sqnorms[:, None] + (b * b).sum(1)[None, :] - 2.0 * np.asarray(a @ b.T), 0.0)


def copula(y: np.ndarray) -> np.ndarray:
    """Ranks mapped to standard-normal quantiles (ties share their mean rank)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    return ndtri((rankdata(y) - 0.5) / len(y))


class GaussianProcess:
    """Zero-mean GP, kernel ``s2 * (exp(-d^2 / 2 l^2) + r * I)``; ``l`` and ``r`` by marginal likelihood on a grid."""

    def __init__(self, lengthscales: Sequence[float] | None = None, noise_ratios: Sequence[float] | None = None) -> None:
        self.lengthscales = tuple(lengthscales or LENGTHSCALES)
        self.noise_ratios = tuple(noise_ratios or NOISE_RATIOS)

    def fit(self, x: np.ndarray, y: np.ndarray, scale: float = 1.0) -> GaussianProcess:
        from scipy.linalg import cho_solve

        self.x, self.y = x, y
        d2 = _sq_dist(x, x)
        n = len(y)
        best: tuple[float, ...] | None = None
        for lengthscale in self.lengthscales:
            k0 = np.exp(-d2 / (2.0 * (lengthscale * scale) ** 2))
            for ratio in self.noise_ratios:
                try:
                    chol = np.linalg.cholesky(k0 + ratio * np.eye(n))
                except np.linalg.LinAlgError:
                    continue
                alpha = cho_solve((chol, True), y)
                s2 = max(float(y @ alpha) / n, 1e-12)
                lml = -0.5 * n * math.log(s2) - float(np.log(np.diag(chol)).sum())
                if best is None or lml > best[0] + 1e-9:
                    best = (lml, lengthscale * scale, ratio, s2)
        if best is None:
            raise np.linalg.LinAlgError("no kernel on the grid gives a positive-definite matrix")
        _, self.lengthscale, self.noise_ratio, self.s2 = best
        self._factor(x, y)
        return self

    def _factor(self, x: np.ndarray, y: np.ndarray) -> None:
        from scipy.linalg import cho_solve

        self.x, self.y = x, y
        k = np.exp(-_sq_dist(x, x) / (2.0 * self.lengthscale**2)) + self.noise_ratio * np.eye(len(y))
        self.chol = np.linalg.cholesky(k)
        self.alpha = cho_solve((self.chol, True), y)

    def condition(self, x_new: np.ndarray, y_new: np.ndarray) -> None:
        """Add observations without refitting the hyperparameters (for fantasies)."""
        self._factor(np.vstack([self.x, x_new]), np.concatenate([self.y, y_new]))

    def predict(self, x: np.ndarray | sparse.spmatrix, sqnorms: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the latent function (no observation noise)."""
        from scipy.linalg import solve_triangular

        kc = np.exp(-_sq_dist(x, self.x, sqnorms) / (2.0 * self.lengthscale**2))
        mean = kc @ self.alpha
        v = solve_triangular(self.chol, kc.T, lower=True, check_finite=False)
        var = self.s2 * np.maximum(1.0 - (v * v).sum(0), 1e-12)
        return mean, np.sqrt(var)


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    from scipy.special import ndtr

    z = (mean - best) / sd
    return (mean - best) * ndtr(z) + sd * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def thompson(mean: np.ndarray, sd: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw from each candidate's marginal posterior (independent draws: cheap, and exploring more than a joint one)."""
    return mean + sd * rng.standard_normal(len(mean))


Candidate = tuple[Genome, str, str, tuple[str, ...]]  # genome, identity, origin, parents


class _Rows(Sequence[Candidate]):
    """Some rows of an enumeration, as candidates (built on access: most are never looked at)."""

    def __init__(self, listing: Enumeration, rows: np.ndarray) -> None:
        self.listing, self.rows = listing, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        row = int(self.rows[i])
        return (self.listing.genomes[row], self.listing.identities[row], "model", ())


# ---- the strategy ----------------------------------------------------------------------------


@register_strategy("bo")
class BayesianOptimization(Strategy):
    """GP-based Bayesian optimisation over the space's encodings (see the module docstring).

    Told results it did not propose are observations like its own (failures as the worst so far) and
    count towards the ``initial`` random design: a warm start with ``initial`` or more results has the
    model choose from the first ask, with fewer only the rest of the design is random.

    With a prior (``use_prior``, e.g. a zero-cost proxy table) the initial design is prior draws (the base's),
    and, with ``prior_mean``, the surrogate's mean is ``a + b z``: ``z`` is the prior score's rank as a
    standard-normal quantile over the scored identities, ``a`` and ``b >= 0`` are fitted to the observations by
    least squares, and the GP models what the prior does not explain. Unexplored architectures are then
    predicted by their prior score, explored ones by their neighbours' results.
    """

    name = "bo"

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        constraint: Callable[[Genome], bool] | None = None,
        initial: int = 10,
        acquisition: str = "alternate",
        beta: float = 2.0,
        parents: int = 4,
        mutations: int = 10,
        random_candidates: int = 40,
        prior_mean: bool = True,
    ) -> None:
        super().__init__(space, seed=seed, constraint=constraint)
        if initial < 1:
            raise ValueError("initial must be at least 1")
        if acquisition not in ACQUISITIONS:
            raise ValueError(f"unknown acquisition '{acquisition}' (known: {', '.join(ACQUISITIONS)})")
        self.initial = initial
        self.acquisition = acquisition
        self.beta = beta
        self.parents = parents
        self.mutations = mutations
        self.random_candidates = random_candidates
        self.prior_mean = prior_mean
        self._prior_z: dict[str, float] = {}  # identity -> prior score as a normal quantile (derived from the prior)
        self.observations: list[dict[str, Any]] = []  # {"genome", "hash", "fitness"}; fitness None if it failed
        self.pending: list[dict[str, Any]] = []  # proposed, not told yet: {"genome", "hash"}
        self._features: dict[str, np.ndarray] = {}  # identity -> features (derived, not state)
        self._plan: Iterator[Candidate] | None = None  # candidates, best first
        self._pool: tuple[Sequence[Candidate], np.ndarray, np.ndarray | None] | None = None

    # -- ask / tell -------------------------------------------------------------------------

    def ask(self, n: int) -> list[Proposal]:
        """One proposal at a time, each taken into the model (as a fantasy) before the next is chosen."""
        proposals: list[Proposal] = []
        self._pool = None  # candidates are gathered once per ask, scored again for every pick
        for _ in range(n):
            self._plan = None
            got = super().ask(1)
            if not got:
                break
            proposals += got
            self.pending.append({"genome": got[0].genome.to_dict(), "hash": got[0].hash})
        self._plan = self._pool = None
        return proposals

    def _propose(self) -> Proposal:
        if len(self.observations) + len(self.pending) < self.initial or all(o["fitness"] is None for o in self.observations):
            return super()._propose()
        if self._plan is None:
            self._plan = self._rank()
        for genome, identity, origin, parents in self._plan:
            if identity not in self.seen and identity not in self._rejected:
                return Proposal(genome, origin, parents, identity)
        if enumerated(self.space) is None:  # every candidate was seen or broke the constraint: sample
            return super()._propose()
        raise SpaceExhausted("no unseen candidate left")  # the base draws from the enumeration, if anything is left

    def tell(self, results: Sequence[CandidateResult]) -> None:
        super().tell(results)
        told = {r.hash for r in results}
        self.pending = [p for p in self.pending if p["hash"] not in told]
        for result in results:
            fitness = float(result.fitness) if result.ok else None
            self.observations.append({"genome": result.genome.to_dict(), "hash": result.hash, "fitness": fitness})

    def use_prior(self, scores: Mapping[str, float], genomes: Mapping[str, Genome] | None = None) -> None:
        super().use_prior(scores, genomes)
        ranked = sorted(self.prior, key=self.prior.__getitem__)
        z = copula(np.array([self.prior[h] for h in ranked])) if ranked else np.zeros(0)
        self._prior_z = dict(zip(ranked, z.tolist(), strict=True))

    # -- the model --------------------------------------------------------------------------

    def _prior_column(self, identities: Sequence[str]) -> np.ndarray:
        """The prior's normal quantile per identity (0, the median, where it has none)."""
        return np.array([self._prior_z.get(h, 0.0) for h in identities], dtype=np.float64)

    def _candidate_identities(self, candidates: Sequence[Candidate]) -> list[str]:
        if isinstance(candidates, _Rows):
            return [candidates.listing.identities[int(i)] for i in candidates.rows]
        return [identity for _, identity, _, _ in candidates]

    def _encode(self, entry: dict[str, Any]) -> np.ndarray:
        """Features of an observation or pending entry ({"genome": dict, "hash": identity})."""
        vector = self._features.get(entry["hash"])
        if vector is None:
            listing = enumerated(self.space)
            if listing is not None and entry["hash"] in listing.index:
                vector = listing.matrix[listing.index[entry["hash"]]].toarray().ravel()
            else:
                vector = features(self.space, Genome.from_dict(entry["genome"]))
            self._features[entry["hash"]] = vector
        return vector

    def _training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """Features and copula-transformed fitness; failures count as the worst result so far."""
        worst = min(o["fitness"] for o in self.observations if o["fitness"] is not None)
        x = np.array([self._encode(o) for o in self.observations])
        y = np.array([worst if o["fitness"] is None else o["fitness"] for o in self.observations], dtype=np.float64)
        return x, copula(y)

    def _candidates(self) -> tuple[Sequence[Candidate], np.ndarray, np.ndarray | None]:
        """Unseen genomes to score, their features and (if cached) squared feature norms.

        All of an enumerable space; otherwise mutations of the best genomes so far (and mutations of
        those mutations) and random samples.
        """
        listing = enumerated(self.space)
        if listing is not None:
            keep = np.ones(len(listing.genomes), dtype=bool)
            for identity in itertools.chain(self.seen, self._rejected):
                i = listing.index.get(identity)
                if i is not None:
                    keep[i] = False
            rows = np.flatnonzero(keep)
            chosen = _Rows(listing, rows)
            return chosen, listing.matrix[rows], listing.sqnorms[rows]
        blocked = self.seen | self._rejected
        found: dict[str, Candidate] = {}

        def add(genome: Genome, origin: str, parents: tuple[str, ...] = ()) -> None:
            identity = self.identity(genome)
            if identity not in blocked and identity not in found:
                found[identity] = (genome, identity, origin, parents)

        ok = sorted((o for o in self.observations if o["fitness"] is not None), key=lambda o: -o["fitness"])
        for top in ok[: self.parents]:
            parent = Genome.from_dict(top["genome"])
            for _ in range(self.mutations):
                try:
                    child = self.space.mutate(parent, self.rng)
                    add(child, "mutation", (top["hash"],))
                    add(self.space.mutate(child, self.rng), "mutation", (top["hash"],))
                except SpaceExhausted:
                    break
        for _ in range(self.random_candidates):
            add(self.space.sample(self.rng), "sample")
        chosen = list(found.values())
        if not chosen:
            return [], np.zeros((0, 0)), None
        return chosen, np.array([features(self.space, genome) for genome, *_ in chosen]), None

    def _rank(self) -> Iterator[Candidate]:
        """The candidates, best acquisition first."""
        x, y = self._training_set()
        if self._pool is None:
            self._pool = self._candidates()
        candidates, matrix, sqnorms = self._pool
        if not len(candidates):
            return iter(())
        trend = self._prior_trend(y) if self.prior_mean and self._prior_z else None
        offset = trend(self._prior_column([o["hash"] for o in self.observations])) if trend else 0.0
        gp = GaussianProcess().fit(x, y - offset, _scale(x[: max(2, self.initial)]))
        if self.pending:  # the kriging believer: pending proposals count at their predicted mean
            px = np.array([self._encode(p) for p in self.pending])
            gp.condition(px, gp.predict(px)[0])
        mean, sd = gp.predict(matrix, sqnorms)
        if trend is not None:
            mean = mean + trend(self._prior_column(self._candidate_identities(candidates)))
        kind = self.acquisition
        if kind == "alternate":  # expected improvement, then a Thompson draw, then expected improvement ...
            kind = "thompson" if (len(self.observations) + len(self.pending)) % 2 else "ei"
        if kind == "ei":
            score = expected_improvement(mean, sd, float(y.max()))
        elif kind == "ucb":
            score = mean + self.beta * sd
        else:
            score = thompson(mean, sd, np.random.default_rng(self.rng.getrandbits(64)))
        order = np.argsort(-score, kind="stable")
        return (candidates[i] for i in order)

    def _prior_trend(self, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        """``z -> a + b z``: least squares of the (copula) observations on their prior quantiles, ``b >= 0``."""
        z = self._prior_column([o["hash"] for o in self.observations])
        slope = 0.0
        if len(z) > 2 and z.std() > 1e-9:
            slope = max(0.0, float(np.cov(z, y, bias=True)[0, 1] / z.var()))
        intercept = float(y.mean() - slope * z.mean())
        return lambda values: intercept + slope * values

    # -- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "observations": [dict(o) for o in self.observations],
            "pending": [dict(p) for p in self.pending],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.observations = [dict(o) for o in state["observations"]]
        self.pending = [dict(p) for p in state["pending"]]
        self._plan = None


def _scale(x: np.ndarray) -> float:
    """A typical distance between encodings (the median nonzero one), so the lengthscale grid fits any space."""
    d = np.sqrt(_sq_dist(x, x)[np.triu_indices(len(x), 1)])
    d = d[d > 1e-9]
    return float(np.median(d)) if len(d) else 1.0
