"""Genome limits (checked before anything else), reading genome files, and the canonical form's stability and scale."""

from __future__ import annotations

import json
import random

import pytest

from benchmarks.canonical_form import chain as _chain
from benchmarks.canonical_form import parallel
from nas_core.genome import Genome, GenomeError, Node
from nas_core.limits import MAX_EDGES, MAX_GENOME_BYTES, MAX_ID_LENGTH, MAX_JSON_DEPTH, MAX_OPS
from nas_core.spaces import create_space
from tests.nas_core.test_genome import relabel


def _parallel(branches: int, depth: int) -> Genome:
    return parallel(depth)(branches * depth)


# hashes written by the previous implementation (format 1): MLflow tags and checkpoints hold them
PINNED = {
    "image": ("image", 7, "abd1b03c3261e47e73db068e524eb2609c082b3d6a1d0b096a553868dff11802"),
    "sequence": ("sequence", 3, "1e318995bd48d50b9aa1f631bcbe469c6d1486842cf94eb4ba45983227ebf08a"),
    "nb201": ("nb201", 1, "a03fd0a6d0a9132009d53807c61ba6daf0373d8af6f95629198a6100dbed459b"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_hashes_of_earlier_versions_are_unchanged(name):
    space, seed, expected = PINNED[name]
    genome = create_space(space).sample(random.Random(seed))
    assert genome.canonical_hash() == expected
    assert relabel(genome, random.Random(seed)).canonical_hash() == expected


def test_hash_of_symmetric_branches_is_unchanged():
    expected = "728b6a4d5263184a4d2980518550750529b0d1408846f7f0bb98b7ad9d03d011"
    assert _parallel(4, 2).canonical_hash() == expected


@pytest.mark.parametrize("branches, depth", [(MAX_OPS // 2, 2), (MAX_OPS // 4, 4)])
def test_the_most_symmetric_genomes_at_the_limit_hash_by_isomorphism(branches, depth):
    genome = _parallel(branches, depth).validate()
    rng = random.Random(branches)
    assert relabel(genome, rng).canonical_hash() == genome.canonical_hash()
    nodes = tuple(Node(n.id, "maxpool", {"kernel": 3, "stride": 1}) if n.id == "b0_0" else n for n in genome.nodes)
    assert Genome(nodes, genome.edges).canonical_hash() != genome.canonical_hash()


def test_a_chain_at_the_limit_validates_and_distinguishes_its_order():
    genome = _chain(MAX_OPS).validate()
    nodes = tuple(Node(n.id, "maxpool", {"kernel": 3, "stride": 1}) if n.id in ("x0", "x1") else n for n in genome.nodes)
    moved = tuple(Node(n.id, "maxpool", {"kernel": 3, "stride": 1}) if n.id in ("x0", "x2") else n for n in genome.nodes)
    assert Genome(nodes, genome.edges).canonical_hash() != Genome(moved, genome.edges).canonical_hash()


def test_topological_order_is_unchanged_by_the_faster_validation():
    genome = Genome(
        (Node("in", "input"), Node("c", "identity"), Node("a", "identity"), Node("b", "identity"), Node("out", "output")),
        (("in", "b"), ("in", "a"), ("in", "c"), ("a", "out"), ("b", "out"), ("c", "out")),
    )
    assert genome.topological_order() == ["in", "c", "a", "b", "out"]  # ties in declaration order


@pytest.mark.parametrize(
    "data, fragment",
    [
        (json.loads(_chain(MAX_OPS + 1).to_json()), f"at most {MAX_OPS + 2}"),
        ({"nodes": [], "edges": [["a", "b"]] * (MAX_EDGES + 1)}, f"edges; at most {MAX_EDGES:,}"),
        ({"nodes": [{"id": "x" * (MAX_ID_LENGTH + 1), "op": "input"}], "edges": []}, f"at most {MAX_ID_LENGTH}"),
    ],
)
def test_size_limits_are_checked_before_the_structure(data, fragment):
    with pytest.raises(GenomeError, match=fragment):
        Genome.from_dict(data)


def test_validate_checks_the_size_of_genomes_built_in_code():
    with pytest.raises(GenomeError, match="nodes; at most"):
        _chain(MAX_OPS + 1).validate()
    _chain(MAX_OPS).validate()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"nodes": ' + "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1) + ', "edges": []}', "nested too deeply"),
        ('{"nodes": [], "edges": [], "hparams": {"lr": NaN}}', "NaN"),
        ('{"format": Infinity, "nodes": [], "edges": []}', "Infinity"),
        ('{"nodes": [], "edges": [], "hparams": {"lr": 1e999}}', "out of range"),
        ('{"nodes": [], "edges": [], "hparams": {"batch_size": ' + "9" * 5000 + "}}", "5,000 digits"),
        (" " * (MAX_GENOME_BYTES + 1), "the limit is"),
    ],
)
def test_undecodable_json_is_a_genome_error(text, fragment):
    with pytest.raises(GenomeError, match=fragment):
        Genome.from_json(text)


def test_read_checks_size_and_encoding_first(tmp_path):
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_GENOME_BYTES + 1))
    with pytest.raises(GenomeError, match="larger than the limit"):
        Genome.read(big)
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(GenomeError, match="not UTF-8"):
        Genome.read(binary)
    good = tmp_path / "good.json"
    good.write_text(_chain(3).to_json())
    assert Genome.read(good) == _chain(3)
    with pytest.raises(OSError):
        Genome.read(tmp_path / "missing.json")
