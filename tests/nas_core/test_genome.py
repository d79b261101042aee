"""Genome: JSON round trip, validation errors and the isomorphism-aware canonical hash."""

from __future__ import annotations

import itertools
import json
import random
import time

import pytest

from nas_core.genome import Genome, GenomeError, Node, canonical_form
from nas_core.spaces import create_space

CONV = {"kernel": 3, "channels": 8, "stride": 1}
POOL = {"kernel": 3, "stride": 1}


def make(nodes, edges) -> Genome:
    """Build a genome from ``(id, op[, settings])`` tuples and ``(src, dst)`` pairs."""
    built = [Node(n[0], n[1], dict(n[2]) if len(n) > 2 else {}) for n in nodes]
    return Genome(tuple(built), tuple(tuple(e) for e in edges))


def chain_genome() -> Genome:
    """input -> a(conv) -> b(maxpool) -> output plus a skip input -> b."""
    return make(
        [("in", "input"), ("a", "conv", CONV), ("b", "maxpool", POOL), ("out", "output")],
        [("in", "a"), ("a", "b"), ("in", "b"), ("b", "out")],
    )


def relabel(genome: Genome, rng: random.Random) -> Genome:
    """An isomorphic copy: fresh ids, nodes and edges listed in a shuffled order, settings keys reordered."""
    ids = [n.id for n in genome.nodes]
    fresh = [f"node_{i}" for i in range(len(ids))]
    rng.shuffle(fresh)
    rename = dict(zip(ids, fresh, strict=True))
    nodes = []
    for n in genome.nodes:
        items = list(n.settings.items())
        rng.shuffle(items)
        nodes.append(Node(rename[n.id], n.op, dict(items)))
    rng.shuffle(nodes)
    edges = [(rename[s], rename[d]) for s, d in genome.edges]
    rng.shuffle(edges)
    return Genome(tuple(nodes), tuple(edges))


# ---- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("indent", [None, 2])
def test_json_round_trip_gives_equal_genome_and_hash(indent):
    genome = chain_genome().validate()
    text = genome.to_json(indent=indent)
    back = Genome.from_json(text)
    assert back == genome
    assert back.canonical_hash() == genome.canonical_hash()
    assert back.to_json(indent=indent) == text
    assert json.loads(text)["format"] == 1


def test_json_round_trip_of_space_samples():
    space = create_space("image")
    rng = random.Random(7)
    for _ in range(50):
        genome = space.sample(rng)
        back = Genome.from_json(genome.to_json())
        assert back == genome
        assert back.validate().canonical_hash() == genome.canonical_hash()


def test_from_json_accepts_node_without_settings():
    text = json.dumps(
        {
            "nodes": [{"id": "i", "op": "input"}, {"id": "x", "op": "identity"}, {"id": "o", "op": "output"}],
            "edges": [["i", "x"], ["x", "o"]],
        }
    )
    genome = Genome.from_json(text).validate()
    assert genome.node_map["x"].settings == {}
    assert genome.edges == (("i", "x"), ("x", "o"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('{"nodes": [', "not valid JSON"),
        ("", "not valid JSON"),
        ("{'nodes': [], 'edges': []}", "not valid JSON"),
        ("[]", "must be an object"),
        ('"genome"', "must be an object"),
        ('{"nodes": [], "edges": [], "extra": 1}', "unknown keys: extra"),
        ('{"nodes": {}, "edges": []}', "list 'nodes'"),
        ('{"nodes": []}', "list 'edges'"),
        ('{"nodes": [{"id": "a"}], "edges": []}', "node #0"),
        ('{"nodes": [{"id": 1, "op": "input"}], "edges": []}', "node #0"),
        ('{"nodes": [{"id": "a", "op": "conv", "settings": [3]}], "edges": []}', "'settings' must be an object"),
        ('{"nodes": [], "edges": [["a", "b", "c"]]}', "edge #0"),
        ('{"nodes": [], "edges": [["a", 2]]}', "edge #0"),
    ],
)
def test_malformed_json_raises_genome_error(text, fragment):
    with pytest.raises(GenomeError, match=fragment):
        Genome.from_json(text)


