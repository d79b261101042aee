"""A zero-cost prior with real training: best validation accuracy after a few evaluations, with and without it.

For every dataset, strategy and seed, one real ``nas search`` (a subprocess, MLflow and Prefect included) on the
default ``image`` space (``sequence`` for the sequence data) with ``--budget`` evaluations in generations of
``--population``. A strategy named ``NAME+PROXY`` runs ``--strategy NAME --prior PROXY``: a seeded pool of
architectures is scored by the proxy before the search (cached in the project's ``proxies/``, so only the first
search of a dataset pays for it) and the strategy starts from the best-scored ones.

Datasets: the embedded ``digits`` (1 x 8 x 8, 10 classes) and ``seq``, an ``npz`` sequence set generated here
(seeded): 2 x 64 series, 4 classes, each a sine whose frequency depends on the class, with a random phase,
amplitude and noise. The figure per search is the best validation accuracy among its evaluations (what the
search selects on); the test accuracy of that best is reported beside it. Per dataset and strategy: mean,
sample standard deviation and a normal 95 % interval over seeds.

    python benchmarks/prior_real_training.py                        # 5 seeds, budget 8, both datasets
    python benchmarks/prior_real_training.py --seeds 2 --datasets digits --json /tmp/prior.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import (  # noqa: E402
    add_search_arguments,
    dataset_flags,
    nas_search,
    report_console,
    scratch_project,
    write_results,
)
from benchmarks.strategies import summarise  # noqa: E402

PACKAGES = ("torch", "prefect", "mlflow", "numpy")


def strategy_flags(variant: str) -> list[str]:
    """``NAME`` or ``NAME+PROXY`` as flags."""
    name, _, prior = variant.partition("+")
    return ["--strategy", name] + (["--prior", prior] if prior else [])


def best_of(summary: dict[str, Any]) -> tuple[float, float | None]:
    """(best validation accuracy, test accuracy of that evaluation) among a search's successful evaluations."""
    done = [c for c in summary["candidates"] if c.get("status") == "ok" and c.get("val_accuracy") is not None]
    if not done:
        raise SystemExit(f"search {summary.get('search_id')} has no successful evaluation")
    best = max(done, key=lambda c: c["val_accuracy"])
    return float(best["val_accuracy"]), best.get("test_accuracy")


def run(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    project = scratch_project(root)
    rows = []
    console = report_console()
    for dataset in args.datasets.split(","):
        data = dataset_flags(dataset, project)
        for variant in args.strategies.split(","):
            outcomes, tests, seconds = [], [], []
            for seed in range(args.seeds):
                flags = [*data, *strategy_flags(variant), "--budget", str(args.budget), "--population",
                         str(args.population), "--epochs", str(args.epochs), "--seed", str(seed)]  # fmt: skip
                summary, wall = nas_search(project, root / f"{dataset}-{variant}-{seed}", flags)
                val, test = best_of(summary)
                outcomes.append((val, False))
                tests.append(test)
                seconds.append(wall)
                console.print(f"{dataset} {variant} seed {seed}: best val {val:.4f} (test {test}) in {wall:.0f} s")
            row = summarise(variant, args.budget, outcomes)
            row.pop("found_best_frac")
            test_values = [t for t in tests if t is not None]
            rows.append(
                row
                | {
                    "dataset": dataset,
                    "values": [v for v, _ in outcomes],
                    "test_mean": sum(test_values) / len(test_values) if test_values else None,
                    "seconds_mean": sum(seconds) / len(seconds),
                }
            )
    return rows


def print_table(rows: Sequence[dict[str, Any]], budget: int) -> None:
    table = Table(title=f"best validation accuracy after {budget} evaluations (real training)")
    for column in ("dataset", "strategy", "seeds", "mean ± std", "95% CI", "test of best", "s / search"):
        table.add_column(column, justify="left" if column in ("dataset", "strategy") else "right")
    for r in rows:
        low, high = r["ci95"]
        test = "-" if r["test_mean"] is None else f"{r['test_mean']:.4f}"
        table.add_row(r["dataset"], r["strategy"], str(r["seeds"]), f"{r['mean']:.4f} ± {r['std']:.4f}",
                      f"[{low:.4f}, {high:.4f}]", test, f"{r['seconds_mean']:.0f}")  # fmt: skip
    report_console().print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_search_arguments(parser, "evolution,bo,evolution+synflow,bo+synflow")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nas-prior-bench-") as tmp:
        rows = run(args, Path(tmp))
    print_table(rows, args.budget)
    write_results(args, PACKAGES, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
