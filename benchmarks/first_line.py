"""How soon the default search shows its first lines: with ``nas up`` running, and with Prefect's temporary server.

In a scratch project (digits prepared first), the default ``nas search`` is started ``--repeats`` times per mode
and stopped (SIGINT, as Ctrl-C) once its first candidate line (``[  1/20] ...``) is printed. Measured from the
launch of the process: the header line (``search <id>: ...``, printed once the settings are read) and the first
candidate line (printed when the first candidate has trained: 12 epochs of the fastest of the first generation).
Modes: ``stack`` (``nas up`` in the project, on free ports; ``nas down`` after) and ``temporary`` (no servers:
Prefect starts its temporary server inside the search). Medians, with the 1-minute load average.

    python benchmarks/first_line.py --repeats 3 --json benchmarks/results/first_line.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment, median, report_console, running_stack, scratch_project  # noqa: E402

TARGET_SECONDS = 5.0  # issue 14: the first candidate line within 5 s of launch, with nas up running
PACKAGES = ("torch", "prefect", "mlflow")
CANDIDATE_PREFIX = "[  1/"


def first_lines(project: Path, timeout: float = 300.0) -> dict[str, float | None]:
    """Seconds from launch to the header line and to the first candidate line of one default search (then stopped)."""
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect"), "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(key, None)
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "search", "--project-dir", str(project)], cwd=project,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    header = candidate = None
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.perf_counter() - started
        if header is None and line.startswith("search "):
            header = now
        if line.startswith(CANDIDATE_PREFIX):
            candidate = now
            break
        if now > timeout:
            break
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    return {"header_seconds": header, "first_candidate_seconds": candidate, "load_average": os.getloadavg()[0]}


def run(repeats: int, root: Path) -> list[dict[str, Any]]:
    project = scratch_project(root)
    rows = []
    for mode in ("stack", "temporary"):
        with running_stack(project) if mode == "stack" else contextlib.nullcontext():
            runs = [first_lines(project) for _ in range(repeats)]
        rows.append({
            "mode": mode, "runs": runs,
            **{key: median(r[key] for r in runs) for key in ("header_seconds", "first_candidate_seconds", "load_average")},
        })  # fmt: skip
    return rows


def print_table(rows: Sequence[dict[str, Any]]) -> None:
    table = Table(title="the default search's first lines, seconds from launch (median)")
    for column in ("servers", "header line", "first candidate line", f"target < {TARGET_SECONDS:g} s", "load"):
        table.add_column(column, justify="left" if column == "servers" else "right")
    for r in rows:
        first = r["first_candidate_seconds"]
        verdict = "-" if first is None or r["mode"] != "stack" else ("met" if first < TARGET_SECONDS else "missed")
        table.add_row("nas up" if r["mode"] == "stack" else "temporary server", f"{r['header_seconds']:.2f}",
                      "-" if first is None else f"{first:.2f}", verdict, f"{r['load_average']:.2f}")  # fmt: skip
    report_console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="searches per mode")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nas-first-line-") as tmp:
        rows = run(args.repeats, Path(tmp))
    print_table(rows)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {"environment": environment(PACKAGES), "repeats": args.repeats, "results": rows}
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
