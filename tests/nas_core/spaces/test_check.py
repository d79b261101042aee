"""A space says whether a genome is one it could propose (an --init-genome must be)."""

from __future__ import annotations

import random

import pytest

from nas_core.genome import Genome, GenomeError, Node
from nas_core.spaces import create_space


def _chain(*ops: str) -> Genome:
    ids = ["in", *(f"n{i}" for i in range(len(ops))), "out"]
    settings = {"conv": {"channels": 16, "kernel": 3, "stride": 1}}
    nodes = [Node("in", "input"), *(Node(f"n{i}", op, settings.get(op, {})) for i, op in enumerate(ops)), Node("out", "output")]
    return Genome(tuple(nodes), tuple(zip(ids, ids[1:], strict=False))).validate()


@pytest.mark.parametrize("name", ["image", "sequence", "nb201"])
def test_samples_of_a_space_are_in_it(name):
    space = create_space(name)
    for seed in range(5):
        space.check(space.sample(random.Random(seed)))


def test_image_space_refuses_too_many_or_too_few_ops():
    space = create_space("image", min_nodes=2, max_nodes=3)
    with pytest.raises(GenomeError, match="it has 4 ops; the image space takes 2 to 3"):
        space.check(_chain("conv", "conv", "conv", "conv"))
    with pytest.raises(GenomeError, match="it has 1 ops"):
        space.check(_chain("conv"))
    space.check(_chain("conv", "identity"))


def test_image_space_refuses_ops_it_does_not_have():
    with pytest.raises(GenomeError, match="has no op nor_conv_3x3"):
        create_space("image").check(_chain("conv", "nor_conv_3x3"))


def test_nb201_space_takes_only_its_cells():
    with pytest.raises(GenomeError, match="nb201 space takes only its cells"):
        create_space("nb201").check(_chain("conv", "identity"))


def test_a_joint_space_checks_the_architecture():
    space = create_space("image", hparams={"lr": [0.01, 0.1]}, max_nodes=2)
    with pytest.raises(GenomeError, match="it has 3 ops"):
        space.check(_chain("conv", "conv", "conv"))
