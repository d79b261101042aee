"""Chained searches (warm start) against one long search, on a NAS-Bench-201 table: simulated, no training.

For every strategy and seed, three variants on the ``nb201`` space (queries looked up in the table, the
select metric told, as in ``benchmarks/strategies.py``):

- ``single-100``: one search of ``links x queries`` queries (100 by default);
- ``chain-5x20``: ``links`` searches of ``queries`` new queries each; search k > 1 is a fresh strategy
  instance, seeded ``link_seed(seed, k)``, told every evaluation of searches 1 .. k-1 (in the order they
  were evaluated) before its first ask;
- ``single-20``: one search of ``queries`` queries (where a chain that lost its memory would sit near;
  by construction the chain's first link).

A variant's result is the report metric of the architecture with the best select metric among all of its
evaluations (the whole chain's, for a chain; ties: the first evaluated). Per strategy and variant: mean and
standard deviation over seeds, a normal 95 % interval of the mean, and the fraction of seeds whose result
is the table's best-by-select architecture.

    python benchmarks/chained_search.py --table ../shared/benchmarks/nb201_cifar10.json --seeds 100 \\
        --json benchmarks/results/chained_search.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import report_console  # noqa: E402
from benchmarks.strategies import Simulation, Trace, _single_threaded_children, environment, summarise  # noqa: E402
from nas_core.evaluation.table import DEFAULT_REPORT_METRIC, DEFAULT_SELECT_METRIC, TableError  # noqa: E402
from nas_core.strategies import STRATEGIES, CandidateResult, Proposal, create_strategy  # noqa: E402

LINK_SEED_STRIDE = 10_000  # link k of seed s is seeded s + 10,000 (k - 1): distinct for every seed below 10,000


def link_seed(seed: int, link: int) -> int:
    """The seed of a chain's ``link``-th search (from 1): the chain's own seed for the first one."""
    return seed + LINK_SEED_STRIDE * (link - 1)


def variant_names(links: int, queries: int) -> tuple[str, str, str]:
    """(one long search, the chain, one short search), e.g. ("single-100", "chain-5x20", "single-20")."""
    return f"single-{links * queries}", f"chain-{links}x{queries}", f"single-{queries}"


# ---- simulated searches ---------------------------------------------------------------------


def evaluate(simulation: Simulation, proposal: Proposal) -> tuple[CandidateResult, float, float]:
    """A proposal's table result (the select metric as fitness), its select and its report value."""
    select, report = simulation.lookup(simulation.space.arch_string(proposal.genome))
    metrics = {simulation.evaluator.select_metric: select, "val_accuracy": select}
    return CandidateResult(proposal.genome, "ok", select, metrics=metrics, hash=proposal.hash), select, report


def run_chain(simulation: Simulation, name: str, seed: int, links: int, queries: int, batch: int, population: int) -> Trace:
    """``links`` searches of ``queries`` new queries each, every one told all earlier evaluations first.

    With ``links=1`` this is one plain search. Asks go in batches of ``batch`` (fewer at a link's end).
    """
    told: list[CandidateResult] = []
    trace: Trace = []
    for link in range(1, links + 1):
        strategy = create_strategy(name, simulation.space, seed=link_seed(seed, link), population=population)
        if told:
            strategy.tell(told)
        asked = 0
        while asked < queries:
            proposals = strategy.ask(min(batch, queries - asked))
            if not proposals:  # the space ran out
                return trace
            results = []
            for proposal in proposals:
                result, select, report = evaluate(simulation, proposal)
                results.append(result)
                trace.append((proposal.hash, select, report))
            strategy.tell(results)
            told += results
            asked += len(proposals)
    return trace


def repeats(trace: Trace) -> int:
    """Queries of an architecture (identity) queried before in the same trace."""
    return len(trace) - len({identity for identity, _, _ in trace})


def run_variants(
    simulation: Simulation, name: str, seed: int, links: int, queries: int, batch: int, population: int
) -> dict[str, Any]:
    """Every variant of one strategy and seed: per variant its outcome (report value, found best),
    repeated queries and seconds; for the chain also its outcome after each link."""
    long, chain, short = variant_names(links, queries)
    plans = {long: (1, links * queries), chain: (links, queries), short: (1, queries)}
    done: dict[str, Any] = {"strategy": name, "seed": seed, "variants": {}}
    for variant, (count, per_link) in plans.items():
        start = time.perf_counter()
        trace = run_chain(simulation, name, seed, count, per_link, batch, population)
        budgets = [per_link * k for k in range(1, count + 1)]
        done["variants"][variant] = {
            "outcomes": simulation.outcomes(trace, budgets),
            "repeats": repeats(trace),
            "seconds": time.perf_counter() - start,
        }
    return done


_SIMULATION: Simulation | None = None


def _init_worker(table: str, select_metric: str, report_metric: str) -> None:
    global _SIMULATION
    _SIMULATION = Simulation(table, select_metric, report_metric)


def _run_one(job: tuple[str, int, int, int, int, int]) -> dict[str, Any]:
    assert _SIMULATION is not None
    return run_variants(_SIMULATION, *job)


# ---- aggregation and reporting --------------------------------------------------------------


