"""What a search space is (the protocol strategies and the pipeline use) and the registry of spaces."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from nas_core.genome import Genome
from nas_core.registry import Registry

if TYPE_CHECKING:
    from torch import nn


class SpaceExhausted(ValueError):
    """The space has no genome that satisfies the request (e.g. no mutation differs from the parent)."""


class SearchSpace(Protocol):
    """What strategies and the pipeline need from a space; every returned genome validates."""

    name: str

    def sample(self, rng: random.Random) -> Genome:
        """A random genome."""

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """One random change; the result has another identity (or SpaceExhausted)."""

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        """A child mixing two parents."""

    def neighbours(self, genome: Genome) -> list[Genome]:
        """Every genome one elementary change away (for local search), in a fixed order."""

    def check(self, genome: Genome) -> None:
        """Raise GenomeError unless ``genome`` (a valid one) is in this space: its size and ops (e.g. an init genome)."""

    def identity(self, genome: Genome) -> str:
        """A hash equal for genomes this space considers the same architecture."""

    def encode(self, genome: Genome) -> np.ndarray:
        """A fixed-length float vector describing the genome (features for surrogate models)."""

    def enumerate(self) -> list[Genome] | None:
        """One genome per identity when the space is small enough to list, else None."""

    def build(
        self,
        genome: Genome,
        input_shape: tuple[int, ...],
        num_classes: int,
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> nn.Module:
        """The trainable network of a genome."""

    def cost(self, genome: Genome, input_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
        """``params`` and ``flops`` of the built network, without training it."""

    def describe(self, genome: Genome) -> dict[str, Any]:
        """Flat, comparable parameters of a genome (for MLflow's compare view)."""


# name -> space class (a dataclass whose fields are the space's options); the name is what configs and flags use
SPACES: Registry[Callable[..., SearchSpace]] = Registry("search space")


def register_space(name: str) -> Callable[[type], type]:
    """Class decorator: register a space under ``name`` (the string used in configs and flags)."""
    return SPACES.register(name)