def test_genome_error_is_a_value_error():
    with pytest.raises(ValueError):
        Genome.from_json("not json")


# ---- validation ---------------------------------------------------------------------------


def test_valid_genome_validates_and_returns_itself():
    genome = chain_genome()
    assert genome.validate() is genome
    assert genome.is_valid()
    assert genome.input_id == "in"
    assert genome.output_id == "out"


def test_minimal_genome_input_to_output_is_valid():
    assert make([("i", "input"), ("o", "output")], [("i", "o")]).is_valid()


INVALID = {
    "cycle": (
        [("i", "input"), ("a", "identity"), ("b", "identity"), ("o", "output")],
        [("i", "a"), ("a", "b"), ("b", "a"), ("b", "o")],
        r"cycle through nodes a, b",
    ),
    "unknown_op": (
        [("i", "input"), ("a", "fancyconv", {}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': unknown op 'fancyconv'",
    ),
    "unreachable": (
        [("i", "input"), ("a", "identity"), ("z", "conv", CONV), ("o", "output")],
        [("i", "a"), ("a", "o"), ("z", "o")],
        r"node 'z' is unreachable from the input",
    ),
    "dead_end": (
        [("i", "input"), ("a", "identity"), ("z", "conv", CONV), ("o", "output")],
        [("i", "a"), ("a", "o"), ("i", "z")],
        r"node 'z' is a dead end",
    ),
    "isolated_output": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a")],
        r"node 'a' is a dead end|node 'o' is unreachable",
    ),
    "conv_kernel_4": (
        [("i", "input"), ("a", "conv", {**CONV, "kernel": 4}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*kernel=4",
    ),
    "sepconv_kernel_1": (
        [("i", "input"), ("a", "sepconv", {**CONV, "kernel": 1}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*kernel=1",
    ),
    "stride_3": (
        [("i", "input"), ("a", "maxpool", {"kernel": 3, "stride": 3}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*stride=3",
    ),
    "channels_0": (
        [("i", "input"), ("a", "conv", {**CONV, "channels": 0}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*channels=0",
    ),
    "channels_too_many": (
        [("i", "input"), ("a", "conv", {**CONV, "channels": 1025}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*channels=1025",
    ),
    "channels_float": (
        [("i", "input"), ("a", "conv", {**CONV, "channels": 8.0}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*channels=8\.0",
    ),
    "channels_bool": (
        [("i", "input"), ("a", "conv", {**CONV, "channels": True}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*channels=True",
    ),
    "missing_setting": (
        [("i", "input"), ("a", "conv", {"kernel": 3, "channels": 8}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*missing settings: stride",
    ),
    "unknown_setting": (
        [("i", "input"), ("a", "conv", {**CONV, "dilation": 2}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*unknown settings: dilation",
    ),
    "settings_on_identity": (
        [("i", "input"), ("a", "identity", {"channels": 8}), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"node 'a': .*unknown settings: channels",
    ),
    "duplicate_ids": (
        [("i", "input"), ("a", "identity"), ("a", "conv", CONV), ("o", "output")],
        [("i", "a"), ("a", "o")],
        r"duplicate node ids: a",
    ),
    "edge_to_unknown": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("a", "o"), ("a", "ghost")],
        r"edge a->ghost refers to unknown node 'ghost'",
    ),
    "edge_from_unknown": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("a", "o"), ("ghost", "a")],
        r"unknown node 'ghost'",
    ),
    "self_loop": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("a", "a"), ("a", "o")],
        r"edge a->a is a self-loop",
    ),
    "duplicate_edge": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("a", "o"), ("i", "a")],
        r"edge i->a appears twice",
    ),
    "no_input": (
        [("a", "identity"), ("o", "output")],
        [("a", "o")],
        r"exactly one 'input' node, found 0",
    ),
    "two_inputs": (
        [("i", "input"), ("j", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("j", "a"), ("a", "o")],
        r"exactly one 'input' node, found 2",
    ),
    "no_output": (
        [("i", "input"), ("a", "identity")],
        [("i", "a")],
        r"exactly one 'output' node, found 0",
    ),
    "two_outputs": (
        [("i", "input"), ("a", "identity"), ("o", "output"), ("p", "output")],
        [("i", "a"), ("a", "o"), ("a", "p")],
        r"exactly one 'output' node, found 2",
    ),
    "input_with_incoming_edge": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("a", "i"), ("a", "o")],
        r"input node 'i' cannot have incoming edges",
    ),
    "output_with_outgoing_edge": (
        [("i", "input"), ("a", "identity"), ("o", "output")],
        [("i", "a"), ("a", "o"), ("o", "a")],
        r"output node 'o' cannot have outgoing edges",
    ),
    "settings_on_input": (
        [("i", "input", {"channels": 3}), ("o", "output")],
        [("i", "o")],
        r"node 'i': .*unknown settings: channels",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_validate_names_the_problem(case):
    nodes, edges, message = INVALID[case]
    genome = make(nodes, edges)
    with pytest.raises(GenomeError, match=message):
        genome.validate()
    assert not genome.is_valid()


@pytest.mark.parametrize("case", ["cycle", "unknown_op", "duplicate_edge", "two_inputs"])
def test_from_json_accepts_structure_but_validate_rejects(case):
    nodes, edges, message = INVALID[case]
    genome = Genome.from_json(make(nodes, edges).to_json())
    with pytest.raises(GenomeError, match=message):
        genome.validate()


@pytest.mark.parametrize("settings", [{**CONV, "kernel": 3.0}, {**CONV, "stride": 2.0}])
def test_validate_rejects_float_kernel_or_stride(settings):
    genome = make([("i", "input"), ("a", "conv", settings), ("o", "output")], [("i", "a"), ("a", "o")])
    with pytest.raises(GenomeError):
        genome.validate()


def test_topological_order_is_stable_and_respects_edges():
    genome = make(
        [("o", "output"), ("b", "identity"), ("a", "identity"), ("i", "input")],
        [("i", "a"), ("i", "b"), ("a", "b"), ("b", "o")],
    )
    order = genome.topological_order()
    assert order == ["i", "a", "b", "o"]
    assert all(order.index(s) < order.index(d) for s, d in genome.edges)


# ---- canonical hash -----------------------------------------------------------------------


def test_hash_is_sha256_hex():
    digest = chain_genome().canonical_hash()
    assert len(digest) == 64
    int(digest, 16)


def test_hash_ignores_node_ids_and_listing_order():
    genome = chain_genome()
    rng = random.Random(0)
    for _ in range(10):
        copy = relabel(genome, rng)
        assert copy.is_valid()
        assert copy.canonical_hash() == genome.canonical_hash()


def test_hash_equal_for_isomorphic_space_genomes():
    space = create_space("image", max_nodes=8, skip_prob=0.5)
    rng = random.Random(1)
    for _ in range(100):
        genome = space.sample(rng)
        copy = relabel(genome, rng)
        assert not set(copy.node_map) & {n.id for n in genome.nodes}
        assert copy.canonical_hash() == genome.canonical_hash()


@pytest.mark.parametrize(
    "change",
    [
        ("a", "sepconv", CONV),
        ("a", "conv", {**CONV, "kernel": 5}),
        ("a", "conv", {**CONV, "channels": 16}),
        ("a", "conv", {**CONV, "stride": 2}),
        ("b", "avgpool", POOL),
        ("b", "maxpool", {**POOL, "stride": 2}),
        ("b", "identity", {}),
    ],
)
def test_hash_changes_with_one_op_or_setting(change):
    base = chain_genome()
    node_id, op, settings = change
    nodes = tuple(Node(n.id, op, dict(settings)) if n.id == node_id else n for n in base.nodes)
    changed = Genome(nodes, base.edges).validate()
    assert changed.canonical_hash() != base.canonical_hash()


def test_hash_changes_with_wiring():
    base = chain_genome()
    with_skip = Genome(base.nodes, base.edges + (("a", "out"),)).validate()
    without_skip = Genome(base.nodes, tuple(e for e in base.edges if e != ("in", "b"))).validate()
    hashes = {base.canonical_hash(), with_skip.canonical_hash(), without_skip.canonical_hash()}
    assert len(hashes) == 3


def test_hash_depends_on_op_order_in_a_chain():
    first = make(
        [("i", "input"), ("a", "conv", CONV), ("b", "maxpool", POOL), ("o", "output")],
        [("i", "a"), ("a", "b"), ("b", "o")],
    )
    second = make(
        [("i", "input"), ("a", "conv", CONV), ("b", "maxpool", POOL), ("o", "output")],
        [("i", "b"), ("b", "a"), ("a", "o")],
    )
    assert first.is_valid() and second.is_valid()
    assert first.canonical_hash() != second.canonical_hash()


def test_hash_distinguishes_shared_node_from_duplicated_nodes():
    g1 = make(
        [("in", "input"), ("X", "conv", CONV), ("P", "identity"), ("Q", "identity"), ("out", "output")],
        [("in", "X"), ("X", "P"), ("X", "Q"), ("P", "out"), ("Q", "out")],
    ).validate()
    g2 = make(
        [("in", "input"), ("X1", "conv", CONV), ("X2", "conv", CONV), ("P", "identity"), ("Q", "identity"), ("out", "output")],
        [("in", "X1"), ("in", "X2"), ("X1", "P"), ("X2", "Q"), ("P", "out"), ("Q", "out")],
    ).validate()
    assert g1.canonical_hash() != g2.canonical_hash()


def _bipartite(pairs) -> Genome:
    """input -> a0..a3 (conv) -> b0..b3 (identity, wired by ``pairs``) -> output."""
    nodes = [("in", "input"), ("out", "output")]
    nodes += [(f"a{i}", "conv", CONV) for i in range(4)] + [(f"b{i}", "identity") for i in range(4)]
    edges = [("in", f"a{i}") for i in range(4)] + [(f"b{i}", "out") for i in range(4)]
    edges += [(f"a{i}", f"b{j}") for i, j in pairs]
    return make(nodes, edges).validate()


def test_hash_distinguishes_graphs_colour_refinement_cannot():
    # every a has two b successors and every b two a predecessors in both: one 8-cycle vs two 4-cycles
    cycle8 = _bipartite([(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 0)])
    two_cycles4 = _bipartite([(0, 0), (0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)])
    assert cycle8.canonical_hash() != two_cycles4.canonical_hash()
    rng = random.Random(3)
    for _ in range(5):
        assert relabel(cycle8, rng).canonical_hash() == cycle8.canonical_hash()
        assert relabel(two_cycles4, rng).canonical_hash() == two_cycles4.canonical_hash()


def _parallel(branches: int, depth: int) -> Genome:
    nodes, edges = [("in", "input"), ("out", "output")], []
    for b in range(branches):
        previous = "in"
        for d in range(depth):
            node_id = f"b{b}_{d}"
            nodes.append((node_id, "conv", CONV))
            edges.append((previous, node_id))
            previous = node_id
        edges.append((previous, "out"))
    return make(nodes, edges).validate()


@pytest.mark.parametrize("branches, depth", [(4, 1), (4, 2), (6, 1)])
def test_symmetric_parallel_branches_hash_equal_and_fast(branches, depth):
    genome = _parallel(branches, depth)
    rng = random.Random(branches * 10 + depth)
    start = time.perf_counter()
    expected = genome.canonical_hash()
    hashes = {relabel(genome, rng).canonical_hash() for _ in range(20)}
    elapsed = time.perf_counter() - start
    assert hashes == {expected}
    assert elapsed < 2.0, f"21 hashes of a {branches}x{depth} symmetric genome took {elapsed:.2f}s"
    # a branch with a different op breaks the symmetry and the hash
    nodes = tuple(Node(n.id, "sepconv", CONV) if n.id == "b0_0" else n for n in genome.nodes)
    assert Genome(nodes, genome.edges).canonical_hash() != expected


def _isomorphic_brute_force(g1: Genome, g2: Genome) -> bool:
    if len(g1.nodes) != len(g2.nodes) or len(g1.edges) != len(g2.edges):
        return False

    def label(n: Node):
        return n.op, tuple(sorted(n.settings.items()))

    ids1 = [n.id for n in g1.nodes]
    map2 = g2.node_map
    edges2 = set(g2.edges)
    for perm in itertools.permutations([n.id for n in g2.nodes]):
        m = dict(zip(ids1, perm, strict=True))
        if all(label(n) == label(map2[m[n.id]]) for n in g1.nodes) and all((m[s], m[d]) in edges2 for s, d in g1.edges):
            return True
    return False


def _random_small_dag(rng: random.Random) -> Genome:
    k = rng.randint(2, 4)
    ids = ["in"] + [f"x{i}" for i in range(k)] + ["out"]
    nodes = [("in", "input"), ("out", "output")]
    nodes += [(f"x{i}", "identity") if rng.random() < 0.6 else (f"x{i}", "maxpool", POOL) for i in range(k)]
    edges = {(ids[i], ids[j]) for j in range(len(ids)) for i in range(j) if rng.random() < 0.4}
    for j in range(1, len(ids)):  # everything reachable from the input ...
        if not any(d == ids[j] for _, d in edges):
            edges.add((ids[rng.randrange(j)], ids[j]))
    for i in range(len(ids) - 1):  # ... and leading to the output
        if not any(s == ids[i] for s, _ in edges):
            edges.add((ids[i], ids[rng.randrange(i + 1, len(ids))]))
    return make(nodes, sorted(edges)).validate()


def test_hash_equality_matches_brute_force_isomorphism():
    rng = random.Random(2024)
    genomes = [_random_small_dag(rng) for _ in range(150)]
    hashes = [g.canonical_hash() for g in genomes]
    compared = collisions = 0
    for a, b in itertools.combinations(range(len(genomes)), 2):
        ga, gb = genomes[a], genomes[b]
        if (len(ga.nodes), len(ga.edges)) != (len(gb.nodes), len(gb.edges)):
            assert hashes[a] != hashes[b]
            continue
        compared += 1
        same = _isomorphic_brute_force(ga, gb)
        collisions += same
        assert (hashes[a] == hashes[b]) == same, f"{ga.to_json()} vs {gb.to_json()}"
    # the sample must contain both isomorphic and non-isomorphic pairs of equal size to mean anything
    assert compared > 100
    assert 0 < collisions < compared


def test_canonical_form_is_independent_of_ids():
    genome = chain_genome()
    form = canonical_form(genome)
    renamed = Genome(
        tuple(Node(f"z{n.id}", n.op, n.settings) for n in genome.nodes), tuple((f"z{s}", f"z{d}") for s, d in genome.edges)
    )
    assert canonical_form(renamed) == form
    assert canonical_form(relabel(genome, random.Random(5))) == form
    assert "zin" not in form and '"a"' not in form


def test_unsupported_format_version_is_rejected():
    data = make([("i", "input"), ("o", "output")], [("i", "o")]).to_dict()
    data["format"] = 99
    with pytest.raises(GenomeError, match="format 99"):
        Genome.from_dict(data)
