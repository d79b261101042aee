"""Benchmark search strategies on a NAS-Bench-201 table: simulated searches, no training.

For every strategy and seed, one search on the ``nb201`` space: ask a batch, look the proposals up in
the table, tell the select metric (nothing else: the report metric never reaches a strategy), until
the largest budget. At each budget the search's result is the report metric of the architecture with
the best select metric evaluated so far (ties: the first evaluated). Then per strategy and budget: mean
and standard deviation over seeds, a normal 95 % interval of the mean, and the fraction of seeds whose
result is the table's best-by-select architecture (up to isomorphism, i.e. the space's identity).

    python benchmarks/strategies.py --table ../shared/benchmarks/nb201_cifar10.json --seeds 100 \\
        --budgets 25,50,100,200 --json results.json

``optuna-tpe`` is Optuna's TPE sampler over one categorical parameter per edge (the benchmark extra:
``pip install 'nas-pipeline[bench]'``); every trial counts as a query, repeated architectures too.

``STRATEGY+PROXY`` (e.g. ``bo+synflow``) is a registered strategy given a zero-cost proxy's scores of every
architecture as its prior (``Strategy.use_prior``). The proxy table is computed once (data-free, at
initialisation, CIFAR-10's input shape) and cached in ``--proxy-dir``; its Spearman correlation with the select
and report metrics (per identity) goes into the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment as common_environment  # noqa: E402
from benchmarks.common import package_version  # noqa: E402
from nas_core.evaluation.proxies import PROXIES, rank_correlation  # noqa: E402
from nas_core.evaluation.proxy_table import ProxyTable, ProxyTableKey, load_or_compute  # noqa: E402
from nas_core.evaluation.table import DEFAULT_REPORT_METRIC, DEFAULT_SELECT_METRIC, TableError, TableEvaluator  # noqa: E402
from nas_core.spaces import create_space  # noqa: E402
from nas_core.spaces.nb201 import EDGES, NB201_OPS, format_arch  # noqa: E402
from nas_core.strategies import STRATEGIES, CandidateResult, create_strategy  # noqa: E402

OPTUNA_TPE = "optuna-tpe"
PROXY_DIR = REPO_ROOT / "benchmarks" / "results" / "proxies"
TABLE_INPUT = ((3, 32, 32), 10)  # NAS-Bench-201's CIFAR-10 inputs, as nas search uses for a table
MISSING_OPTUNA = "optuna-tpe needs optuna: pip install 'nas-pipeline[bench]' (or pip install 'optuna>=3.6')"

Trace = list[tuple[str, float, float]]  # per query: (identity, select value, report value)


# ---- one simulated search -------------------------------------------------------------------


class Simulation:
    """A table, the nb201 space and the table's best; one per worker process."""

    def __init__(self, table: str, select_metric: str, report_metric: str, priors: Mapping[str, str] | None = None) -> None:
        self.evaluator = TableEvaluator.load(table, select_metric, report_metric)
        self.space = create_space("nb201")
        best_key, _ = self.evaluator.best()
        self.best_identity = self.space.identity(self.space.from_arch_string(best_key))
        self.priors = {proxy: ProxyTable.read(Path(path)).scores for proxy, path in (priors or {}).items()}

    def lookup(self, arch: str) -> tuple[float, float]:
        row = self.evaluator.rows.get(arch)
        if row is None:
            raise TableError(f"architecture {arch} is not in table {self.evaluator.path}")
        return float(row[self.evaluator.select_metric]), float(row[self.evaluator.report_metric])

    def run_strategy(self, name: str, seed: int, budget: int, batch: int, population: int) -> Trace:
        """``budget`` queries of a registered strategy, ``STRATEGY+PROXY``: with the proxy's prior (fewer if the space
        runs out)."""
        name, _, proxy = name.partition("+")
        strategy = create_strategy(name, self.space, seed=seed, population=population)
        if proxy:
            strategy.use_prior(self.priors[proxy])
        trace: Trace = []
        while len(trace) < budget:
            proposals = strategy.ask(min(batch, budget - len(trace)))
            if not proposals:
                break
            results = []
            for proposal in proposals:
                select, report = self.lookup(self.space.arch_string(proposal.genome))
                trace.append((proposal.hash, select, report))
                metrics = {self.evaluator.select_metric: select, "val_accuracy": select}
                results.append(CandidateResult(proposal.genome, "ok", select, metrics=metrics, hash=proposal.hash))
            strategy.tell(results)
        return trace

    def run_optuna_tpe(self, seed: int, budget: int) -> Trace:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = {f"edge{to}_{source}": optuna.distributions.CategoricalDistribution(NB201_OPS) for to, source in EDGES}
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        trace: Trace = []
        for _ in range(budget):
            trial = study.ask(distributions)
            cell = tuple(trial.params[f"edge{to}_{source}"] for to, source in EDGES)
            select, report = self.lookup(format_arch(cell))
            trace.append((self.space.identity(self.space.from_arch_string(format_arch(cell))), select, report))
            study.tell(trial, select)
        return trace

    def outcomes(self, trace: Trace, budgets: Sequence[int]) -> list[tuple[float, bool] | None]:
        """Per budget: (report value of the best-by-select so far, whether it is the table's best)."""
        out: list[tuple[float, bool] | None] = []
        best: tuple[str, float, float] | None = None
        done = 0
        for budget in budgets:
            for entry in trace[done:budget]:
                if best is None or entry[1] > best[1]:
                    best = entry
            done = max(done, min(budget, len(trace)))
            out.append(None if len(trace) < budget or best is None else (best[2], best[0] == self.best_identity))
        return out


