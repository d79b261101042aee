"""Benchmark time to accuracy: how soon a search first reaches a test accuracy, full fidelity vs multi-fidelity.

For every strategy and seed, two real ``nas search`` runs (subprocesses) on the embedded digits data, in one
scratch project whose data is prepared once: full fidelity (every candidate trains ``--epochs``) and
multi-fidelity (``--fidelity epochs``: successive halving from ``--min-epochs`` to ``--max-epochs``). The
time to reach a target T is the earliest ``finished_seconds`` (seconds since the search started, from
summary.json) of a successful evaluation with ``test_accuracy >= T``, at any fidelity. The target is the
full-fidelity run's best test accuracy minus ``--tolerance``, per strategy and seed, or ``--target``.
Figures are medians over seeds (a run that never reaches the target counts as infinitely slow).

    python benchmarks/time_to_accuracy.py                              # evolution, random, bo; seed 0
    python benchmarks/time_to_accuracy.py --strategies bo --seeds 0,1,2 --json tta.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment, median, nas_search, report_console, scratch_project  # noqa: E402

TARGET_RATIO = 0.5
PACKAGES = ("torch", "prefect", "mlflow", "optuna")


def _reached(candidates: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Successful evaluations with a test accuracy and a finish time."""
    return [
        c
        for c in candidates
        if c.get("status") == "ok" and c.get("test_accuracy") is not None and c.get("finished_seconds") is not None
    ]


def best_test_accuracy(candidates: Iterable[dict[str, Any]]) -> float | None:
    """The best test accuracy any successful evaluation reached."""
    return max((c["test_accuracy"] for c in _reached(candidates)), default=None)


def time_to_target(candidates: Iterable[dict[str, Any]], target: float) -> float | None:
    """Seconds from the search's start until an evaluation first reached ``target`` test accuracy (None: never)."""
    return min((c["finished_seconds"] for c in _reached(candidates) if c["test_accuracy"] >= target), default=None)


def compare(
    strategy: str, seed: int, full: dict[str, Any], multi: dict[str, Any], target: float | None, tolerance: float
) -> dict[str, Any]:
    """One seed's full-fidelity and multi-fidelity summaries side by side."""
    ff_best, mf_best = best_test_accuracy(full.get("candidates", [])), best_test_accuracy(multi.get("candidates", []))
    if target is None:
        target = None if ff_best is None else ff_best - tolerance
    return {
        "strategy": strategy,
        "seed": seed,
        "target": target,
        "ff_best_test": ff_best,
        "mf_best_test": mf_best,
        "ff_seconds": None if target is None else time_to_target(full.get("candidates", []), target),
        "mf_seconds": None if target is None else time_to_target(multi.get("candidates", []), target),
        "ff_elapsed": full.get("elapsed_seconds"),
        "mf_elapsed": multi.get("elapsed_seconds"),
        "ff_evaluations": len(full.get("candidates", [])),
        "mf_evaluations": len(multi.get("candidates", [])),
    }


def _median_time(values: Sequence[float | None]) -> float | None:
    """Median where None (never reached) is slower than anything; None when that median is never."""
    if not values:
        return None
    middle = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(middle) else middle


