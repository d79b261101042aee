"""Zero-cost proxies: every registered proxy is deterministic for a seed, leaves the model untouched and is finite on
every space; each behaves as defined."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from nas_core.evaluation.proxies import (
    PROXIES,
    create_proxy,
    list_proxies,
    proxy_score,
    rank_correlation,
    register_proxy,
    score_genome,
)
from nas_core.spaces import create_space, list_spaces

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def sequences(digits):
    """The digits as 8 channels x 8 steps: a (C, L) dataset for the sequence space."""
    x = {s: v.reshape(len(v), 8, 8) for s, v in digits.x.items()}
    return dataclasses.replace(digits, x=x, input_shape=(8, 8), mean=[0.3] * 8, std=[0.4] * 8)


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


@pytest.mark.parametrize("name", list_proxies())
def test_deterministic_and_model_unchanged(name, digits):
    space = create_space("image")
    genome = space.sample(random.Random(3))
    torch.manual_seed(0)
    model = space.build(genome, digits.input_shape, digits.num_classes, digits.mean, digits.std)
    x, y = torch.from_numpy(digits.x["train"][:32]), torch.from_numpy(digits.y["train"][:32])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = proxy_score(name, model, x, y)
    assert proxy_score(name, model, x, y) == first
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert score_genome(space.build, genome, digits, name, seed=0, batch_size=32) == first


@pytest.mark.parametrize("name", list_proxies())
@pytest.mark.parametrize("space_name", list_spaces())
def test_finite_and_seeded_on_sampled_genomes_of_every_space(name, space_name, digits, sequences):
    space = create_space(space_name)
    data = sequences if getattr(type(space), "input_ndim", 2) == 1 else digits
    rng = random.Random(0)
    genomes = [space.sample(rng) for _ in range(3)]
    scores = [score_genome(space.build, g, data, name, seed=1, batch_size=32) for g in genomes]
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores), scores
    assert score_genome(space.build, genomes[0], data, name, seed=1, batch_size=32) == scores[0]


def test_registry_holds_the_builtin_proxies_in_order():
    assert list_proxies()[:2] == ["synflow", "naswot"]
    assert all(create_proxy(name) is PROXIES[name] for name in list_proxies())
    with pytest.raises(ValueError, match="proxy 'synflow' is already registered"):
        register_proxy("synflow")(lambda model, x, y: 0.0)
    assert PROXIES["synflow"].__name__ == "synflow"


def test_synflow_grows_with_width():
    x = torch.zeros(4, 1, 8, 8)
    torch.manual_seed(0)
    narrow = proxy_score("synflow", _mlp(8), x, torch.zeros(4))
    torch.manual_seed(0)
    wide = proxy_score("synflow", _mlp(64), x, torch.zeros(4))
    assert math.isfinite(narrow) and wide > narrow + 1.0


def test_naswot_penalises_identical_codes(digits):
    x, y = torch.from_numpy(digits.x["train"][:32]), torch.from_numpy(digits.y["train"][:32])
    torch.manual_seed(0)
    normal = _mlp(32)
    dead = _mlp(32)
    with torch.no_grad():
        dead[1].weight.zero_()  # every input gives the same code in both ReLU layers
    assert proxy_score("naswot", normal, x, y) > proxy_score("naswot", dead, x, y)


def test_naswot_needs_activations():
    with pytest.raises(ValueError, match="naswot needs activation modules"):
        proxy_score("naswot", nn.Linear(3, 2), torch.randn(4, 3), torch.zeros(4))


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [0.1, 0.5, 0.6, 0.9]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [0.9, 0.6, 0.5, 0.1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 2], [0.1, 0.2]) is None
    assert rank_correlation([1, 2, float("-inf"), np.nan], [0.1, 0.2, 0.3, 0.4]) is None  # 2 finite pairs
    assert rank_correlation([5, 5, 5], [0.1, 0.2, 0.3]) is None


def test_unknown_proxy(digits):
    with pytest.raises(ValueError, match=r"unknown proxy 'zen' \(known: naswot, synflow\)"):
        create_proxy("zen")
    with pytest.raises(ValueError, match="unknown proxy 'zen'.*naswot, synflow"):
        proxy_score("zen", nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="known: naswot, synflow"):
        score_genome(create_space("image").build, create_space("image").sample(random.Random(0)), digits, "zen")
