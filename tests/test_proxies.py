"""Zero-cost proxies: deterministic, leave the model untouched, finite on both spaces, and behave as defined."""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from nas_core.proxies import PROXIES, proxy_score, rank_correlation, score_genome
from nas_core.spaces import create_space

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def sequences(digits):
    """The digits as 8 channels x 8 steps: a (C, L) dataset for the sequence space."""
    x = {s: v.reshape(len(v), 8, 8) for s, v in digits.x.items()}
    return dataclasses.replace(digits, x=x, input_shape=(8, 8), mean=[0.3] * 8, std=[0.4] * 8)


def _mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


@pytest.mark.parametrize("name", sorted(PROXIES))
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


@pytest.mark.parametrize("name", sorted(PROXIES))
@pytest.mark.parametrize("space_name", ["image", "sequence"])
def test_finite_on_sampled_genomes(name, space_name, digits, sequences):
    data = digits if space_name == "image" else sequences
    space = create_space(space_name)
    rng = random.Random(0)
    scores = [score_genome(space.build, space.sample(rng), data, name, batch_size=32) for _ in range(3)]
    assert all(math.isfinite(s) for s in scores), scores


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
    with pytest.raises(ValueError, match="unknown proxy 'zen'.*naswot, synflow"):
        proxy_score("zen", nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="known: naswot, synflow"):
        score_genome(create_space("image").build, create_space("image").sample(random.Random(0)), digits, "zen")
