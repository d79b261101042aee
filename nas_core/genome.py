"""Architectures as plain values: a DAG of ops, its JSON form, validation and an isomorphism-aware hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from nas_core.hparams import check_hparams
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
        nodes = []
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not isinstance(raw.get("op"), str):
                raise GenomeError(f"node #{i} must be an object with string 'id' and 'op'")
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
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GenomeError(f"genome is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        return cls.from_dict(data)

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

    def predecessors(self, node_id: str) -> list[str]:
        return [s for s, d in self.edges if d == node_id]

    def successors(self, node_id: str) -> list[str]:
        return [d for s, d in self.edges if s == node_id]

    def topological_order(self) -> list[str]:
        """Node ids in a stable topological order (Kahn, ties broken by declaration order)."""
        indeg = {n.id: 0 for n in self.nodes}
        for _, d in self.edges:
            indeg[d] += 1
        order: list[str] = []
        ready = [n.id for n in self.nodes if indeg[n.id] == 0]
        position = {n.id: i for i, n in enumerate(self.nodes)}
        while ready:
            ready.sort(key=position.__getitem__)
            current = ready.pop(0)
            order.append(current)
            for succ in self.successors(current):
                indeg[succ] -= 1
                if indeg[succ] == 0:
                    ready.append(succ)
        if len(order) != len(self.nodes):
            cyclic = sorted(nid for nid, d in indeg.items() if d > 0)
            raise GenomeError(f"the graph has a cycle through nodes {', '.join(cyclic)}")
        return order

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> Genome:
        """Raise GenomeError naming the first problem; return self when the genome is valid."""
        try:
            check_hparams(self.hparams)
        except ValueError as exc:
            raise GenomeError(str(exc)) from None
        ids = [n.id for n in self.nodes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
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


def _label(node: Node) -> str:
    return json.dumps([node.op, node.settings], sort_keys=True)


def canonical_form(genome: Genome) -> str:
    """A string equal for two genomes iff they are isomorphic (same ops, settings and wiring).

    Colour refinement on in- and out-neighbourhoods, then individualisation of tied nodes,
    keeping the lexicographically smallest encoding. Exact; fast for cells of a dozen nodes, but it
    grows factorially with many identical parallel branches deeper than one op (8 two-op branches:
    seconds), since only one-op twins are pruned.
    """
    ids = [n.id for n in genome.nodes]
    index = {nid: i for i, nid in enumerate(ids)}
    labels = [_label(n) for n in genome.nodes]
    preds = [[] for _ in ids]
    succs = [[] for _ in ids]
    for s, d in genome.edges:
        preds[index[d]].append(index[s])
        succs[index[s]].append(index[d])

    def refine(colours: list[int]) -> list[int]:
        while True:
            signatures = [
                (colours[v], tuple(sorted(colours[p] for p in preds[v])), tuple(sorted(colours[s] for s in succs[v])))
                for v in range(len(ids))
            ]
            ranking = {sig: rank for rank, sig in enumerate(sorted(set(signatures)))}
            refined = [ranking[sig] for sig in signatures]
            if len(set(refined)) == len(set(colours)):
                return refined
            colours = refined

    def encode(colours: list[int]) -> str:
        # colours are a discrete partition here: they give the canonical node numbering
        order = sorted(range(len(ids)), key=colours.__getitem__)
        pos = {v: i for i, v in enumerate(order)}
        edges = sorted((pos[index[s]], pos[index[d]]) for s, d in genome.edges)
        form: dict[str, Any] = {"nodes": [labels[v] for v in order], "edges": edges}
        if genome.hparams:
            form["hparams"] = genome.hparams
        return json.dumps(form, sort_keys=True)

    best: list[str] = []

    def search(colours: list[int]) -> None:
        colours = refine(colours)
        counts: dict[int, int] = {}
        for c in colours:
            counts[c] = counts.get(c, 0) + 1
        tied = [c for c, k in counts.items() if k > 1]
        if not tied:
            form = encode(colours)
            if not best or form < best[0]:
                best[:] = [form]
            return
        target = min(tied)
        tried: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
        for v in (v for v in range(len(ids)) if colours[v] == target):
            # twins (same label, same neighbours) are swapped by an automorphism: trying one is enough
            twin_key = (tuple(sorted(preds[v])), tuple(sorted(succs[v])))
            if twin_key in tried:
                continue
            tried.add(twin_key)
            # individualise v: it gets a colour of its own just before the rest of its class
            search([2 * c + (0 if u == v else 1) for u, c in enumerate(colours)])

    label_rank = {lab: r for r, lab in enumerate(sorted(set(labels)))}
    search([label_rank[lab] for lab in labels])
    return best[0]
