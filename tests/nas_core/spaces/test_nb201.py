"""The NAS-Bench-201 cell space: architecture strings, the benchmark's isomorphism rule, space operations, networks."""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
import re

import numpy as np
import pytest
import torch

from nas_core.genome import Genome, Node
from nas_core.metrics import count_flops, count_params
from nas_core.spaces import create_space
from nas_core.spaces.nb201 import (
    EDGES,
    NB201_OPS,
    NB201Space,
    cell_to_genome,
    format_arch,
    genome_to_cell,
    parse_arch,
)
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TABLE_PATH = REPO_ROOT.parent / "shared" / "benchmarks" / "nb201_cifar10.json"
DISTINCT = 6466  # architectures of NAS-Bench-201 up to isomorphism
SPACE = NB201Space()
SMALL = NB201Space(channels=4, cells_per_stage=1)

NONE, SKIP, C1, C3, POOL = NB201_OPS
BEST = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_\-. /]+$")


@pytest.fixture(scope="module")
def table_keys() -> list[str]:
    return list(json.loads(TABLE_PATH.read_text()))


@pytest.fixture(scope="module")
def table_identities(table_keys) -> set[str]:
    return {SPACE.identity(SPACE.from_arch_string(key)) for key in table_keys}


def genome(*ops: str) -> Genome:
    return cell_to_genome(ops)


def identity(*ops: str) -> str:
    return SPACE.identity(genome(*ops))


