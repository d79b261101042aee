"""Latency-constrained search against random search under the same limit, with real training.

For each dataset (the embedded ``digits`` on the ``image`` space; ``seq``, the generated sequence set of
``benchmarks/common.py``, on the ``sequence`` space) the limit is the 30th percentile (``--percentile``) of the
predicted onnxruntime latency (batch 1, one thread) of ``--genomes`` random genomes of the space, predicted with
the project's own latency table (the one the searches use, so the limit and the searches' predictions agree).
Then, per strategy and seed, one real ``nas search --max-latency-ms LIMIT`` (a subprocess) of ``--budget``
evaluations in generations of ``--population``.

Per search: the best validation accuracy, and the winner's latency as predicted and as **measured** on its
exported ONNX model (the handoff card times it at the search's batch size, provider and threads) and measured
again here, in this process, from the handed-over file; whether each measured figure meets the limit. Per dataset
and strategy: mean, standard deviation and 95 % interval of the best validation accuracy, and how many winners met
the limit by each measurement.

    python benchmarks/latency_constrained.py --json benchmarks/results/latency_constrained.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import (  # noqa: E402
    DATASET_SHAPES,
    add_search_arguments,
    dataset_flags,
    nas_search,
    report_console,
    scratch_project,
    write_results,
)
from benchmarks.strategies import summarise  # noqa: E402

PACKAGES = ("torch", "onnxruntime", "prefect", "mlflow")


def latency_limit(project: Path, dataset: str, genomes: int, percentile: float, seed: int = 0) -> float:
    """The ``percentile`` of the predicted latency of ``genomes`` random genomes of the dataset's space (ms)."""
    import torch

    from nas_core.spaces import create_space
    from nas_pipeline.latency import predictor

    torch.set_num_threads(1)
    space_name, shape, classes = DATASET_SHAPES[dataset]
    space = create_space(space_name)
    model = predictor(lambda genome: space.build(genome, shape, classes), shape, project)
    rng = random.Random(seed)
    predicted = [model.latency_ms(space.sample(rng)) for _ in range(genomes)]
    return round(float(np.percentile(predicted, percentile)), 5)


def winner_latency(summary: dict[str, Any]) -> dict[str, Any]:
    """The winner's latency at the search's batch size (1): predicted and measured by the search (from its handoff
    card), and measured again here, in this process, from the handed-over file."""
    from nas_pipeline.latency import open_session, steady_ms

    card = json.loads((Path(summary["best"]["handoff_path"]) / "model_card.json").read_text())
    predicted = card["latency"]["predicted"]
    again = steady_ms(open_session(Path(summary["best"]["onnx_path"])), predicted["batch_size"])
    return {"predicted_ms": predicted["predicted_ms"], "measured_ms": predicted["measured_ms"], "again_ms": round(again, 5)}


def run(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    project = scratch_project(root)
    console, rows = report_console(), []
    for dataset in args.datasets.split(","):
        data = dataset_flags(dataset, project)
        limit = latency_limit(project, dataset, args.genomes, args.percentile)
        console.print(f"{dataset}: limit {limit} ms (percentile {args.percentile:g} of {args.genomes} random genomes)")
        for strategy in args.strategies.split(","):
            outcomes, winners = [], []
            for seed in range(args.seeds):
                flags = [*data, "--strategy", strategy, "--max-latency-ms", str(limit), "--budget", str(args.budget),
                         "--population", str(args.population), "--epochs", str(args.epochs), "--seed", str(seed)]  # fmt: skip
                summary, wall = nas_search(project, root / f"{dataset}-{strategy}-{seed}", flags)
                best = summary["best"]
                winner = winner_latency(summary) | {"val_accuracy": best["val_accuracy"], "seconds": round(wall, 1)}
                winner["meets_limit"] = winner["measured_ms"] is not None and winner["measured_ms"] <= limit
                winner["meets_limit_again"] = winner["again_ms"] <= limit
                outcomes.append((float(best["val_accuracy"]), False))
                winners.append(winner)
                console.print(f"{dataset} {strategy} seed {seed}: best val {best['val_accuracy']:.4f}, winner "
                              f"{winner['predicted_ms']} ms predicted, {winner['measured_ms']} ms measured, "
                              f"{winner['again_ms']} ms again")  # fmt: skip
            row = summarise(strategy, args.budget, outcomes)
            row.pop("found_best_frac")
            met, again = sum(w["meets_limit"] for w in winners), sum(w["meets_limit_again"] for w in winners)
            rows.append(row | {"dataset": dataset, "limit_ms": limit, "winners": winners, "met_limit": met, "met_again": again})
    return rows


def print_table(rows: Sequence[dict[str, Any]], budget: int) -> None:
    table = Table(title=f"best validation accuracy after {budget} evaluations under a latency limit (real training)")
    columns = ("dataset", "limit ms", "strategy", "seeds", "mean ± std", "95% CI", "under the limit: card", "measured again")
    for column in columns:
        table.add_column(column, justify="left" if column in ("dataset", "strategy") else "right")
    for r in rows:
        low, high = r["ci95"]
        table.add_row(r["dataset"], f"{r['limit_ms']:.4g}", r["strategy"], str(r["seeds"]), f"{r['mean']:.4f} ± {r['std']:.4f}",
                      f"[{low:.4f}, {high:.4f}]", f"{r['met_limit']}/{r['seeds']}", f"{r['met_again']}/{r['seeds']}")  # fmt: skip
    report_console().print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_search_arguments(parser, "evolution,bo,random")
    parser.add_argument("--genomes", type=int, default=200, help="random genomes the limit's percentile is taken over")
    parser.add_argument("--percentile", type=float, default=30.0, help="the limit: this percentile of their latency")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nas-latency-bench-") as tmp:
        rows = run(args, Path(tmp))
    print_table(rows, args.budget)
    write_results(args, PACKAGES, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
