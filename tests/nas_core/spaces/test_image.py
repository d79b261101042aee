"""Property tests of the image search space: everything it returns validates, builds and runs."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_core.builder import build_model
from nas_core.genome import Genome
from nas_core.ops import INPUT_OP, OUTPUT_OP
from nas_core.spaces import SPACES, create_space
from nas_core.spaces.image import ImageSpace, describe_genome

SEEDS = st.integers(0, 2**32 - 1)
SPACE = create_space("image")
SMALL = create_space("image", min_nodes=1, max_nodes=3, skip_prob=0.6, reduce_prob=0.5)
WIDE = create_space("image", min_nodes=4, max_nodes=9, channels=(8,), ops=("conv", "identity"), kernels=(3,))


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def check_in_space(genome: Genome, space: ImageSpace) -> None:
    """Valid, the documented shape (input, n0..n{k-1}, output in topological order) and within the size bounds."""
    genome.validate()
    hidden = [n for n in genome.nodes if n.op not in (INPUT_OP, OUTPUT_OP)]
    assert space.min_nodes <= len(hidden) <= space.max_nodes, len(hidden)
    assert [n.id for n in hidden] == [f"n{i}" for i in range(len(hidden))]
    assert all(n.op in space.ops for n in hidden)
    assert all(n.settings.get("channels", space.channels[0]) in space.channels for n in hidden)
    position = {n.id: i for i, n in enumerate([genome.node_map[genome.input_id], *hidden, genome.node_map[genome.output_id]])}
    assert all(position[s] < position[d] for s, d in genome.edges), "edges must go forward in n0..n{k-1} order"
    assert (genome.input_id, genome.output_id) not in genome.edges


def assert_child(child: Genome, parent: Genome, space: ImageSpace) -> None:
    check_in_space(child, space)
    assert child.canonical_hash() != parent.canonical_hash()


@settings(max_examples=1000, deadline=None)
@given(SEEDS)
def test_sample_mutate_crossover_chain_stays_valid(seed):
    rng = random.Random(seed)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    check_in_space(a, SPACE)
    check_in_space(b, SPACE)
    m = SPACE.mutate(a, rng)
    assert_child(m, a, SPACE)
    c = SPACE.crossover(a, b, rng)
    check_in_space(c, SPACE)
    mc = SPACE.mutate(c, rng)
    assert_child(mc, c, SPACE)
    cc = SPACE.crossover(mc, m, rng)
    check_in_space(cc, SPACE)
    assert Genome.from_json(cc.to_json()) == cc


@settings(max_examples=500, deadline=None)
@given(SEEDS)
def test_mutation_chain_never_returns_parent(seed):
    rng = random.Random(seed)
    genome = SPACE.sample(rng)
    for _ in range(8):
        child = SPACE.mutate(genome, rng)
        assert_child(child, genome, SPACE)
        genome = child


@pytest.mark.parametrize("space", [SMALL, WIDE], ids=["small", "wide"])
@settings(max_examples=300, deadline=None)
@given(seed=SEEDS)
def test_other_space_options_keep_bounds(space, seed):
    rng = random.Random(seed)
    a, b = space.sample(rng), space.sample(rng)
    check_in_space(a, space)
    for _ in range(4):
        child = space.mutate(a, rng)
        assert_child(child, a, space)
        c = space.crossover(child, b, rng)
        check_in_space(c, space)
        a, b = child, c


def test_mutation_differs_from_parent_in_a_tiny_space():
    # one maxpool node: the only possible change is its stride, drawn as 2 with probability reduce_prob
    space = create_space("image", min_nodes=1, max_nodes=1, ops=("maxpool",), reduce_prob=0.01)
    for seed in range(50):
        rng = random.Random(seed)
        parent = space.sample(rng)
        child = space.mutate(parent, rng)
        assert child.canonical_hash() != parent.canonical_hash(), f"seed {seed}: mutate returned the parent"


@settings(max_examples=300, deadline=None)
@given(SEEDS)
def test_space_genomes_build_and_run(seed):
    rng = random.Random(seed)
    a, b = SPACE.sample(rng), SPACE.sample(rng)
    genome = rng.choice([a, SPACE.mutate(a, rng), SPACE.crossover(a, b, rng)])
    model = build_model(genome, (1, 8, 8), 10)
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def _skip_edges(genome: Genome) -> int:
    order = [genome.input_id] + [n.id for n in genome.nodes if n.op not in (INPUT_OP, OUTPUT_OP)] + [genome.output_id]
    position = {node_id: i for i, node_id in enumerate(order)}
    return sum(position[d] - position[s] > 1 for s, d in genome.edges)


def test_space_varies_ops_settings_and_wiring():
    rng = random.Random(0)
    genomes = [SPACE.sample(rng) for _ in range(200)]
    hidden = [n for g in genomes for n in g.nodes if n.op not in (INPUT_OP, OUTPUT_OP)]
    assert len({len(g.edges) for g in genomes}) > 1
    assert len({len(g.nodes) for g in genomes}) > 1
    assert {n.op for n in hidden} == set(SPACE.ops)
    assert {n.settings["channels"] for n in hidden if "channels" in n.settings} == set(SPACE.channels)
    assert {n.settings["stride"] for n in hidden if "stride" in n.settings} == {1, 2}
    assert any(_skip_edges(g) > 0 for g in genomes)
    assert any(_skip_edges(g) == 0 for g in genomes)
    assert len({g.canonical_hash() for g in genomes}) > 190


def test_mutations_change_ops_and_wiring():
    rng = random.Random(1)
    kinds = Counter()
    for _ in range(300):
        parent = SPACE.sample(rng)
        child = SPACE.mutate(parent, rng)
        if len(child.nodes) != len(parent.nodes):
            kinds["nodes"] += 1
        elif set(child.edges) != set(parent.edges):
            kinds["edges"] += 1
        elif [n.op for n in child.nodes] != [n.op for n in parent.nodes]:
            kinds["op"] += 1
        else:
            kinds["setting"] += 1
    assert all(kinds[k] > 0 for k in ("nodes", "edges", "op", "setting")), kinds


@settings(max_examples=200, deadline=None)
@given(SEEDS)
def test_same_seed_same_sequence(seed):
    def run(rng: random.Random) -> list[str]:
        a = SPACE.sample(rng)
        b = SPACE.sample(rng)
        m = SPACE.mutate(a, rng)
        c = SPACE.crossover(m, b, rng)
        return [g.to_json() for g in (a, b, m, c, SPACE.sample(rng))]

    assert run(random.Random(seed)) == run(random.Random(seed))


def test_different_seeds_give_different_sequences():
    first = [SPACE.sample(random.Random(1)).to_json() for _ in range(3)]
    rng1, rng2 = random.Random(1), random.Random(2)
    assert [SPACE.sample(rng1).to_json() for _ in range(10)] != [SPACE.sample(rng2).to_json() for _ in range(10)]
    assert len(set(first)) == 1


def test_create_space_unknown_name():
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        create_space("nope")


def test_create_space_registry():
    assert "image" in SPACES
    space = create_space("image", max_nodes=4)
    assert isinstance(space, ImageSpace) and space.name == "image" and space.max_nodes == 4


@pytest.mark.parametrize(
    "options",
    [
        {"min_nodes": 0},
        {"min_nodes": 5, "max_nodes": 4},
        {"ops": ("fancy",)},
        {"ops": ("conv", INPUT_OP)},
        {"ops": ()},
        {"channels": ()},
    ],
)
def test_create_space_rejects_bad_options(options):
    with pytest.raises(ValueError):
        create_space("image", **options)


def test_describe_flattens_genome():
    genome = SPACE.sample(random.Random(3))
    flat = SPACE.describe(genome)
    assert flat == describe_genome(genome)
    hidden = [n for n in genome.nodes if n.op not in (INPUT_OP, OUTPUT_OP)]
    assert flat["num_nodes"] == len(hidden)
    assert flat["num_edges"] == len(genome.edges)
    for node in hidden:
        assert flat[f"node.{node.id}.op"] == node.op
        assert flat[f"node.{node.id}.inputs"] == ",".join(genome.predecessors(node.id))
    assert flat["output.inputs"] == ",".join(genome.predecessors(genome.output_id))


def test_mutation_in_a_space_of_one_genome_says_the_space_is_exhausted():
    from nas_core.spaces import SpaceExhausted

    space = create_space("image", min_nodes=1, max_nodes=1, ops=("identity",))
    rng = random.Random(0)
    with pytest.raises(SpaceExhausted):
        space.mutate(space.sample(rng), rng)