def summarise(strategy: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over seeds for one strategy, and the ratio of the median times MF / FF."""
    ff, mf = _median_time([r["ff_seconds"] for r in rows]), _median_time([r["mf_seconds"] for r in rows])
    return {
        "strategy": strategy,
        "seeds": len(rows),
        **{key: median(r[key] for r in rows) for key in ("target", "ff_best_test", "mf_best_test", "ff_elapsed", "mf_elapsed")},
        "ff_seconds": ff,
        "mf_seconds": mf,
        "ratio": None if ff is None or mf is None or ff == 0 else mf / ff,
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: Sequence[dict[str, Any]], title: str, console: Console | None = None) -> None:
    console = console or report_console()
    table = Table(title=title)
    columns = ("strategy", "target", "FF best test", "MF best test", "FF s to target", "MF s to target", "MF/FF",
               "FF elapsed s", "MF elapsed s")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for r in rows:
        ratio = _fmt(r["ratio"], ".2f") if r["mf_seconds"] is not None or r["ff_seconds"] is None else "never"
        table.add_row(
            r["strategy"], _fmt(r["target"], ".4f"), _fmt(r["ff_best_test"], ".4f"), _fmt(r["mf_best_test"], ".4f"),
            _fmt(r["ff_seconds"], ".1f"), _fmt(r["mf_seconds"], ".1f"), ratio, _fmt(r["ff_elapsed"], ".1f"),
            _fmt(r["mf_elapsed"], ".1f"),
        )  # fmt: skip
    console.print(table)
    for r in rows:
        met = r["ratio"] is not None and r["ratio"] <= TARGET_RATIO
        verdict = "[green]met[/green]" if met else "[red]missed[/red]"
        console.print(f"{r['strategy']}: MF/FF time to target {_fmt(r['ratio'], '.2f')} (target <= {TARGET_RATIO}: {verdict})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="evolution,random,bo", help="comma-separated (default: evolution,random,bo)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; figures are medians (default: 0)")
    parser.add_argument("--budget", type=int, default=20, help="full-fidelity candidates (default: 20, the default search)")
    parser.add_argument("--epochs", type=int, default=12, help="full-fidelity epochs (default: 12)")
    parser.add_argument("--mf-budget", type=int, default=None, help="multi-fidelity --budget (default: --budget)")
    parser.add_argument("--min-epochs", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--target", type=float, default=None, help="fixed test accuracy to reach (default: FF best - tolerance)")
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--workers", type=int, default=None, help="candidates in parallel (default: nas search's)")
    parser.add_argument("--device", default=None, help="cpu, cuda or GPU indices (default: nas search's, auto)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    strategies, seeds = args.strategies.split(","), [int(s) for s in args.seeds.split(",")]
    common = ["--epochs", str(args.epochs)]
    common += ["--workers", str(args.workers)] if args.workers else []
    common += ["--device", args.device] if args.device else []
    multi = ["--budget", str(args.mf_budget or args.budget), "--fidelity", "epochs", "--min-epochs", str(args.min_epochs),
             "--max-epochs", str(args.max_epochs or args.epochs), "--eta", str(args.eta)]  # fmt: skip
    runs = []
    with tempfile.TemporaryDirectory(prefix="nas-tta-") as tmp:
        print("preparing the scratch project ...", file=sys.stderr, flush=True)
        project = scratch_project(Path(tmp))
        for seed in seeds:
            for strategy in strategies:
                run = ["--strategy", strategy, "--seed", str(seed), *common]
                print(f"{strategy}, seed {seed}: full fidelity ...", file=sys.stderr, flush=True)
                full, _ = nas_search(project, Path(tmp) / f"{strategy}-{seed}-ff", [*run, "--budget", str(args.budget)])
                print(f"{strategy}, seed {seed}: multi-fidelity ...", file=sys.stderr, flush=True)
                mf, _ = nas_search(project, Path(tmp) / f"{strategy}-{seed}-mf", [*run, *multi])
                runs.append(compare(strategy, seed, full, mf, args.target, args.tolerance))
    rows = [summarise(s, [r for r in runs if r["strategy"] == s]) for s in strategies]
    target = f"{args.target:.4f}" if args.target is not None else f"FF best - {args.tolerance}"
    print_table(
        rows, f"time to test accuracy {target} on digits: FF {args.budget} x {args.epochs} epochs vs MF, seeds {args.seeds}"
    )
    if args.json:
        settings = {k: getattr(args, k) for k in ("strategies", "seeds", "budget", "epochs", "mf_budget", "min_epochs",
                                                  "max_epochs", "eta", "target", "tolerance", "workers", "device")}  # fmt: skip
        data = {**environment(PACKAGES), "settings": settings, "results": rows, "runs": runs}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