def edges_differing(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


SPECIAL_CELLS = [
    (NONE,) * 6,
    (SKIP,) * 6,
    (C3,) * 6,
    (POOL,) * 6,
    parse_arch(BEST),
    (NONE, C3, C3, C1, C3, POOL),
]


def some_cells(count: int, seed: int = 0) -> list[tuple[str, ...]]:
    rng = random.Random(seed)
    return SPECIAL_CELLS + [tuple(rng.choice(NB201_OPS) for _ in EDGES) for _ in range(count)]


# ---- architecture strings ----------------------------------------------------------------------


def test_the_table_has_every_cell(table_keys):
    assert len(table_keys) == 15625 == len(NB201_OPS) ** len(EDGES)
    assert BEST in table_keys


def test_parse_format_round_trip_on_every_table_key(table_keys):
    cells = set()
    for key in table_keys:
        cell = parse_arch(key)
        assert len(cell) == 6 and all(op in NB201_OPS for op in cell), key
        assert format_arch(cell) == key
        cells.add(cell)
    assert cells == set(itertools.product(NB201_OPS, repeat=6))


@pytest.mark.slow  # the whole 15,625-cell table
def test_identity_over_the_table_gives_the_benchmark_count(table_identities):
    assert len(table_identities) == DISTINCT


def test_parse_arch_reads_the_documented_edge_order():
    assert parse_arch(BEST) == (C3, C3, C3, SKIP, C3, C3)
    assert parse_arch(f"  {BEST}\n") == parse_arch(BEST)
    text = "|none~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|none~2|"
    assert parse_arch(text) == (NONE, SKIP, C1, C3, POOL, NONE)
    assert format_arch((NONE, SKIP, C1, C3, POOL, NONE)) == text


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|", "3 '\\+'-separated nodes"),
        (BEST + "+|none~0|none~1|none~2|none~3|", "3 '\\+'-separated nodes"),
        ("", "3 '\\+'-separated nodes"),
        ("|none~0|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "node 1 needs 1 incoming edges, found 2"),
        ("|none~0|+|none~0|+|none~0|none~1|none~2|", "node 2 needs 2 incoming edges, found 1"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|", "node 3 needs 3 incoming edges, found 2"),
        ("|conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown op 'conv_3x3'"),
        ("|none~0|+|none~0|identity~1|+|none~0|none~1|none~2|", "unknown op 'identity'"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|max_pool_3x3~2|", "unknown op 'max_pool_3x3'"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "edge 'none~1' of node 1 should come from node 0"),
        ("|none~0|+|none~1|none~0|+|none~0|none~1|none~2|", "edge 'none~1' of node 2 should come from node 0"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|none|", "edge 'none' of node 3 should come from node 2"),
        ("|none~0|+|none~0|none~01|+|none~0|none~1|none~2|", "should come from node 1"),
    ],
)
def test_parse_arch_rejects_malformed_strings(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_arch(text)


def test_unknown_op_message_lists_the_ops():
    with pytest.raises(ValueError) as excinfo:
        parse_arch("|sep_conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    assert all(op in str(excinfo.value) for op in NB201_OPS)


# ---- genomes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", some_cells(20))
def test_cell_genome_round_trip(cell):
    g = cell_to_genome(cell)
    assert g.is_valid()
    assert genome_to_cell(g) == cell
    assert genome_to_cell(Genome.from_json(g.to_json())) == cell
    assert SPACE.arch_string(g) == format_arch(cell)
    assert SPACE.from_arch_string(format_arch(cell)) == g
    assert {n.id for n in g.nodes} == {"input", "n1", "n2", "output", "e1_0", "e2_0", "e2_1", "e3_0", "e3_1", "e3_2"}
    assert [g.node_map[f"e{to}_{source}"].op for to, source in EDGES] == list(cell)


def _replace_node(g: Genome, node_id: str, op: str) -> Genome:
    return Genome(tuple(Node(n.id, op) if n.id == node_id else n for n in g.nodes), g.edges)


def test_genome_to_cell_rejects_other_genomes():
    image_genome = create_space("image").sample(random.Random(0))
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell genome"):
        genome_to_cell(image_genome)
    base = genome(*parse_arch(BEST))
    rewired = dataclasses.replace(base, edges=(*base.edges, ("input", "output")))
    assert rewired.is_valid()
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell genome"):
        genome_to_cell(rewired)
    summing_node_changed = _replace_node(base, "n1", "skip_connect")
    assert summing_node_changed.is_valid()
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell genome"):
        genome_to_cell(summing_node_changed)
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell genome"):
        SPACE.identity(image_genome)
    with pytest.raises(ValueError, match="not a NAS-Bench-201 cell genome"):
        SPACE.build(image_genome, (3, 32, 32), 10)


def test_genome_to_cell_rejects_edge_ops_outside_nb201():
    foreign = _replace_node(genome(*parse_arch(BEST)), "e1_0", "identity")
    assert foreign.is_valid()
    with pytest.raises(ValueError):
        genome_to_cell(foreign)


# ---- isomorphism (the benchmark's rule) ------------------------------------------------------------


def test_edges_out_of_an_all_zero_node_do_not_matter():
    # node 1's only input is 'none': edges 2<-1 and 3<-1 carry zeros whatever their op
    a = (NONE, C3, C3, C1, C3, POOL)
    b = (NONE, C3, POOL, C1, SKIP, POOL)
    c = (NONE, C3, NONE, C1, NONE, POOL)
    assert identity(*a) == identity(*b) == identity(*c)
    # they are different graphs: the space's rule, not graph isomorphism, makes them equal
    assert genome(*a).canonical_hash() != genome(*b).canonical_hash()
    # with node 1 fed, the same difference matters
    assert identity(SKIP, *a[1:]) != identity(SKIP, *b[1:])


def test_a_cell_whose_output_edges_are_none_is_the_empty_cell():
    assert identity(C3, C3, C1, NONE, NONE, NONE) == identity(*(NONE,) * 6) == identity(POOL, SKIP, C3, NONE, NONE, NONE)
    assert identity(C3, C3, C1, NONE, NONE, SKIP) != identity(*(NONE,) * 6)


def test_swapping_parallel_edges_in_symmetric_positions_keeps_identity():
    # node 1 is x0 itself (skip): edges 2<-0 and 2<-1 both convolve x0 and are interchangeable
    assert identity(SKIP, C3, C1, C3, C1, POOL) == identity(SKIP, C1, C3, C3, C1, POOL)
    # ... and so are edges 3<-0 and 3<-1
    assert identity(SKIP, POOL, C1, C3, C1, C3) == identity(SKIP, POOL, C1, C1, C3, C3)
    # they are different graphs: the space's rule, not graph isomorphism, makes them equal
    assert genome(SKIP, C3, C1, C3, C1, POOL).canonical_hash() != genome(SKIP, C1, C3, C3, C1, POOL).canonical_hash()
    # not symmetric when node 1 is not x0
    assert identity(C3, C3, C1, C3, C1, POOL) != identity(C3, C1, C3, C3, C1, POOL)
    assert identity(C1, POOL, C1, C3, C1, C3) != identity(C1, POOL, C1, C1, C3, C3)


def test_changing_a_conv_to_avg_pool_changes_identity():
    for i in range(6):
        cell = [C3] * 6
        cell[i] = POOL
        assert identity(*cell) != identity(*(C3,) * 6), i
    assert identity(*parse_arch(BEST)) != identity(C3, C3, C3, SKIP, C3, POOL)
    assert identity(C3, C3, C3, C3, C3, C3) != identity(C1, C3, C3, C3, C3, C3)


def test_identity_is_a_sha256_hex_string_and_deterministic():
    value = identity(*parse_arch(BEST))
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    assert NB201Space(channels=4).identity(genome(*parse_arch(BEST))) == value


# ---- space operations ------------------------------------------------------------------------------


@pytest.mark.slow  # the whole 15,625-cell table
def test_enumerate_gives_one_genome_per_architecture_of_the_table(table_keys, table_identities):
    genomes = SPACE.enumerate()
    assert len(genomes) == DISTINCT
    identities = [SPACE.identity(g) for g in genomes]
    assert len(set(identities)) == DISTINCT
    assert set(identities) == table_identities
    keys = set(table_keys)
    assert all(SPACE.arch_string(g) in keys for g in genomes)
    assert [SPACE.arch_string(g) for g in SMALL.enumerate()] == [SPACE.arch_string(g) for g in genomes]


@pytest.mark.parametrize("cell", some_cells(14, seed=1))
def test_neighbours_are_one_edge_away_with_distinct_new_identities(cell):
    g = genome(*cell)
    own = SPACE.identity(g)
    neighbours = SPACE.neighbours(g)
    assert neighbours, cell
    identities = [SPACE.identity(n) for n in neighbours]
    assert own not in identities
    assert len(set(identities)) == len(identities)
    for n in neighbours:
        assert n.is_valid()
        assert edges_differing(genome_to_cell(n), cell) == 1
    # every architecture reachable by changing one edge is there
    single_changes = {identity(*cell[:i], op, *cell[i + 1 :]) for i in range(6) for op in NB201_OPS if op != cell[i]}
    assert set(identities) == single_changes - {own}
    assert SPACE.neighbours(g) == neighbours  # a fixed order


def test_neighbour_counts():
    assert len(SPACE.neighbours(genome(*(C3,) * 6))) == 24
    assert len(SPACE.neighbours(genome(*parse_arch(BEST)))) <= 24


def test_mutate_always_changes_identity_by_one_edge():
    rng = random.Random(3)
    for cell in some_cells(60, seed=2):
        g = genome(*cell)
        for _ in range(5):
            child = SPACE.mutate(g, rng)
            assert child.is_valid()
            assert SPACE.identity(child) != SPACE.identity(g), cell
            assert edges_differing(genome_to_cell(child), cell) == 1


def test_mutate_is_deterministic_per_seed():
    g = genome(*parse_arch(BEST))
    assert SPACE.mutate(g, random.Random(5)) == SPACE.mutate(g, random.Random(5))
    assert len({SPACE.arch_string(SPACE.mutate(g, random.Random(s))) for s in range(40)}) > 5


def test_crossover_takes_each_edge_from_a_parent():
    rng = random.Random(4)
    a, b = (C3, C1, NONE, SKIP, POOL, C3), (POOL, SKIP, C3, C1, NONE, C1)
    seen = [set() for _ in EDGES]
    for _ in range(40):
        child = genome_to_cell(SPACE.crossover(genome(*a), genome(*b), rng))
        for i, op in enumerate(child):
            assert op in (a[i], b[i])
            seen[i].add(op)
    assert all(s == {a[i], b[i]} for i, s in enumerate(seen)), "each parent gives each edge sometimes"
    for cell in some_cells(10, seed=5):
        child = genome_to_cell(SPACE.crossover(genome(*cell), genome(*cell), rng))
        assert child == cell


def test_sample_is_deterministic_per_seed():
    for seed in range(20):
        assert SPACE.sample(random.Random(seed)) == NB201Space(channels=4).sample(random.Random(seed))
    cells = [genome_to_cell(SPACE.sample(random.Random(seed))) for seed in range(300)]
    assert len(set(cells)) > 250
    for i in range(6):
        assert {c[i] for c in cells} == set(NB201_OPS)
    rng = random.Random(0)
    assert len({SPACE.arch_string(SPACE.sample(rng)) for _ in range(50)}) > 40


@pytest.mark.parametrize("cell", some_cells(10, seed=6))
def test_encode_is_a_one_hot_op_per_edge(cell):
    features = SPACE.encode(genome(*cell))
    assert features.shape == (30,)
    assert np.issubdtype(features.dtype, np.floating)
    assert set(np.unique(features)) <= {0.0, 1.0}
    assert features.sum() == 6
    assert [NB201_OPS[i] for i in features.reshape(6, 5).argmax(axis=1)] == list(cell)


def test_encode_tells_isomorphic_cells_apart():
    a, b = (NONE, C3, C3, C1, C3, POOL), (NONE, C3, POOL, C1, SKIP, POOL)
    assert identity(*a) == identity(*b)
    assert not np.array_equal(SPACE.encode(genome(*a)), SPACE.encode(genome(*b)))


# ---- networks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [parse_arch(BEST), (NONE,) * 6, (POOL, SKIP, C1, NONE, C3, SKIP)])
def test_build_runs_on_cifar_and_digits_shapes(cell):
    torch.manual_seed(0)
    g = genome(*cell)
    for shape in [(3, 32, 32), (1, 8, 8)]:
        net = SMALL.build(g, shape, 10, mean=[0.5] * shape[0], std=[0.25] * shape[0])
        out = net(torch.randn(2, *shape))
        assert out.shape == (2, 10)
        assert torch.isfinite(out).all()
    assert SMALL.build(g, (3, 32, 32), 7)(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_default_build_is_the_benchmark_skeleton():
    net = SPACE.build(genome(*parse_arch(BEST)), (3, 32, 32), 10)
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # 5 cells per stage, 2 reductions, channels 16 -> 32 -> 64
    assert len(net.cells) == 17
    assert net.classifier.in_features == 64


def test_width_and_depth_settings_change_the_network():
    g = genome(*parse_arch(BEST))
    sizes = [count_params(s.build(g, (3, 32, 32), 10)) for s in (SMALL, NB201Space(channels=8, cells_per_stage=1), SPACE)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_build_runs_on_odd_input_sizes():
    net = SMALL.build(genome(*parse_arch(BEST)), (1, 7, 7), 10)
    assert net(torch.randn(2, 1, 7, 7)).shape == (2, 10)


@pytest.mark.parametrize(
    ("space", "shape", "count"),
    [
        (SMALL, (1, 8, 8), 5),
        (SMALL, (3, 32, 32), 3),
        (NB201Space(channels=4, cells_per_stage=2), (3, 16, 16), 3),
        (SPACE, (3, 32, 32), 3),
    ],
)
def test_cost_equals_the_counts_of_the_built_network(space, shape, count):
    rng = random.Random(7)
    cells = [(NONE,) * 6, parse_arch(BEST)] + [tuple(rng.choice(NB201_OPS) for _ in EDGES) for _ in range(count - 2)]
    for cell in cells:
        g = genome(*cell)
        net = space.build(g, shape, 10)
        assert space.cost(g, shape, 10) == {"params": count_params(net), "flops": count_flops(net, shape)}, cell


def test_cost_grows_with_convolutions():
    empty = SMALL.cost(genome(*(NONE,) * 6), (3, 32, 32), 10)
    pools = SMALL.cost(genome(*(POOL,) * 6), (3, 32, 32), 10)
    convs = SMALL.cost(genome(*(C3,) * 6), (3, 32, 32), 10)
    assert empty == pools
    assert convs["params"] > empty["params"] and convs["flops"] > empty["flops"]


# ---- description ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", some_cells(5, seed=8))
def test_describe_has_the_arch_string_and_one_valid_key_per_edge(cell):
    described = SPACE.describe(genome(*cell))
    assert described["arch"] == format_arch(cell)
    edge_keys = [k for k in described if k != "arch"]
    assert len(edge_keys) == 6
    assert [described[k] for k in edge_keys] == list(cell)
    for key in described:
        assert MLFLOW_KEY.match(key), key
    assert all(isinstance(v, str) for v in described.values())


def test_describe_keys_do_not_depend_on_the_cell():
    keys = {tuple(SPACE.describe(genome(*cell))) for cell in some_cells(10, seed=9)}
    assert len(keys) == 1
