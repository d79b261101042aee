"""Benchmark search overhead: the share of wall time not spent training candidates, and where it goes.

Every run is a real ``nas search`` (a subprocess, as a user would start it) on the embedded digits data, in
one scratch project whose data is prepared (``nas prepare``) before the first timed run. ``wall`` is the
process measured here; ``training`` is the union of the candidates' ``fit`` intervals (``train_started``
to ``train_ended`` in summary.json; candidates train in parallel); overhead = 1 - training / wall. The
stages come from the search's own ``summary["timings"]``: start-up is ``wall - elapsed_seconds`` (process
start, imports, Prefect's temporary server), ``candidates outside fit`` is the time of the candidates stage
not covered by any ``fit`` (MLflow runs, data loading, logging, plots, waiting). Figures are medians over
``--repeats`` runs.

    python benchmarks/overhead.py                          # the default search: 20 candidates x 12 epochs
    python benchmarks/overhead.py --repeats 3 --json overhead.json
    python benchmarks/overhead.py --stack                  # with `nas up` running in the scratch project
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from benchmarks.common import environment, median, nas_search, report_console, running_stack, scratch_project  # noqa: E402

TARGET_OVERHEAD_WALL, TARGET_OVERHEAD_OWN = 0.25, 0.15  # issue 14, with nas up: of the process's and the search's time
TARGET_PER_CANDIDATE = 0.1  # seconds a candidate spends outside its fit (issue 14)
PACKAGES = ("torch", "prefect", "mlflow", "dvc", "onnx", "onnxruntime")
# (key in the breakdown, label, what it covers); search stages are keys of summary["timings"]
STAGES = (
    ("startup", "start-up", "process start, imports, Prefect temporary server (wall - elapsed)"),
    ("prepare", "prepare", "dataset check, DVC check/add/push, MLflow parent run"),
    ("propose", "propose", "strategy proposals"),
    ("candidates_outside_fit", "candidates outside fit", "candidates stage not covered by any fit"),
    ("select", "select", "strategy update, checkpoint"),
    ("export", "export", "ONNX export and check, registry, handoff bundle"),
    ("final", "final", "final training of the best"),
    ("finish", "finish", "summary.json, parent plots, closing runs"),
    ("other", "other", "search time outside the stages above"),
)
SEARCH_STAGES = ("prepare", "propose", "candidates", "select", "export", "final", "finish")


# ---- the breakdown of one run -------------------------------------------------------------------


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by the intervals (overlaps counted once)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _number(mapping: dict[str, Any], key: str) -> float | None:
    value = mapping.get(key)
    return float(value) if isinstance(value, int | float) else None


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _total(values: Sequence[float | None]) -> float | None:
    """The sum, or None when there is nothing or something is missing."""
    present = [v for v in values if v is not None]
    return sum(present) if values and len(present) == len(values) else None


def breakdown(summary: dict[str, Any], wall: float) -> dict[str, float | None]:
    """Seconds per stage, training time and overhead share of one search (None where summary.json lacks the data)."""
    timings = summary.get("timings") or {}
    candidates = summary.get("candidates") or []
    elapsed = _number(summary, "elapsed_seconds")
    stages = {stage: _number(timings, stage) for stage in SEARCH_STAGES}
    stamps = [(_number(c, "train_started"), _number(c, "train_ended")) for c in candidates]
    complete = [(a, b) for a, b in stamps if a is not None and b is not None]
    training = union_seconds(complete) if candidates and len(complete) == len(candidates) else None
    outside_fit = _total([_difference(_number(c, "wall_seconds"), _number(c, "train_seconds")) for c in candidates])
    known = [v for v in stages.values() if v is not None]
    candidates_gap = _difference(stages["candidates"], training)
    return {
        "wall": wall,
        "elapsed": elapsed,
        "training": training,
        "overhead_share": None if training is None else 1 - training / wall,
        "startup": _difference(wall, elapsed),
        **stages,
        "candidates_outside_fit": None if candidates_gap is None else max(0.0, candidates_gap),
        "other": None if elapsed is None or not known else max(0.0, elapsed - sum(known)),
        "per_candidate_outside_fit": outside_fit,  # summed over candidates: they overlap in time
        "train_seconds_sum": _total([_number(c, "train_seconds") for c in candidates]),
        "candidate_count": float(len(candidates)),
        "latency_prediction": _number(timings, "latency_prediction"),  # inside propose and candidates
    }


def aggregate(runs: Sequence[dict[str, float | None]]) -> dict[str, float | None]:
    """Median of every key over the runs."""
    return {key: median(run.get(key) for run in runs) for key in runs[0]} if runs else {}


# ---- output -------------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _share(value: float | None, wall: float | None) -> str:
    return "-" if value is None or not wall else f"{100 * value / wall:.1f} %"


def print_report(result: dict[str, float | None], title: str, console: Console | None = None) -> None:
    console = console or report_console()
    wall = result.get("wall")
    table = Table(title=title)
    for column in ("stage", "seconds", "% of wall", "covers"):
        table.add_column(column, justify="right" if column in ("seconds", "% of wall") else "left")
    for key, label, covers in STAGES:
        table.add_row(label, _seconds(result.get(key)), _share(result.get(key), wall), covers)
    table.add_section()
    table.add_row(
        "training (fit)", _seconds(result.get("training")), _share(result.get("training"), wall), "union of the candidates' fit"
    )
    table.add_row("wall", _seconds(wall), "100.0 %", f"search's own elapsed: {_seconds(result.get('elapsed'))} s")
    console.print(table)
    per_candidate, count = result.get("per_candidate_outside_fit"), result.get("candidate_count")
    if per_candidate is not None and count:
        mean = per_candidate / count
        verdict = "[green]met[/green]" if mean < TARGET_PER_CANDIDATE else "[red]missed[/red]"
        console.print(
            f"per candidate outside fit: {mean:.2f} s on average (summed over workers: {per_candidate:.1f} s; "
            f"target < {TARGET_PER_CANDIDATE:g} s: {verdict})"
        )
    latency = result.get("latency_prediction")
    if latency is not None and count:
        console.print(
            f"latency prediction: {latency:.2f} s ({_share(latency, wall)} of wall, {latency / count:.3f} s per candidate; "
            "inside propose and candidates, timing new parts included)"
        )
    share, training, elapsed = result.get("overhead_share"), result.get("training"), result.get("elapsed")
    if share is None or training is None:
        console.print("overhead: - (summary.json has no train_started/train_ended per candidate)")
        return
    own = 1 - training / elapsed if elapsed else None
    for what, value, target in (("wall", share, TARGET_OVERHEAD_WALL), ("the search's own time", own, TARGET_OVERHEAD_OWN)):
        if value is not None:
            verdict = "[green]met[/green]" if value <= target else "[red]missed[/red]"
            console.print(f"overhead: {100 * value:.1f} % of {what} (target with nas up <= {100 * target:.0f} %: {verdict})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=20, help="candidates per search (default: 20, the default search)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per candidate (default: 12)")
    parser.add_argument("--repeats", type=int, default=1, help="searches to take the median of (default: 1)")
    parser.add_argument("--workers", type=int, default=None, help="candidates in parallel (default: nas search's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda or GPU indices (default: nas search's, auto)")
    parser.add_argument("--stack", action="store_true", help="run the searches with `nas up` running in the project")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    flags = ["--budget", str(args.budget), "--epochs", str(args.epochs), "--seed", str(args.seed)]
    flags += ["--workers", str(args.workers)] if args.workers else []
    flags += ["--device", args.device] if args.device else []
    runs = []
    with tempfile.TemporaryDirectory(prefix="nas-overhead-") as tmp:
        print("preparing the scratch project ...", file=sys.stderr, flush=True)
        project = scratch_project(Path(tmp))
        with running_stack(project) if args.stack else contextlib.nullcontext():
            for repeat in range(args.repeats):
                print(f"search {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                summary, wall = nas_search(project, Path(tmp) / f"run-{repeat}", flags)
                runs.append(breakdown(summary, wall))
    result = aggregate(runs)
    workers = args.workers or "default"
    servers = "nas up" if args.stack else "temporary Prefect server, MLflow on SQLite"
    print_report(
        result,
        f"search overhead: {args.budget} x {args.epochs} epochs on digits, {workers} workers, {servers}, "
        f"median of {args.repeats}",
    )
    if args.json:
        settings = {k: getattr(args, k) for k in ("budget", "epochs", "repeats", "workers", "seed", "device", "stack")}
        data = {**environment(PACKAGES), "settings": settings, "median": result, "runs": runs}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