def aggregate(done: Sequence[dict[str, Any]], names: Sequence[str], links: int, queries: int) -> list[dict[str, Any]]:
    """Per strategy and variant, over seeds: see ``variant_row``; the chain's row says whether its mean lies
    within the long search's 95 % interval."""
    rows: list[dict[str, Any]] = []
    long, chain, short = variant_names(links, queries)
    for name in names:
        runs = [d["variants"] for d in done if d["strategy"] == name]
        by_variant = {
            v: variant_row(name, v, n, [r[v] for r in runs])
            for v, n in ((long, links * queries), (chain, links * queries), (short, queries))
        }
        by_variant[chain]["within_single_ci95"] = within(by_variant[chain]["mean"], by_variant[long]["ci95"])
        rows += by_variant.values()
    return rows


def variant_row(name: str, variant: str, queries: int, entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``summarise`` of the final outcomes, repeated queries in all, mean seconds per seed and, for a chain,
    the mean result after each of its links."""
    final = [e["outcomes"][-1] for e in entries if e["outcomes"][-1] is not None]
    stats = summarise(name, queries, final)
    row = {"strategy": name, "variant": variant, "queries": stats.pop("budget"), **stats}
    row["repeats"] = sum(e["repeats"] for e in entries)
    row["seconds_per_seed"] = sum(e["seconds"] for e in entries) / len(entries) if entries else None
    links = max((len(e["outcomes"]) for e in entries), default=0)
    if links > 1:
        row["after_link"] = [
            mean_value([e["outcomes"][k] for e in entries if e["outcomes"][k] is not None]) for k in range(links)
        ]
    return row


def mean_value(outcomes: Sequence[tuple[float, bool]]) -> float | None:
    return sum(v for v, _ in outcomes) / len(outcomes) if outcomes else None


def within(value: float | None, interval: Sequence[float] | None) -> bool | None:
    if value is None or interval is None:
        return None
    return interval[0] <= value <= interval[1]


def print_table(rows: Sequence[dict[str, Any]], report_metric: str) -> None:
    table = Table(title=f"{report_metric} of the best-by-select architecture of a search or chain")
    for column in ("strategy", "variant", "queries", "seeds", "mean ± std", "95% CI of the mean", "at optimum", "s/seed"):
        table.add_column(column, justify="left" if column in ("strategy", "variant") else "right")
    for r in rows:
        if not r["seeds"]:
            table.add_row(r["strategy"], r["variant"], str(r["queries"]), "0", "-", "-", "-", "-")
            continue
        table.add_row(
            r["strategy"],
            r["variant"],
            str(r["queries"]),
            str(r["seeds"]),
            f"{r['mean']:.3f} ± {r['std']:.3f}",
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
            f"{r['found_best_frac']:.2f}",
            f"{r['seconds_per_seed']:.2f}",
        )
    report_console().print(table)
    for r in rows:
        if "within_single_ci95" in r:
            where = "within" if r["within_single_ci95"] else "outside"
            print(f"{r['strategy']}: the chain's mean lies {where} the one long search's 95% interval")


# ---- the command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, help="JSON table {arch string: {column: value}}")
    parser.add_argument("--strategies", default="evolution,bo", help="comma-separated registered strategies")
    parser.add_argument("--seeds", type=int, default=100, help="chains per strategy (seeds 0 .. N-1)")
    parser.add_argument("--links", type=int, default=5, help="searches in a chain")
    parser.add_argument("--queries", type=int, default=20, help="new queries per search of the chain")
    parser.add_argument("--select-metric", default=DEFAULT_SELECT_METRIC)
    parser.add_argument("--report-metric", default=DEFAULT_REPORT_METRIC)
    parser.add_argument("--population", type=int, default=8, help="population size (nas search's default)")
    parser.add_argument("--batch", type=int, default=8, help="proposals asked (and evaluated) at a time: one generation")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes over seeds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    for flag in ("seeds", "links", "queries", "population", "batch", "workers"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> int:
    args = parse_args(argv)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    names = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown or not names:
        print(f"unknown strategy {', '.join(unknown) or '(none given)'} (known: {', '.join(STRATEGIES)})", file=sys.stderr)
        return 2
    try:
        Simulation(args.table, args.select_metric, args.report_metric)  # fail early on a bad table
    except TableError as exc:
        print(exc, file=sys.stderr)
        return 2

    done: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    init = (str(args.table), args.select_metric, args.report_metric)
    with _single_threaded_children(), multiprocessing.get_context("spawn").Pool(args.workers, _init_worker, init) as pool:
        for name in names:
            start = time.perf_counter()
            jobs = [(name, seed, args.links, args.queries, args.batch, args.population) for seed in range(args.seeds)]
            done += pool.map(_run_one, jobs, chunksize=1)
            timings[name] = time.perf_counter() - start
            progress(f"{name}: {args.seeds} seeds in {timings[name]:.1f} s ({timings[name] / args.seeds:.2f} s per seed, wall)")
    rows = aggregate(done, names, args.links, args.queries)
    print_table(rows, args.report_metric)
    if args.json is not None:
        settings = {k: getattr(args, k) for k in ("select_metric", "report_metric", "seeds", "links", "queries", "batch")}
        settings.update(population=args.population, workers=args.workers, link_seed=f"seed + {LINK_SEED_STRIDE} * (k - 1)")
        document = {"table": str(args.table), "results": rows, **environment(), "settings": settings, "seconds": timings}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
