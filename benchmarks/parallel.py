"""Benchmark parallel candidates: the same search with 1, 2, ... workers; wall time, candidates per minute, speedup.

Every run is a real ``nas search`` (a subprocess, as a user would start it) on the embedded digits data
with the same config and seed, in one scratch project (the data is prepared once). ``search s`` is the
search's own elapsed time from its summary (data check, training, tracking, export); ``wall s`` adds the
process start and Prefect's temporary server. Speedup compares search time with the 1-worker run of the
same runner.

    python benchmarks/parallel.py                      # threads and processes, 1 and 2 workers (CPU)
    python benchmarks/parallel.py --workers 1,2,4,8 --device cuda --runners threads   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment, nas_search, scratch_project  # noqa: E402


def run_search(project: Path, output: Path, runner: str, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """One ``nas search``; its summary plus the measured wall time."""
    flags = ["--budget", str(args.budget), "--epochs", str(args.epochs), "--population", str(args.population),
             "--seed", str(args.seed), "--workers", str(workers), "--runner", runner, "--device", args.device,
             "--candidates-per-gpu", str(args.candidates_per_gpu)]  # fmt: skip
    summary, wall = nas_search(project, output, flags)
    return {
        "runner": runner,
        "workers": workers,
        "wall_seconds": round(wall, 2),
        "search_seconds": summary["elapsed_seconds"],
        "candidates": len(summary["candidates"]),
        "ok": sum(c["status"] == "ok" for c in summary["candidates"]),
        "best_val_accuracy": summary["best"]["val_accuracy"] if summary["best"] else None,
        "best_test_accuracy": summary["best"]["test_accuracy"] if summary["best"] else None,
    }


def with_speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Candidates per minute and speedup against the same runner's fewest-workers run."""
    for row in rows:
        base = min((r for r in rows if r["runner"] == row["runner"]), key=lambda r: r["workers"])
        row["candidates_per_minute"] = round(60 * row["candidates"] / row["search_seconds"], 2)
        row["speedup"] = round(base["search_seconds"] / row["search_seconds"], 2)
    return rows


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("runner", "workers", "wall s", "search s", "candidates/min", "speedup", "ok", "best val acc"):
        table.add_column(column, justify="left" if column == "runner" else "right")
    for r in rows:
        best = f"{r['best_val_accuracy']:.4f}" if r["best_val_accuracy"] is not None else "-"
        table.add_row(
            r["runner"], str(r["workers"]), f"{r['wall_seconds']:.1f}", f"{r['search_seconds']:.1f}",
            f"{r['candidates_per_minute']:.1f}", f"{r['speedup']:.2f}x", f"{r['ok']}/{r['candidates']}", best,
        )  # fmt: skip
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: 1,2)")
    parser.add_argument("--runners", default="threads,processes", help="comma-separated runners (default: threads,processes)")
    parser.add_argument("--budget", type=int, default=20, help="candidates per search (default: 20, the default search)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or GPU indices")
    parser.add_argument("--candidates-per-gpu", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    runners = args.runners.split(",")
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-parallel-") as tmp:
        project = scratch_project(Path(tmp), prepare=False)
        for runner in runners:
            for count in workers:
                print(f"{runner}, {count} worker(s) ...", file=sys.stderr, flush=True)
                rows.append(run_search(project, Path(tmp) / f"{runner}-{count}", runner, count, args))
    rows = with_speedups(rows)
    settings = {k: getattr(args, k) for k in ("budget", "epochs", "population", "seed", "device", "candidates_per_gpu")}
    print_table(rows, f"parallel candidates: {args.budget} x {args.epochs} epochs on digits, device {args.device}")
    if args.json:
        result = {**environment(("torch", "prefect", "prefect-dask", "mlflow")), "settings": settings, "results": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
