"""Architecture and training hyperparameters searched jointly: any space, plus ``genome.hparams``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_core import hparams as hp
from nas_core.genome import Genome
from nas_core.spaces.base import SearchSpace, SpaceExhausted

if TYPE_CHECKING:
    from torch import nn

HPARAM_MUTATION_PROB = 0.25


def _strip(genome: Genome) -> Genome:
    return dataclasses.replace(genome, hparams={}) if genome.hparams else genome


def _with(genome: Genome, values: Mapping[str, Any]) -> Genome:
    return dataclasses.replace(genome, hparams=dict(sorted(values.items())))


class JointSpace:
    """Wraps a space so that each genome also carries one choice per hyperparameter.

    ``choices`` maps hyperparameter names (lr, weight_decay, batch_size, optimizer) to the values
    to search; the trainer uses a genome's values instead of the search-wide settings.
    """

    def __init__(self, base: SearchSpace, choices: Mapping[str, Sequence[Any]]) -> None:
        hp.check_choices(choices)
        self.base = base
        self.choices = {name: list(options) for name, options in sorted(choices.items())}
        self.name = base.name

    def __getattr__(self, name: str) -> Any:  # e.g. arch_string of a tabular space
        attribute = getattr(self.base, name)
        if not callable(attribute):
            return attribute

        def delegate(*args: Any, **kwargs: Any) -> Any:  # the base space sees genomes without hparams
            return attribute(*(_strip(a) if isinstance(a, Genome) else a for a in args), **kwargs)

        return delegate

    def sample(self, rng: random.Random) -> Genome:
        return _with(self.base.sample(rng), hp.sample(self.choices, rng))

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """Change one hyperparameter (probability 1/4, when there is another value) or the architecture."""
        options = hp.alternatives(self.choices, genome.hparams)
        if options and rng.random() < HPARAM_MUTATION_PROB:
            return _with(_strip(genome), rng.choice(options))
        try:
            return _with(self.base.mutate(_strip(genome), rng), genome.hparams)
        except SpaceExhausted:
            if not options:
                raise
            return _with(_strip(genome), rng.choice(options))

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        child = self.base.crossover(_strip(a), _strip(b), rng)
        return _with(child, {name: rng.choice([a.hparams[name], b.hparams[name]]) for name in self.choices})

    def neighbours(self, genome: Genome) -> list[Genome]:
        structural = [_with(g, genome.hparams) for g in self.base.neighbours(_strip(genome))]
        return structural + [_with(_strip(genome), values) for values in hp.alternatives(self.choices, genome.hparams)]

    def identity(self, genome: Genome) -> str:
        joint = [self.base.identity(_strip(genome)), sorted(genome.hparams.items())]
        return hashlib.sha256(json.dumps(joint).encode()).hexdigest()

    def encode(self, genome: Genome) -> np.ndarray:
        """The architecture's features, then one one-hot block per hyperparameter."""
        blocks = [self.base.encode(_strip(genome))]
        for name, options in self.choices.items():
            block = np.zeros(len(options), dtype=np.float32)
            if genome.hparams.get(name) in options:
                block[options.index(genome.hparams[name])] = 1.0
            blocks.append(block)
        return np.concatenate(blocks)

    def enumerate(self) -> list[Genome] | None:
        architectures = self.base.enumerate()
        if architectures is None:
            return None
        settings = [{}]
        for name, options in self.choices.items():
            settings = [{**s, name: v} for s in settings for v in options]
        return [_with(g, s) for g in architectures for s in settings]

    def build(self, genome: Genome, *args: Any, **kwargs: Any) -> nn.Module:
        return self.base.build(_strip(genome), *args, **kwargs)

    def cost(self, genome: Genome, *args: Any, **kwargs: Any) -> dict[str, int]:
        return self.base.cost(_strip(genome), *args, **kwargs)

    def describe(self, genome: Genome) -> dict[str, Any]:
        return {**self.base.describe(_strip(genome)), **{f"hparam.{k}": v for k, v in genome.hparams.items()}}
