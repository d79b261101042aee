"""The NAS-Bench-201 cell space (Dong & Yang, ICLR 2020), exactly: 4 nodes, 6 edges, 5 ops.

A cell is written as the benchmark's architecture string, edges in the order
node1<-0 | node2<-0, node2<-1 | node3<-0, node3<-1, node3<-2::

    |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|

As a genome, each edge is a node holding its op (``e2_1`` is the edge node2<-node1) and the cell's
inner nodes 1 and 2 are ``identity`` nodes summing their incoming edges; node 0 is ``input`` and
node 3 is ``output``. The network around the cell is the benchmark's macro skeleton: a 3x3 stem,
three stages of N cells with C, 2C, 4C channels joined by residual reduction blocks, then BN, ReLU,
global pooling and a linear classifier (:mod:`nas_core.spaces.nb201_net`, imported when a network is built).
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_core.genome import Genome, GenomeError, Node
from nas_core.ops import INPUT_OP, OPS, OUTPUT_OP
from nas_core.spaces.base import SpaceExhausted, register_space

if TYPE_CHECKING:
    from torch import nn

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), in architecture-string order
_NODE_ID = {0: "input", 1: "n1", 2: "n2", 3: "output"}

Cell = tuple[str, ...]  # one op per edge, in EDGES order


def parse_arch(text: str) -> Cell:
    """The six edge ops of a NAS-Bench-201 architecture string; ValueError naming what is wrong."""
    parts = text.strip().split("+")
    if len(parts) != 3:
        raise ValueError(f"'{text}' is not a NAS-Bench-201 string: it needs 3 '+'-separated nodes")
    ops: list[str] = []
    for node, part in enumerate(parts, start=1):
        tokens = [t for t in part.strip().strip("|").split("|")]
        if len(tokens) != node:
            raise ValueError(f"'{text}': node {node} needs {node} incoming edges, found {len(tokens)}")
        for source, token in enumerate(tokens):
            op, _, index = token.partition("~")
            if op not in NB201_OPS:
                raise ValueError(f"'{text}': unknown op '{op}' (ops: {', '.join(NB201_OPS)})")
            if index != str(source):
                raise ValueError(f"'{text}': edge '{token}' of node {node} should come from node {source}")
            ops.append(op)
    return tuple(ops)


def format_arch(cell: Sequence[str]) -> str:
    """The architecture string of six edge ops."""
    ops = iter(cell)
    return "+".join("|" + "|".join(f"{next(ops)}~{source}" for source in range(node)) + "|" for node in (1, 2, 3))


def cell_to_genome(cell: Sequence[str]) -> Genome:
    """The genome of a cell: one node per edge (holding its op) between the cell's summing nodes."""
    nodes = [Node("input", INPUT_OP), Node("n1", "identity"), Node("n2", "identity"), Node("output", OUTPUT_OP)]
    edges: list[tuple[str, str]] = []
    for (to, source), op in zip(EDGES, cell, strict=True):
        edge_id = f"e{to}_{source}"
        nodes.append(Node(edge_id, op))
        edges += [(_NODE_ID[source], edge_id), (edge_id, _NODE_ID[to])]
    return Genome(tuple(nodes), tuple(edges)).validate()


def genome_to_cell(genome: Genome) -> Cell:
    """The six edge ops of a genome made by :func:`cell_to_genome`; ValueError for any other genome."""
    nodes = genome.node_map
    try:
        cell = tuple(nodes[f"e{to}_{source}"].op for to, source in EDGES)
    except KeyError:
        raise ValueError("not a NAS-Bench-201 cell genome (missing edge nodes e1_0 .. e3_2)") from None
    foreign = sorted(set(cell) - set(NB201_OPS))
    if foreign:
        raise ValueError(f"not a NAS-Bench-201 cell genome (ops {', '.join(foreign)} are not NAS-Bench-201 ops)")
    if cell_to_genome(cell) != genome:
        raise ValueError("not a NAS-Bench-201 cell genome (unexpected nodes, ops or wiring)")
    return cell


def unique_string(cell: Sequence[str]) -> str:
    """The benchmark's isomorphism-aware form (``Structure.to_unique_str(consider_zero=True)``).

    A node is the sorted sum of its incoming terms; ``none`` edges and edges from an all-zero node
    are ``#``, ``skip_connect`` passes its input through, other ops wrap it. Over the 15,625 cells
    this gives the benchmark's 6,466 distinct architectures.
    """
    values = {0: "0"}
    ops = iter(cell)
    for node in (1, 2, 3):
        terms = []
        for source in range(node):
            op = next(ops)
            if op == "none" or values[source] == "#":
                terms.append("#")
            elif op == "skip_connect":
                terms.append(values[source])
            else:
                terms.append(f"({values[source]})@{op}")
        values[node] = "+".join(sorted(terms))
    return values[3]


@cache
def _all_cells() -> tuple[Cell, ...]:
    """One cell per distinct architecture, the first in itertools.product order."""
    firsts: dict[str, Cell] = {}
    for cell in itertools.product(NB201_OPS, repeat=len(EDGES)):
        firsts.setdefault(unique_string(cell), cell)
    return tuple(firsts.values())


