"""Architectures as plain values: a DAG of ops, its JSON form, validation and an isomorphism-aware hash."""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from nas_core.hparams import check_hparams
from nas_core.limits import MAX_EDGES, MAX_GENOME_BYTES, MAX_ID_LENGTH, MAX_JSON_DEPTH, MAX_NUMBER_DIGITS, MAX_OPS
from nas_core.ops import INPUT_OP, OUTPUT_OP, OpSettingsError, check_op

GENOME_FORMAT = 1


class GenomeError(ValueError):
    """A genome is malformed or not a valid architecture."""


@dataclass(frozen=True)
class Node:
    """One op of the architecture with its settings."""

    id: str
    op: str
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "op": self.op, "settings": dict(sorted(self.settings.items()))}


@dataclass(frozen=True)
class Genome:
    """A directed acyclic graph: nodes are ops, edges ``(src, dst)`` feed src's output into dst.

    Exactly one ``input`` node (no incoming edges) and one ``output`` node (no outgoing edges).
    A node with several inputs sums them (the builder aligns their shapes first).
    """

    nodes: tuple[Node, ...]
    edges: tuple[tuple[str, str], ...]
    hparams: dict[str, Any] = field(default_factory=dict)  # training hyperparameters searched with it

    # ---- construction and JSON -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any) -> Genome:
        if not isinstance(data, dict):
            raise GenomeError("genome JSON must be an object with 'nodes' and 'edges'")
        unknown = set(data) - {"format", "nodes", "edges", "hparams"}
        if unknown:
            raise GenomeError(f"genome JSON has unknown keys: {', '.join(sorted(unknown))}")
        if data.get("format", GENOME_FORMAT) != GENOME_FORMAT:
            raise GenomeError(f"genome format {data['format']!r} is not supported (this version reads format {GENOME_FORMAT})")
        raw_nodes, raw_edges = data.get("nodes"), data.get("edges")
        if not isinstance(raw_nodes, list) or not isinstance(raw_edges, list):
            raise GenomeError("genome JSON needs a list 'nodes' and a list 'edges'")
        _check_size(len(raw_nodes), len(raw_edges))
        nodes = []
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not isinstance(raw.get("op"), str):
                raise GenomeError(f"node #{i} must be an object with string 'id' and 'op'")
            if len(raw["id"]) > MAX_ID_LENGTH:
                raise GenomeError(f"node #{i}: its id has {len(raw['id'])} characters; at most {MAX_ID_LENGTH}")
            settings = raw.get("settings", {})
            if not isinstance(settings, dict):
                raise GenomeError(f"node '{raw['id']}': 'settings' must be an object")
            nodes.append(Node(raw["id"], raw["op"], dict(settings)))
        edges = []
        for i, raw in enumerate(raw_edges):
            if not (isinstance(raw, (list, tuple)) and len(raw) == 2 and all(isinstance(x, str) for x in raw)):
                raise GenomeError(f"edge #{i} must be a pair of node ids, got {raw!r}")
            edges.append((raw[0], raw[1]))
        hparams = data.get("hparams", {})
        if not isinstance(hparams, dict):
            raise GenomeError("genome 'hparams' must be an object of training hyperparameters")
        return cls(tuple(nodes), tuple(edges), dict(hparams))

    @classmethod
    def from_json(cls, text: str) -> Genome:
        """Parse and check the structure (not the architecture: see ``validate``); every problem is a GenomeError."""
        if len(text) > MAX_GENOME_BYTES:
            raise GenomeError(f"genome is {len(text):,} characters; the limit is {MAX_GENOME_BYTES:,}")
        try:
            data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise GenomeError(f"genome is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        except RecursionError:
            raise GenomeError(f"genome JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
        if _depth(data) > MAX_JSON_DEPTH:
            raise GenomeError(f"genome JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
        return cls.from_dict(data)

    @classmethod
    def read(cls, path: Path | str) -> Genome:
        """The genome in a JSON file (structure checked, not validated); OSError when the file cannot be read.

        The size limit is checked before the file is read, so a huge file or a device is refused at once.
        """
        with open(path, "rb") as file:
            raw = file.read(MAX_GENOME_BYTES + 1)
        if len(raw) > MAX_GENOME_BYTES:
            raise GenomeError(f"genome file is larger than the limit of {MAX_GENOME_BYTES:,} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GenomeError(f"genome file is not UTF-8 text (byte {exc.start})") from None
        return cls.from_json(text)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": GENOME_FORMAT,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [list(e) for e in self.edges],
        }
        if self.hparams:
            data["hparams"] = dict(sorted(self.hparams.items()))
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    # ---- graph queries -------------------------------------------------------------------
    @property
    def node_map(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    @property
    def input_id(self) -> str:
        return next(n.id for n in self.nodes if n.op == INPUT_OP)

    @property
    def output_id(self) -> str:
        return next(n.id for n in self.nodes if n.op == OUTPUT_OP)

    @cached_property
    def _adjacency(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        """Predecessors and successors of every node id, in edge order (computed once: genomes are immutable)."""
        preds: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        succs: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for s, d in self.edges:
            succs.setdefault(s, []).append(d)
            preds.setdefault(d, []).append(s)
        return preds, succs

    def predecessors(self, node_id: str) -> list[str]:
        return list(self._adjacency[0].get(node_id, ()))

    def successors(self, node_id: str) -> list[str]:
        return list(self._adjacency[1].get(node_id, ()))

    def topological_order(self) -> list[str]:
        """Node ids in a stable topological order (Kahn, ties broken by declaration order)."""
        indeg = {n.id: 0 for n in self.nodes}
        for _, d in self.edges:
            indeg[d] += 1
        position = {n.id: i for i, n in enumerate(self.nodes)}
        order: list[str] = []
        ready = [position[n.id] for n in self.nodes if indeg[n.id] == 0]
        heapq.heapify(ready)
        while ready:
            current = self.nodes[heapq.heappop(ready)].id
            order.append(current)
            for succ in self._adjacency[1][current]:
                indeg[succ] -= 1
                if indeg[succ] == 0:
                    heapq.heappush(ready, position[succ])
        if len(order) != len(self.nodes):
            cyclic = sorted(nid for nid, d in indeg.items() if d > 0)
            raise GenomeError(f"the graph has a cycle through nodes {', '.join(cyclic)}")
        return order

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> Genome:
        """Raise GenomeError naming the first problem; return self when the genome is valid."""
        _check_size(len(self.nodes), len(self.edges))
        try:
            check_hparams(self.hparams)
        except ValueError as exc:
            raise GenomeError(str(exc)) from None
        ids = [n.id for n in self.nodes]
        dupes = sorted(i for i, count in Counter(ids).items() if count > 1)
        if dupes:
            raise GenomeError(f"duplicate node ids: {', '.join(dupes)}")
        for node in self.nodes:
            try:
                check_op(node.op, node.settings)
            except OpSettingsError as exc:
                raise GenomeError(f"node '{node.id}': {exc}") from None
        for role in (INPUT_OP, OUTPUT_OP):
            count = sum(n.op == role for n in self.nodes)
            if count != 1:
                raise GenomeError(f"a genome needs exactly one '{role}' node, found {count}")
        known = set(ids)
        seen_edges: set[tuple[str, str]] = set()
        for src, dst in self.edges:
            for end in (src, dst):
                if end not in known:
                    raise GenomeError(f"edge {src}->{dst} refers to unknown node '{end}'")
            if src == dst:
                raise GenomeError(f"edge {src}->{dst} is a self-loop")
            if (src, dst) in seen_edges:
                raise GenomeError(f"edge {src}->{dst} appears twice")
            seen_edges.add((src, dst))
        if self.predecessors(self.input_id):
            raise GenomeError(f"the input node '{self.input_id}' cannot have incoming edges")
        if self.successors(self.output_id):
            raise GenomeError(f"the output node '{self.output_id}' cannot have outgoing edges")
        self.topological_order()
        reachable = self._closure(self.input_id, self.successors)
        for node in self.nodes:
            if node.id not in reachable:
                raise GenomeError(f"node '{node.id}' is unreachable from the input")
        feeding = self._closure(self.output_id, self.predecessors)
        for node in self.nodes:
            if node.id not in feeding:
                raise GenomeError(f"node '{node.id}' is a dead end: it does not lead to the output")
        return self

    def is_valid(self) -> bool:
        try:
            self.validate()
        except GenomeError:
            return False
        return True

    @staticmethod
    def _closure(start: str, step) -> set[str]:
        seen, stack = {start}, [start]
        while stack:
            for nxt in step(stack.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    # ---- identity ------------------------------------------------------------------------
    def canonical_hash(self) -> str:
        """SHA-256 of a canonical form: equal for isomorphic genomes, different otherwise."""
        return hashlib.sha256(canonical_form(self).encode()).hexdigest()


def _check_size(nodes: int, edges: int) -> None:
    if nodes > MAX_OPS + 2:
        raise GenomeError(f"genome has {nodes:,} nodes; at most {MAX_OPS + 2} ({MAX_OPS} ops plus input and output)")
    if edges > MAX_EDGES:
        raise GenomeError(f"genome has {edges:,} edges; at most {MAX_EDGES:,}")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise GenomeError(f"genome has a number with {len(text):,} digits; at most {MAX_NUMBER_DIGITS}")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or len(text) > 4 * MAX_NUMBER_DIGITS:
        raise GenomeError(f"genome has a number out of range: {text[:40]}")
    return value


def _reject_constant(name: str) -> None:
    raise GenomeError(f"genome has {name}, which is not a JSON number")


def _depth(data: Any) -> int:
    """How deeply arrays and objects nest in parsed JSON (a scalar: 0), without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def _label(node: Node) -> str:
    return json.dumps([node.op, node.settings], sort_keys=True)


def canonical_form(genome: Genome) -> str:
    """A string equal for two genomes iff they are isomorphic (same ops, settings and wiring).

    Colour refinement on in- and out-neighbourhoods, then individualisation of tied nodes, keeping the
    lexicographically smallest encoding (the form of format 1: hashes stored before stay valid). Cells are
    ranges of one ordered node list and a node's colour is the end of its cell, so a refinement step only
    looks at the nodes next to a cell that just split (all but its largest part); automorphisms found
    between equal leaves prune the search (one child per orbit, and a jump back to where the paths parted).
    Within the genome limits the worst case (hundreds of identical parallel branches) takes about a second.
    """
    n = len(genome.nodes)
    index = {node.id: i for i, node in enumerate(genome.nodes)}
    labels = [_label(node) for node in genome.nodes]
    edges = [(index[s], index[d]) for s, d in genome.edges]
    preds: list[list[int]] = [[] for _ in range(n)]
    succs: list[list[int]] = [[] for _ in range(n)]
    for s, d in edges:
        preds[d].append(s)
        succs[s].append(d)
    neighbours = [preds[v] + succs[v] for v in range(n)]

    # A partition: ``order`` lists the nodes cell by cell; ``colour[v]`` is the end of v's cell in ``order``
    # (so cells compare like the colours of the plain algorithm) and ``start[end]`` is where that cell begins.
    def signature(v: int, colour: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(sorted([colour[p] for p in preds[v]])), tuple(sorted([colour[q] for q in succs[v]]))

    def refine(order: list[int], colour: list[int], start: list[int], touched: Iterable[int]) -> None:
        """Split cells by the sorted colours of their nodes' neighbours until nothing splits."""
        while True:
            hits: dict[int, set[int]] = {}
            for v in touched:
                if colour[v] - start[colour[v]] > 1:
                    hits.setdefault(colour[v], set()).add(v)
            splits = []
            for end, hit in hits.items():
                begin = start[end]
                groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[int]] = {}
                for v in hit:
                    groups.setdefault(signature(v, colour), []).append(v)
                if len(hit) < end - begin:  # the untouched nodes of the cell still share one signature
                    rest = [v for v in order[begin:end] if v not in hit]
                    groups.setdefault(signature(rest[0], colour), []).extend(rest)
                if len(groups) > 1:
                    splits.append((begin, end, [groups[key] for key in sorted(groups)]))
            if not splits:
                return
            touched = set()
            for begin, end, parts in splits:
                largest = max(range(len(parts)), key=lambda i: len(parts[i]))
                for i, part in enumerate(parts):
                    stop = begin + len(part)
                    start[stop] = begin
                    order[begin:stop] = part
                    if stop != end:
                        for v in part:
                            colour[v] = stop
                    if i != largest:  # nodes next to the largest part only still agree with each other
                        for v in part:
                            touched.update(neighbours[v])
                    begin = stop

    def encode(order: list[int]) -> str:
        # the partition is discrete here: ``order`` is the canonical node numbering
        position = [0] * n
        for i, v in enumerate(order):
            position[v] = i
        form: dict[str, Any] = {
            "nodes": [labels[v] for v in order],
            "edges": sorted((position[s], position[d]) for s, d in edges),
        }
        if genome.hparams:
            form["hparams"] = genome.hparams
        return json.dumps(form, sort_keys=True)

    label_rank = {label: rank for rank, label in enumerate(sorted(set(labels)))}
    order = sorted(range(n), key=lambda v: label_rank[labels[v]])
    colour, start = [0] * n, [0] * (n + 1)
    begin = 0
    for i in range(1, n + 1):
        if i == n or labels[order[i]] != labels[order[begin]]:
            for v in order[begin:i]:
                colour[v] = i
            start[i], begin = begin, i
    refine(order, colour, start, range(n))

    first: list[Any] = []  # the first leaf and the best leaf: [form, path, order]
    best: list[Any] = []
    automorphisms: list[dict[int, int]] = []  # as the nodes they move

    def search(order: list[int], colour: list[int], start: list[int], path: list[int], lo: int) -> int:
        """Explore the node reached by individualising ``path``; return the depth to go back to."""
        depth = len(path)
        at = lo
        while at < n and colour[order[at]] - at == 1:
            at += 1
        if at == n:
            form, back = encode(order), depth
            for leaf in (first, best):
                if leaf and leaf[0] == form:  # the same form: mapping one leaf onto the other is an automorphism
                    automorphisms.append({u: w for u, w in zip(leaf[2], order, strict=True) if u != w})
                    back = min(back, _common_prefix(leaf[1], path))
            if not first:
                first[:] = [form, path, order]
            if not best or form < best[0]:
                best[:] = [form, path, order]
            return back
        end = colour[order[at]]
        tried: list[int] = []
        twins: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        parent: dict[int, int] = {}  # union-find of the orbits of automorphisms that fix ``path``
        used, fixed = 0, set(path)

        def root(x: int) -> int:
            while parent.get(x, x) != x:
                x = parent[x]
            return x

        for v in sorted(order[at:end]):
            # twins (same label, same neighbours) are swapped by an automorphism: trying one is enough
            twin_key = (tuple(sorted(preds[v])), tuple(sorted(succs[v])))
            if twin_key in twins:
                continue
            if tried:
                for moved in automorphisms[used:]:
                    if fixed.isdisjoint(moved):
                        for u, w in moved.items():
                            if root(u) != root(w):
                                parent[root(u)] = root(w)
                used = len(automorphisms)
                if any(root(t) == root(v) for t in tried):
                    continue
            twins.add(twin_key)
            tried.append(v)
            # individualise v: it gets a cell of its own just before the rest of its cell
            child_order, child_colour, child_start = list(order), list(colour), list(start)
            i = child_order.index(v, at, end)
            child_order[at], child_order[i] = v, child_order[at]
            child_colour[v], child_start[at + 1], child_start[end] = at + 1, at, at + 1
            refine(child_order, child_colour, child_start, neighbours[v])
            back = search(child_order, child_colour, child_start, [*path, v], at)
            if back < depth:
                return back
        return depth

    search(order, colour, start, [], 0)
    return best[0]


def _common_prefix(a: list[int], b: list[int]) -> int:
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return k
