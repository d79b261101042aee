"""Benchmark how fast ``nas`` answers bad input, ``nas validate`` and the help: wall time of each command as a user runs it.

Each command is a fresh process of the ``nas`` console script (``python -m flows.cli`` when the script is not
installed beside this Python), run ``--repeats`` times in a scratch folder; the table shows the median, min and max
wall time, measured around the process, its median CPU time (user + system, which a busy machine inflates less than
the wall time) and the exit code it gave. Two reference rows show what any command pays: the interpreter alone and
``import torch``. The machine's load average is printed (and saved) with the figures, since a busy machine slows
every row. Target: every ``nas`` row under 1 s on an idle machine.

    python benchmarks/startup.py
    python benchmarks/startup.py --repeats 5 --json startup.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from benchmarks.common import environment, median, report_console  # noqa: E402

TARGET_SECONDS = 1.0
PACKAGES = ("torch", "prefect", "mlflow", "typer", "pydantic")
GENOME = REPO_ROOT / "docs" / "examples" / "genome.json"
BAD_CONFIG = "bad.yaml"  # written into the scratch folder: a setting with an unknown value
# (label, arguments of nas, expected exit code)
COMMANDS: tuple[tuple[str, tuple[str, ...], int], ...] = (
    ("nas --help", ("--help",), 0),
    ("nas search --help", ("search", "--help"), 0),
    ("nas search --strategy nope", ("search", "--strategy", "nope"), 2),
    ("nas search --time-budget 5x", ("search", "--time-budget", "5x"), 2),
    ("nas search --config bad.yaml (space: nope)", ("search", "--config", BAD_CONFIG), 2),
    ("nas validate docs/examples/genome.json", ("validate", str(GENOME)), 0),
)
REFERENCES = (("python -c pass (reference)", ("-c", "pass")), ("python -c 'import torch' (reference)", ("-c", "import torch")))


def nas_command() -> list[str]:
    """The ``nas`` console script beside this Python, else the module it runs."""
    script = Path(sys.executable).parent / "nas"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "flows.cli"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_runs(command: Sequence[str], repeats: int, cwd: Path) -> tuple[list[float], list[float], int]:
    """Wall and CPU seconds of ``repeats`` runs of ``command``, and the exit code of the last."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PREFECT_HOME": str(cwd / ".prefect")}
    env.pop("NAS_DEBUG", None)
    walls, cpus, code = [], [], 0
    for _ in range(repeats):
        started, cpu = time.perf_counter(), _children_cpu()
        code = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
        walls.append(time.perf_counter() - started)
        cpus.append(_children_cpu() - cpu)
    return walls, cpus, code


def measure(repeats: int, references: bool = True) -> list[dict[str, Any]]:
    """One row per command: label, exit code (and the expected one), median, min and max wall seconds, median CPU."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-startup-") as tmp:
        folder = Path(tmp)
        (folder / BAD_CONFIG).write_text("space: nope\n")
        cases = [(label, [*nas_command(), *args], expected) for label, args, expected in COMMANDS]
        if references:
            cases += [(label, [sys.executable, *args], 0) for label, args in REFERENCES]
        for label, command, expected in cases:
            print(f"{label} ...", file=sys.stderr, flush=True)
            times, cpus, code = timed_runs(command, repeats, folder)
            rows.append({"command": label, "exit": code, "expected_exit": expected, "median": median(times),
                         "min": min(times), "max": max(times), "cpu_median": median(cpus), "runs": times})  # fmt: skip
    return rows


def print_table(rows: Sequence[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("command", "exit", "median s", "min s", "max s", "CPU s", f"< {TARGET_SECONDS:g} s"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for row in rows:
        reference = "reference" in row["command"]
        met = "" if reference else ("yes" if row["median"] < TARGET_SECONDS else "no")
        seconds = [f"{row[key]:.2f}" for key in ("median", "min", "max", "cpu_median")]
        table.add_row(row["command"], str(row["exit"]), *seconds, met)
    report_console().print(table)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command (default: 5; the median is shown)")
    parser.add_argument("--no-references", action="store_true", help="leave out the interpreter and import-torch rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rows = measure(args.repeats, references=not args.no_references)
    load_after = os.getloadavg()
    loads = f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs"
    print_table(rows, f"nas start-up: wall time of a fresh process, median of {args.repeats} ({loads})")
    wrong = [row["command"] for row in rows if row["exit"] != row["expected_exit"]]
    if wrong:
        print(f"unexpected exit code: {', '.join(wrong)}", file=sys.stderr)
    if args.json:
        data = {**environment(PACKAGES), "repeats": args.repeats, "load_average": {"before": load_before, "after": load_after},
                "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
