"""The default search under CPU load: busy loops hog every core while ``nas search`` runs several times in a row.

Prefect's temporary API server once failed to start under load ("Timed out while attempting to connect to
ephemeral Prefect API server", 20 s by default). ``nas search`` gives it 90 s
(``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, flows/cli.py). This script shows whether every search
still finishes: one row per run, with its exit code, wall time and last line.

    python benchmarks/under_load.py                  # 3 default searches, one busy loop per core
    python benchmarks/under_load.py --runs 3 --hogs 2 --json benchmarks/results/under_load.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment, scratch_project  # noqa: E402


def _spin() -> None:
    while True:
        pass


def run_search(project: Path, output: Path, flags: list[str]) -> dict[str, object]:
    """One ``nas search`` as a user starts it; exit code, wall seconds and its last line."""
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect"), "PYTHONPATH": str(REPO_ROOT)}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(key, None)
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "search", "--quiet", "--output", str(output), *flags],
        cwd=project, env=env, capture_output=True, text=True,
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines() or ["(no output)"]
    return {"exit_code": proc.returncode, "wall_seconds": round(time.perf_counter() - started, 1), "last_line": lines[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy loops (default: one per core)")
    parser.add_argument("--flags", default="", help="extra nas search flags, e.g. '--budget 8'")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    hogs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="nas-under-load-") as tmp:
            project = scratch_project(Path(tmp), prepare=False)  # the first search also prepares the data: under load
            for run in range(1, args.runs + 1):
                print(f"search {run} of {args.runs} with {args.hogs} busy loops ...", file=sys.stderr, flush=True)
                rows.append({"run": run, **run_search(project, Path(tmp) / f"run-{run}", args.flags.split())})
    finally:
        for hog in hogs:
            hog.terminate()
    table = Table(title=f"default search with {args.hogs} busy loops on {os.cpu_count()} cores")
    for column in ("run", "exit", "wall s", "last line"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["run"]), str(r["exit_code"]), f"{r['wall_seconds']:.0f}", str(r["last_line"])[:90])
    Console().print(table)
    if args.json:
        result = {**environment(("torch", "prefect", "mlflow")), "hogs": args.hogs, "flags": args.flags, "results": rows}
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