_SIMULATION: Simulation | None = None


def _init_worker(table: str, select_metric: str, report_metric: str, priors: Mapping[str, str] | None = None) -> None:
    global _SIMULATION
    _SIMULATION = Simulation(table, select_metric, report_metric, priors)


def _run_one(job: tuple[str, int, list[int], int, int]) -> tuple[list[tuple[float, bool] | None], float]:
    name, seed, budgets, batch, population = job
    assert _SIMULATION is not None
    start = time.perf_counter()
    if name == OPTUNA_TPE:
        trace = _SIMULATION.run_optuna_tpe(seed, max(budgets))
    else:
        trace = _SIMULATION.run_strategy(name, seed, max(budgets), batch, population)
    return _SIMULATION.outcomes(trace, budgets), time.perf_counter() - start


# ---- aggregation and reporting --------------------------------------------------------------


def summarise(strategy: str, budget: int, outcomes: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Mean, sample standard deviation, normal 95 % interval of the mean, found-best fraction (None without seeds)."""
    values = [v for v, _ in outcomes]
    n = len(values)
    row: dict[str, Any] = {"strategy": strategy, "budget": budget, "seeds": n}
    if not n:  # every search ran out of architectures before this budget
        return {**row, "mean": None, "std": None, "ci95": None, "found_best_frac": None}
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * std / math.sqrt(n)
    found = sum(f for _, f in outcomes) / n
    return {**row, "mean": mean, "std": std, "ci95": [mean - half, mean + half], "found_best_frac": found}


def print_table(results: Sequence[dict[str, Any]], report_metric: str) -> None:
    table = Table(title=f"{report_metric} of the best-by-select architecture")
    for column, justify in (("strategy", "left"), ("budget", "right"), ("seeds", "right"), ("mean ± std", "right")):
        table.add_column(column, justify=justify)
    table.add_column("95% CI", justify="right")
    table.add_column("found_best_frac", justify="right")
    for r in results:
        if r["seeds"] == 0:
            table.add_row(r["strategy"], str(r["budget"]), "0", "-", "-", "-")
            continue
        table.add_row(
            r["strategy"],
            str(r["budget"]),
            str(r["seeds"]),
            f"{r['mean']:.3f} ± {r['std']:.3f}",
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
            f"{r['found_best_frac']:.2f}",
        )
    Console(width=120).print(table)


def _version(package: str) -> str | None:
    return package_version(package)


def environment() -> dict[str, Any]:
    return common_environment(("numpy", "scipy", "scikit-learn", "torch", "optuna"))


_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Worker processes started inside use one BLAS thread each (they run in parallel over seeds)."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ---- the command line -----------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("budgets must be positive integers")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, help="JSON table {arch string: {column: value}}")
    parser.add_argument("--budget", type=int, default=100, help="queries per search (when --budgets is not given)")
    parser.add_argument("--budgets", type=_int_list, default=None, help="comma-separated budgets, e.g. 25,50,100,200")
    parser.add_argument("--seeds", type=int, default=100, help="searches per strategy (seeds 0 .. N-1)")
    parser.add_argument("--strategies", default=None, help=f"comma-separated (default: every registered one and {OPTUNA_TPE})")
    parser.add_argument("--select-metric", default=DEFAULT_SELECT_METRIC)
    parser.add_argument("--report-metric", default=DEFAULT_REPORT_METRIC)
    parser.add_argument("--population", type=int, default=20, help="population size of population-based strategies")
    parser.add_argument("--batch", type=int, default=1, help="proposals asked (and evaluated) at a time")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes over seeds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--proxy-dir", type=Path, default=PROXY_DIR, help="where proxy tables are cached (STRATEGY+PROXY)")
    parser.add_argument("--proxy-processes", type=int, default=2, help="processes computing a proxy table")
    args = parser.parse_args(argv)
    if args.budgets is None:
        args.budgets = _int_list(str(args.budget))
    for flag in ("seeds", "population", "batch", "workers", "proxy_processes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    return args


def _known_name(name: str) -> bool:
    strategy, plus, proxy = name.partition("+")
    return name == OPTUNA_TPE or (strategy in STRATEGIES and (not plus or proxy in PROXIES))


def proxy_table(proxy: str, args: argparse.Namespace, progress: Callable[[str], None]) -> dict[str, Any]:
    """Load (or compute and cache) the proxy's table over nb201, and its Spearman correlation with the table's metrics
    over identities (each identity's first architecture in the space's listing)."""
    space = create_space("nb201")
    key = ProxyTableKey.of(space, *TABLE_INPUT, proxy)
    step = max(1, len(space.enumerate()) // 10)

    def report(done: int, total: int) -> None:
        if done % step < 32 or done == total:  # about every tenth (the table is scored in chunks of 32)
            progress(f"{proxy} table: {done}/{total} architectures scored")

    table, path = load_or_compute(space, key, args.proxy_dir, args.proxy_processes, report)
    simulation = Simulation(str(args.table), args.select_metric, args.report_metric)
    scores, select, report_values = [], [], []
    for genome in space.enumerate():
        value, reported = simulation.lookup(space.arch_string(genome))
        scores.append(table.scores[space.identity(genome)])
        select.append(value)
        report_values.append(reported)
    low = min((v for v in scores if math.isfinite(v)), default=0.0) - 1.0
    scores = [v if math.isfinite(v) else low for v in scores]  # no flow (a cell that passes nothing): the lowest
    row = {
        "file": path,
        "checksum": table.checksum,
        "minutes": table.seconds / 60,
        "architectures": len(scores),
        "non_finite": sum(v == low for v in scores),
        f"spearman_{args.select_metric}": rank_correlation(scores, select),
        f"spearman_{args.report_metric}": rank_correlation(scores, report_values),
    }
    progress(f"{proxy} table {path.name}: computed in {row['minutes']:.1f} min; Spearman rho with "
             f"{args.select_metric} {row[f'spearman_{args.select_metric}']:.3f}")  # fmt: skip
    return row


def main(argv: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> int:
    args = parse_args(argv)
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    names = [s.strip() for s in args.strategies.split(",") if s.strip()] if args.strategies else [*STRATEGIES, OPTUNA_TPE]
    unknown = [n for n in names if not _known_name(n)]
    if unknown or not names:
        known = ", ".join([*sorted(STRATEGIES), OPTUNA_TPE]) + f"; STRATEGY+PROXY with a proxy of {', '.join(PROXIES)}"
        print(f"unknown strategy {', '.join(unknown) or '(none given)'} (known: {known})", file=sys.stderr)
        return 2
    if OPTUNA_TPE in names and _version("optuna") is None:
        print(MISSING_OPTUNA, file=sys.stderr)
        return 2
    try:
        Simulation(args.table, args.select_metric, args.report_metric)  # fail early on a bad table
    except TableError as exc:
        print(exc, file=sys.stderr)
        return 2

    proxies = list(dict.fromkeys(n.partition("+")[2] for n in names if "+" in n))
    priors = {proxy: proxy_table(proxy, args, progress) for proxy in proxies}
    results: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    init = (str(args.table), args.select_metric, args.report_metric, {p: str(row["file"]) for p, row in priors.items()})
    with _single_threaded_children(), multiprocessing.get_context("spawn").Pool(args.workers, _init_worker, init) as pool:
        for name in names:
            start = time.perf_counter()
            jobs = [(name, seed, args.budgets, args.batch, args.population) for seed in range(args.seeds)]
            done = pool.map(_run_one, jobs, chunksize=1)
            timings[name] = time.perf_counter() - start
            per_search = sum(seconds for _, seconds in done) / len(done)
            progress(f"{name}: {args.seeds} searches in {timings[name]:.1f} s ({per_search:.2f} s per search)")
            for i, budget in enumerate(args.budgets):
                reached = [outcomes[i] for outcomes, _ in done if outcomes[i] is not None]
                results.append(summarise(name, budget, reached))
    print_table(results, args.report_metric)
    if args.json is not None:
        document = {
            "table": str(args.table),
            "results": results,
            **environment(),
            "settings": {
                "select_metric": args.select_metric,
                "report_metric": args.report_metric,
                "budgets": args.budgets,
                "seeds": args.seeds,
                "batch": args.batch,
                "population": args.population,
                "workers": args.workers,
            },
            "seconds": timings,
            "proxies": {proxy: {**row, "file": str(row["file"])} for proxy, row in priors.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