@cache
def _op_cost(op: str, shape: tuple[int, int, int]) -> tuple[int, int]:
    from nas_core.metrics import count_flops, count_params

    module = OPS[op].factory(shape[0], {})
    return count_params(module), count_flops(module, shape)


@cache
def _skeleton_cost(
    input_shape: tuple[int, ...], num_classes: int, channels: int, cells_per_stage: int
) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Cost of the network whose cells carry nothing (all ``none``), and the cell shape per stage."""
    from nas_core.builder import GenomeCell
    from nas_core.metrics import count_flops, count_params
    from nas_core.spaces.nb201_net import NB201Net

    empty = NB201Net(cell_to_genome(("none",) * len(EDGES)), input_shape, num_classes, None, None, channels, 1)
    shapes = [cell.shapes["input"] for cell in empty.cells if isinstance(cell, GenomeCell)]
    return count_params(empty), count_flops(empty, input_shape), shapes


@register_space("nb201")
@dataclass(frozen=True)
class NB201Space:
    """Every cell of NAS-Bench-201; identities follow the benchmark's isomorphism rule."""

    channels: int = 16
    cells_per_stage: int = 5
    name: str = "nb201"

    def sample(self, rng: random.Random) -> Genome:
        return cell_to_genome(tuple(rng.choice(NB201_OPS) for _ in EDGES))

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """One edge gets another op; the result is always another architecture."""
        cell, own = genome_to_cell(genome), self.identity(genome)
        options = [c for c in self._single_changes(cell) if self._identity(c) != own]
        if not options:
            raise SpaceExhausted("no single-edge change gives another architecture")
        return cell_to_genome(rng.choice(options))

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        """Each edge takes its op from one parent or the other."""
        pairs = zip(genome_to_cell(a), genome_to_cell(b), strict=True)
        return cell_to_genome(tuple(rng.choice(pair) for pair in pairs))

    def neighbours(self, genome: Genome) -> list[Genome]:
        """The (up to 24) cells one edge op away, one per distinct architecture."""
        cell, own = genome_to_cell(genome), self.identity(genome)
        unique: dict[str, Cell] = {}
        for change in self._single_changes(cell):
            key = self._identity(change)
            if key != own:
                unique.setdefault(key, change)
        return [cell_to_genome(c) for c in unique.values()]

    @staticmethod
    def _single_changes(cell: Cell) -> list[Cell]:
        return [cell[:i] + (op,) + cell[i + 1 :] for i in range(len(cell)) for op in NB201_OPS if op != cell[i]]

    @staticmethod
    def _identity(cell: Cell) -> str:
        return hashlib.sha256(unique_string(cell).encode()).hexdigest()

    def check(self, genome: Genome) -> None:
        """Raise GenomeError unless the genome is a NAS-Bench-201 cell (as ``cell_to_genome`` writes it)."""
        try:
            genome_to_cell(genome)
        except ValueError as exc:
            raise GenomeError(f"the nb201 space takes only its cells: {exc}") from None

    def identity(self, genome: Genome) -> str:
        return self._identity(genome_to_cell(genome))

    def encode(self, genome: Genome) -> np.ndarray:
        """One-hot op per edge (30 values)."""
        features = np.zeros((len(EDGES), len(NB201_OPS)), dtype=np.float32)
        for i, op in enumerate(genome_to_cell(genome)):
            features[i, NB201_OPS.index(op)] = 1.0
        return features.ravel()

    def enumerate(self) -> list[Genome]:
        """One genome per distinct architecture (6,466)."""
        return [cell_to_genome(c) for c in _all_cells()]

    def arch_string(self, genome: Genome) -> str:
        """The key of this cell in NAS-Bench-201 tables."""
        return format_arch(genome_to_cell(genome))

    def from_arch_string(self, text: str) -> Genome:
        return cell_to_genome(parse_arch(text))

    def build(self, genome, input_shape, num_classes, mean=None, std=None) -> nn.Module:
        from nas_core.spaces.nb201_net import NB201Net

        genome_to_cell(genome)  # only cells of this space
        return NB201Net(genome, input_shape, num_classes, mean, std, self.channels, self.cells_per_stage)

    def cost(self, genome: Genome, input_shape: Sequence[int], num_classes: int) -> dict[str, int]:
        """Parameters and FLOPs of the built network, from cached per-op counts (no full build)."""
        skeleton_params, skeleton_flops, stage_shapes = _skeleton_cost(
            tuple(input_shape), num_classes, self.channels, self.cells_per_stage
        )
        params, flops = skeleton_params, skeleton_flops
        for op in genome_to_cell(genome):
            for shape in stage_shapes:
                op_params, op_flops = _op_cost(op, shape)
                params += self.cells_per_stage * op_params
                flops += self.cells_per_stage * op_flops
        return {"params": params, "flops": flops}

    def describe(self, genome: Genome) -> dict[str, Any]:
        cell = genome_to_cell(genome)
        return {"arch": format_arch(cell), **{f"edge.{to}-{source}": op for (to, source), op in zip(EDGES, cell, strict=True)}}
