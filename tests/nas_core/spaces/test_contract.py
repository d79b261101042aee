"""The contract of every registered search space, alone and with searched hyperparameters (``JointSpace``).

Moves give valid genomes, identities survive a JSON round trip, encodings have a fixed length, and the built network
runs forward on a small input of the space's kind: (C, H, W) images or (C, L) sequences.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from nas_core.genome import Genome
from nas_core.metrics import count_params
from nas_core.spaces import SPACES, JointSpace, SpaceExhausted, create_space, list_spaces

HPARAMS = {"lr": [0.1, 0.01], "batch_size": [16, 32]}
INPUT_SHAPES = {2: (3, 32, 32), 1: (3, 24)}  # by the space's input_ndim: nb201 builds for 3 x 32 x 32
NUM_CLASSES = 5
SAMPLES = 4
CASES = [(name, hparams) for name in list_spaces() for hparams in (False, True)]


@pytest.fixture(params=CASES, ids=[f"{name}{'+hparams' if joint else ''}" for name, joint in CASES])
def space(request):
    name, joint = request.param
    return create_space(name, hparams=HPARAMS if joint else None)


def input_shape(space) -> tuple[int, ...]:
    return INPUT_SHAPES[int(getattr(type(getattr(space, "base", space)), "input_ndim", 2))]


def genomes(space, seed: int = 0, n: int = SAMPLES) -> list[Genome]:
    rng = random.Random(seed)
    return [space.sample(rng) for _ in range(n)]


def assert_member(space, genome: Genome) -> None:
    """A valid genome of this space: the graph validates and hyperparameters are among the choices."""
    assert isinstance(genome, Genome)
    genome.validate()
    if isinstance(space, JointSpace):
        assert set(genome.hparams) == set(HPARAMS)
        assert all(genome.hparams[k] in HPARAMS[k] for k in HPARAMS)
    else:
        assert genome.hparams == {}


def round_trip(genome: Genome) -> Genome:
    return Genome.from_dict(json.loads(json.dumps(genome.to_dict())))


def test_every_space_is_registered_under_its_own_name():
    assert {"image", "nb201", "sequence"} <= set(list_spaces())
    for name in list_spaces():
        assert create_space(name).name == name
        assert SPACES[name] is type(create_space(name))
    with pytest.raises(ValueError, match=r"unknown search space 'nope' \(known: .*image"):
        create_space("nope")


def test_sample_is_valid_and_seeded(space):
    first = genomes(space, seed=1)
    for genome in first:
        assert_member(space, genome)
    assert [space.identity(g) for g in genomes(space, seed=1)] == [space.identity(g) for g in first]
    assert [space.identity(g) for g in genomes(space, seed=2, n=8)] != [space.identity(g) for g in genomes(space, seed=1, n=8)]


def test_mutate_and_crossover_give_valid_genomes(space):
    rng = random.Random(3)
    parents = genomes(space, seed=3)
    for a, b in zip(parents, parents[1:], strict=False):
        try:
            child = space.mutate(a, rng)
        except SpaceExhausted:
            child = None
        if child is not None:
            assert_member(space, child)
            assert space.identity(child) != space.identity(a), "a mutation is another architecture"
        assert_member(space, space.crossover(a, b, rng))
        assert_member(space, space.crossover(a, a, rng))


def test_neighbours_are_valid_distinct_and_in_a_fixed_order(space):
    genome = genomes(space, seed=4, n=1)[0]
    neighbours = space.neighbours(genome)
    assert neighbours, "every sampled genome has a neighbour"
    for neighbour in neighbours[:10]:
        assert_member(space, neighbour)
    identities = [space.identity(n) for n in neighbours]
    assert space.identity(genome) not in identities
    assert identities == [space.identity(n) for n in space.neighbours(genome)]


def test_identity_is_stable_across_a_json_round_trip(space):
    for genome in genomes(space, seed=5):
        again = round_trip(genome)
        assert space.identity(again) == space.identity(genome)
        assert isinstance(space.identity(genome), str) and space.identity(genome)
        assert space.describe(again) == space.describe(genome)


def test_encode_is_a_fixed_length_finite_vector(space):
    vectors = [space.encode(g) for g in genomes(space, seed=6)]
    assert all(isinstance(v, np.ndarray) and v.ndim == 1 for v in vectors)
    assert len({v.shape for v in vectors}) == 1 and vectors[0].size > 0
    assert all(np.isfinite(v).all() for v in vectors)
    assert len({v.tobytes() for v in vectors}) > 1, "different genomes, some different encodings"


def test_describe_is_flat_and_comparable(space):
    for genome in genomes(space, seed=7, n=2):
        described = space.describe(genome)
        assert described and all(isinstance(v, (str, int, float, bool)) for v in described.values())


def test_enumeration_is_none_or_valid_genomes_with_distinct_identities(space):
    listed = space.enumerate()
    if listed is None:
        return
    head = listed[:500]  # all 6,466 (x 4 hyperparameter settings) take seconds
    assert len({space.identity(g) for g in head}) == len(head)
    for genome in head[:: len(head) // 10]:
        assert_member(space, genome)


def test_build_runs_forward_on_a_small_input_and_cost_counts_its_parameters(space):
    torch.manual_seed(0)
    shape = input_shape(space)
    genome = genomes(space, seed=9, n=1)[0]
    model = space.build(genome, shape, NUM_CLASSES, [0.5] * shape[0], [0.25] * shape[0])
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()
    cost = space.cost(genome, shape, NUM_CLASSES)
    assert cost["params"] == count_params(model)
    assert cost["flops"] > 0 and math.isfinite(cost["flops"])
