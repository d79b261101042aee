"""Benchmark genome validation and the canonical form (the hash) by size and shape.

Shapes: a chain of identical ops (the longest colour refinement), a random DAG (three edges per op), and
identical parallel branches two or four ops deep (the most symmetric: the individualisation search does most
work). Sizes above the limit (``nas_core.limits.MAX_OPS``) are measured on the canonical form directly, for the
shapes where it stays fast; the symmetric shapes only up to the limit. Figures are the best of ``--repeats``.

    python benchmarks/canonical_form.py
    python benchmarks/canonical_form.py --sizes 256,500,2000,8000 --repeats 3
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import report_console  # noqa: E402
from nas_core.genome import Genome, Node, canonical_form  # noqa: E402
from nas_core.limits import MAX_OPS  # noqa: E402

POOL = {"kernel": 3, "stride": 1}


def chain(ops: int) -> Genome:
    ids = ["in", *(f"x{i}" for i in range(ops)), "out"]
    nodes = [Node("in", "input"), *(Node(f"x{i}", "identity") for i in range(ops)), Node("out", "output")]
    return Genome(tuple(nodes), tuple(zip(ids, ids[1:], strict=False)))


def random_dag(ops: int, seed: int = 0) -> Genome:
    rng = random.Random(seed)
    ids = ["in", *(f"x{i}" for i in range(ops)), "out"]
    hidden = [Node(f"x{i}", "identity") if rng.random() < 0.5 else Node(f"x{i}", "maxpool", POOL) for i in range(ops)]
    edges = set(zip(ids, ids[1:], strict=False))
    for _ in range(2 * ops):
        a = rng.randrange(len(ids) - 1)
        b = rng.randrange(a + 1, len(ids))
        if (a, b) != (0, len(ids) - 1):
            edges.add((ids[a], ids[b]))
    return Genome((Node("in", "input"), *hidden, Node("out", "output")), tuple(sorted(edges)))


def parallel(depth: int) -> Callable[[int], Genome]:
    def make(ops: int) -> Genome:
        nodes, edges = [Node("in", "input"), Node("out", "output")], []
        for b in range(ops // depth):
            previous = "in"
            for d in range(depth):
                nodes.append(Node(f"b{b}_{d}", "identity"))
                edges.append((previous, f"b{b}_{d}"))
                previous = f"b{b}_{d}"
            edges.append((previous, "out"))
        return Genome(tuple(nodes), tuple(edges))

    return make


# name -> (maker, measured above the limit too)
SHAPES: dict[str, tuple[Callable[[int], Genome], bool]] = {
    "chain": (chain, True),
    "random DAG": (random_dag, True),
    "parallel x2": (parallel(2), False),
    "parallel x4": (parallel(4), False),
}


def best_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=f"{MAX_OPS},500,2000,8000", help="op counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    table = Table(title=f"genome validation and canonical form (limit: {MAX_OPS} ops)")
    for column in ("shape", "ops", "edges", "validate s", "canonical form s"):
        table.add_column(column, justify="left" if column == "shape" else "right")
    for name, (make, above_limit) in SHAPES.items():
        for ops in sizes:
            if ops > MAX_OPS and not above_limit:
                continue
            genome = make(ops)
            within = ops <= MAX_OPS
            validate = f"{best_seconds(genome.validate, args.repeats):.3f}" if within else "over the limit"
            form = best_seconds(lambda genome=genome: canonical_form(genome), args.repeats)
            table.add_row(name, f"{ops:,}", f"{len(genome.edges):,}", validate, f"{form:.3f}")
    report_console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
