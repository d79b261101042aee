"""A search space for image classifiers where both the ops and the wiring vary.

A genome has hidden nodes ``n0..n{k-1}`` numbered in topological order between ``input`` and
``output``. Every hidden node has a predecessor earlier and a successor later in that order, so
any extra forward edge (a skip connection) keeps the graph valid.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from nas_core.genome import Genome, GenomeError, Node
from nas_core.ops import INPUT_OP, OPS, OUTPUT_OP
from nas_core.spaces.base import SpaceExhausted, register_space

if TYPE_CHECKING:
    from torch import nn

INPUT, OUTPUT = "input", "output"
_MAX_TRIES = 100


@register_space("image")
@dataclass(frozen=True)
class ImageSpace:
    """Cells of ``min_nodes..max_nodes`` ops, skip connections added with ``skip_prob``."""

    min_nodes: int = 2
    max_nodes: int = 6
    channels: tuple[int, ...] = (16, 32, 64)
    ops: tuple[str, ...] = ("conv", "sepconv", "maxpool", "avgpool", "identity")
    kernels: tuple[int, ...] = (1, 3, 5)
    reduce_prob: float = 0.2
    skip_prob: float = 0.25
    name: str = "image"

    def __post_init__(self) -> None:
        if not 1 <= self.min_nodes <= self.max_nodes:
            raise ValueError(f"need 1 <= min_nodes <= max_nodes, got {self.min_nodes}, {self.max_nodes}")
        unknown = [op for op in self.ops if op not in OPS or op in (INPUT_OP, OUTPUT_OP)]
        if unknown or not self.ops:
            raise ValueError(f"image space: unknown ops {unknown}")
        if not self.channels:
            raise ValueError("image space: channels must not be empty")

    # ---- building blocks ---------------------------------------------------------------
    def _choices(self, op: str, key: str) -> list[Any]:
        """The values this space uses for one setting of ``op``."""
        allowed = OPS[op].settings[key]
        if key == "channels":
            return list(self.channels)
        if key == "kernel":
            return [k for k in allowed if k in self.kernels] or list(allowed)
        return list(allowed)

    def _random_settings(self, op: str, rng: random.Random) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        for key in OPS[op].settings:
            if key == "stride":
                settings[key] = 2 if rng.random() < self.reduce_prob else 1
            else:
                settings[key] = rng.choice(self._choices(op, key))
        return settings

    def _random_node(self, node_id: str, rng: random.Random) -> Node:
        op = rng.choice(self.ops)
        return Node(node_id, op, self._random_settings(op, rng))

    @staticmethod
    def _assemble(hidden: list[Node], edges: set[tuple[str, str]]) -> Genome:
        """Renumber hidden nodes n0.. in the given order and repair missing chain links."""
        ids = [INPUT] + [n.id for n in hidden] + [OUTPUT]
        rename = {old: new for old, new in zip(ids, [INPUT] + [f"n{i}" for i in range(len(hidden))] + [OUTPUT], strict=False)}
        position = {node_id: i for i, node_id in enumerate(ids)}
        kept = {(s, d) for s, d in edges if s in position and d in position and position[s] < position[d]}
        for i, node_id in enumerate(ids):
            if i > 0 and not any(d == node_id for _, d in kept):
                kept.add((ids[i - 1], node_id))
            if i < len(ids) - 1 and not any(s == node_id for s, _ in kept):
                kept.add((node_id, ids[i + 1]))
        nodes = [Node(INPUT, INPUT_OP)] + [Node(rename[n.id], n.op, n.settings) for n in hidden]
        nodes.append(Node(OUTPUT, OUTPUT_OP))
        ordered = sorted(kept, key=lambda e: (position[e[1]], position[e[0]]))
        return Genome(tuple(nodes), tuple((rename[s], rename[d]) for s, d in ordered)).validate()

    @staticmethod
    def _split(genome: Genome) -> tuple[list[Node], set[tuple[str, str]]]:
        """Hidden nodes in topological order and the edges, with input/output renamed."""
        genome.validate()
        nodes = genome.node_map
        rename = {genome.input_id: INPUT, genome.output_id: OUTPUT}
        hidden = [nodes[i] for i in genome.topological_order() if i not in rename]
        tag = {n.id: f"h{i}" for i, n in enumerate(hidden)}
        rename.update(tag)
        hidden = [Node(tag[n.id], n.op, n.settings) for n in hidden]
        return hidden, {(rename[s], rename[d]) for s, d in genome.edges}

    # ---- the space's operations ----------------------------------------------------------
    def sample(self, rng: random.Random) -> Genome:
        """A random genome: a chain of ops plus random skip connections."""
        k = rng.randint(self.min_nodes, self.max_nodes)
        hidden = [self._random_node(f"h{i}", rng) for i in range(k)]
        ids = [INPUT] + [n.id for n in hidden] + [OUTPUT]
        edges = {(ids[i], ids[i + 1]) for i in range(len(ids) - 1)}
        for j in range(2, len(ids)):
            for i in range(j - 1):
                if (i, j) != (0, len(ids) - 1) and rng.random() < self.skip_prob:
                    edges.add((ids[i], ids[j]))
        return self._assemble(hidden, edges)

    def mutate(self, genome: Genome, rng: random.Random) -> Genome:
        """One random change (op, setting, edge added/removed, node inserted/removed); never a no-op."""
        parent_hash = genome.canonical_hash()
        for _ in range(_MAX_TRIES):
            hidden, edges = self._split(genome)
            kind = rng.choice(["op", "setting", "add_edge", "remove_edge", "insert_node", "remove_node"])
            child = getattr(self, f"_mutate_{kind}")(hidden, edges, rng)
            if child is not None and child.canonical_hash() != parent_hash:
                return child
        for _ in range(_MAX_TRIES):  # tiny spaces: any other genome will do
            child = self.sample(rng)
            if child.canonical_hash() != parent_hash:
                return child
        raise SpaceExhausted("the search space has no genome other than this one")

    def _mutate_op(self, hidden, edges, rng):
        if not hidden:
            return None
        i = rng.randrange(len(hidden))
        hidden[i] = self._random_node(hidden[i].id, rng)
        return self._assemble(hidden, edges)

    def _mutate_setting(self, hidden, edges, rng):
        tunable = [i for i, n in enumerate(hidden) if OPS[n.op].settings]
        if not tunable:
            return None
        i = rng.choice(tunable)
        key = rng.choice(sorted(OPS[hidden[i].op].settings))
        others = [v for v in self._choices(hidden[i].op, key) if v != hidden[i].settings[key]]
        if not others:
            return None
        hidden[i] = Node(hidden[i].id, hidden[i].op, {**hidden[i].settings, key: rng.choice(others)})
        return self._assemble(hidden, edges)

    def _mutate_add_edge(self, hidden, edges, rng):
        ids = [INPUT] + [n.id for n in hidden] + [OUTPUT]
        free = [(ids[i], ids[j]) for j in range(len(ids)) for i in range(j) if (ids[i], ids[j]) not in edges]
        free = [e for e in free if e != (INPUT, OUTPUT)]
        if not free:
            return None
        return self._assemble(hidden, edges | {rng.choice(free)})

    def _mutate_remove_edge(self, hidden, edges, rng):
        candidate = rng.choice(sorted(edges))
        rest = edges - {candidate}
        # removal must not need repairing, or it would just be undone
        if not any(d == candidate[1] for _, d in rest) or not any(s == candidate[0] for s, _ in rest):
            return None
        return self._assemble(hidden, rest)

    def _mutate_insert_node(self, hidden, edges, rng):
        if len(hidden) >= self.max_nodes:
            return None
        src, dst = rng.choice(sorted(edges))
        ids = [INPUT] + [n.id for n in hidden] + [OUTPUT]
        new = self._random_node("new", rng)
        at = ids.index(src)  # the new node goes right after src in the order
        hidden.insert(at, new)
        return self._assemble(hidden, (edges - {(src, dst)}) | {(src, "new"), ("new", dst)})

    def _mutate_remove_node(self, hidden, edges, rng):
        if len(hidden) <= self.min_nodes:
            return None
        victim = rng.choice(hidden).id
        preds = [s for s, d in edges if d == victim]
        succs = [d for s, d in edges if s == victim]
        rest = {e for e in edges if victim not in e} | {(p, s) for p in preds for s in succs}
        rest.discard((INPUT, OUTPUT))
        return self._assemble([n for n in hidden if n.id != victim], rest)

    def crossover(self, a: Genome, b: Genome, rng: random.Random) -> Genome:
        """One-point crossover on the topological order: a prefix of ``a`` joined to a suffix of ``b``."""
        for _ in range(_MAX_TRIES):
            hidden_a, edges_a = self._split(a)
            hidden_b, edges_b = self._split(b)
            i = rng.randint(0, len(hidden_a))
            j = rng.randint(0, len(hidden_b))
            if not self.min_nodes <= i + len(hidden_b) - j <= self.max_nodes:
                continue
            head = [Node(f"a{n.id}", n.op, n.settings) for n in hidden_a[:i]]
            tail = [Node(f"b{n.id}", n.op, n.settings) for n in hidden_b[j:]]
            head_ids = {INPUT} | {n.id[1:] for n in head}
            tail_ids = {OUTPUT} | {n.id[1:] for n in tail}
            edges = {(_tag("a", s), _tag("a", d)) for s, d in edges_a if s in head_ids and d in head_ids}
            edges |= {(_tag("b", s), _tag("b", d)) for s, d in edges_b if s in tail_ids and d in tail_ids}
            edges.discard((INPUT, OUTPUT))
            return self._assemble(head + tail, edges)
        return self.mutate(a, rng)

    def neighbours(self, genome: Genome) -> list[Genome]:
        """Every genome one op, setting or edge change (or one node removal) away, deduplicated."""
        hidden, edges = self._split(genome)
        ids = [INPUT] + [n.id for n in hidden] + [OUTPUT]
        children: list[Genome | None] = []
        for i, node in enumerate(hidden):
            for op in self.ops:
                if op != node.op:
                    settings = {}
                    for key in OPS[op].settings:  # keep the node's values where the new op allows them
                        choices = self._choices(op, key)
                        kept = node.settings.get(key, 1 if key == "stride" else None)
                        settings[key] = kept if kept in choices else choices[0]
                    children.append(self._assemble(_replace(hidden, i, Node(node.id, op, settings)), edges))
            for key in sorted(node.settings):
                for value in self._choices(node.op, key):
                    if value != node.settings[key]:
                        changed = Node(node.id, node.op, {**node.settings, key: value})
                        children.append(self._assemble(_replace(hidden, i, changed), edges))
        for j in range(len(ids)):
            for i in range(j):
                edge = (ids[i], ids[j])
                if edge in edges:
                    children.append(self._mutate_remove_edge(list(hidden), edges, _Fixed(edge)))
                elif edge != (INPUT, OUTPUT):
                    children.append(self._assemble(list(hidden), edges | {edge}))
        if len(hidden) > self.min_nodes:
            for node in hidden:
                children.append(self._mutate_remove_node(list(hidden), edges, _Fixed(node)))
        own = self.identity(genome)
        unique: dict[str, Genome] = {}
        for child in children:
            if child is not None and self.identity(child) != own:
                unique.setdefault(self.identity(child), child)
        return list(unique.values())

    def check(self, genome: Genome) -> None:
        """Raise GenomeError unless the genome has ``min_nodes..max_nodes`` ops, all of them this space's."""
        ops = [n.op for n in genome.nodes if n.op not in (INPUT_OP, OUTPUT_OP)]
        if not self.min_nodes <= len(ops) <= self.max_nodes:
            sizes = f"{self.min_nodes} to {self.max_nodes}"
            raise GenomeError(f"it has {len(ops)} ops; the {self.name} space takes {sizes} (--min-nodes, --max-nodes)")
        foreign = sorted(set(ops) - set(self.ops))
        if foreign:
            raise GenomeError(f"the {self.name} space has no op {', '.join(foreign)} (its ops: {', '.join(self.ops)})")

    def identity(self, genome: Genome) -> str:
        return genome.canonical_hash()

    def encode(self, genome: Genome) -> np.ndarray:
        """Per op slot: one-hot op, channels, kernel, stride; then the upper-triangular adjacency."""
        hidden, edges = self._split(genome)
        slot = len(self.ops) + 3
        features = np.zeros(self.max_nodes * slot + (self.max_nodes + 2) ** 2, dtype=np.float32)
        for i, node in enumerate(hidden[: self.max_nodes]):
            base = i * slot
            if node.op in self.ops:
                features[base + self.ops.index(node.op)] = 1.0
            features[base + len(self.ops)] = node.settings.get("channels", 0) / max(self.channels)
            features[base + len(self.ops) + 1] = node.settings.get("kernel", 0) / 7.0
            features[base + len(self.ops) + 2] = node.settings.get("stride", 1) - 1.0
        position = {INPUT: 0, OUTPUT: self.max_nodes + 1} | {n.id: i + 1 for i, n in enumerate(hidden[: self.max_nodes])}
        offset = self.max_nodes * slot
        for src, dst in edges:
            if src in position and dst in position:
                features[offset + position[src] * (self.max_nodes + 2) + position[dst]] = 1.0
        return features

    def enumerate(self) -> list[Genome] | None:
        return None  # far too many to list

    def build(self, genome, input_shape, num_classes, mean=None, std=None) -> nn.Module:
        from nas_core.builder import build_model  # torch: imported when a network is built

        return build_model(genome, input_shape, num_classes, mean, std)

    def cost(self, genome: Genome, input_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
        """Parameters and FLOPs of the built network (these models are small enough to build)."""
        from nas_core.builder import build_model
        from nas_core.metrics import count_flops, count_params

        model = build_model(genome, input_shape, num_classes)
        return {"params": count_params(model), "flops": count_flops(model, input_shape)}

    def describe(self, genome: Genome) -> dict[str, Any]:
        """Flat, comparable parameters of a genome (for MLflow's compare view)."""
        return describe_genome(genome)


class _Fixed:
    """Stands in for a random generator whose ``choice`` is decided in advance (enumerating neighbours)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def choice(self, options: Any) -> Any:
        return self.value


def _replace(nodes: list[Node], i: int, node: Node) -> list[Node]:
    return [*nodes[:i], node, *nodes[i + 1 :]]


def _tag(prefix: str, node_id: str) -> str:
    return node_id if node_id in (INPUT, OUTPUT) else f"{prefix}{node_id}"


def describe_genome(genome: Genome) -> dict[str, Any]:
    """Flatten a genome into ``node.<id>.op``/``node.<id>.<setting>`` plus size and wiring summaries."""
    flat: dict[str, Any] = {"num_nodes": len(genome.nodes) - 2, "num_edges": len(genome.edges)}
    for node in genome.nodes:
        if node.op in (INPUT_OP, OUTPUT_OP):
            continue
        flat[f"node.{node.id}.op"] = node.op
        for key, value in sorted(node.settings.items()):
            flat[f"node.{node.id}.{key}"] = value
        flat[f"node.{node.id}.inputs"] = ",".join(genome.predecessors(node.id))
    flat["output.inputs"] = ",".join(genome.predecessors(genome.output_id))
    return flat
