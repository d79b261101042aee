"""What every benchmark records beside its numbers: the machine, package versions and the git commit."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parents[1]


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(packages: Sequence[str]) -> dict[str, Any]:
    """Machine, versions of ``packages`` and the commit (with whether the tree had changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        )
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "versions": {p: package_version(p) for p in ("nas-pipeline", *packages)},
        "git_commit": commit,
        "git_dirty": dirty,
    }


# ---- running real searches in a scratch project -------------------------------------------------


def scratch_project(root: Path, prepare: bool = True) -> Path:
    """A fresh git repository with the project's .gitignore (and the digits data prepared and versioned)."""
    project = root / "project"
    project.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=project, check=True)
    (project / ".gitignore").write_text((REPO_ROOT / ".gitignore").read_text())
    if prepare:
        run_nas(project, ["prepare", "--project-dir", str(project)], "nas prepare")
    return project


def run_nas(project: Path, args: Sequence[str], what: str) -> float:
    """Run ``nas ARGS`` in ``project``; its wall time in seconds. A failure stops the benchmark with its last line."""
    env = {**os.environ, "PREFECT_HOME": str(project / ".prefect"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["(no output)"]
        raise SystemExit(f"{what} failed (exit {proc.returncode}): {lines[-1]}")
    return wall


def nas_search(project: Path, output: Path, flags: Sequence[str]) -> tuple[dict[str, Any], float]:
    """One ``nas search FLAGS`` into ``output``: its summary.json and the wall time measured around the process."""
    wall = run_nas(project, ["search", "--project-dir", str(project), "--output", str(output), "--quiet", *flags], "nas search")
    return json.loads((output / "summary.json").read_text()), wall


@contextlib.contextmanager
def running_stack(project: Path) -> Iterator[None]:
    """``nas up`` in ``project`` (free ports) for the block, ``nas down`` after: searches there use its servers."""
    from flows.temporary_server import free_local_port

    ports = [f"--{name}-port={free_local_port()}" for name in ("prefect", "mlflow", "worker")]
    run_nas(project, ["up", "--project-dir", str(project), *ports], "nas up")
    try:
        yield
    finally:
        run_nas(project, ["down", "--project-dir", str(project)], "nas down")


def report_console() -> Console:
    """The console for result tables: the terminal's width, or 160 columns in a pipe or log (rich's default is 80)."""
    return Console(width=None if sys.stdout.isatty() else 160)


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# ---- benchmark datasets: the embedded digits, and a generated sequence task ----------------------

SEQUENCE_FILE = "sequences.npz"
DATASET_SHAPES = {"digits": ("image", (1, 8, 8), 10), "seq": ("sequence", (2, 64), 4)}  # space, input shape, classes


def write_sequences(path: Path, n: int = 1200, classes: int = 4, channels: int = 2, length: int = 64, seed: int = 0) -> Path:
    """A seeded sequence task: channel 0 is a noisy sine whose frequency the class sets; the others are noise."""
    import numpy as np  # here: the other benchmarks import this module without needing numpy up front

    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    t = np.arange(length) / length
    frequency = 3.0 + 0.75 * y[:, None]
    phase, amplitude = rng.uniform(0, 2 * np.pi, (n, 1)), rng.uniform(0.5, 1.5, (n, 1))
    x = rng.normal(0.0, 1.2, (n, channels, length))
    x[:, 0, :] += amplitude * np.sin(2 * np.pi * frequency * t + phase)
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))
    return path


def dataset_flags(name: str, project: Path) -> list[str]:
    """The ``nas search`` flags of a benchmark dataset (the sequence file is written on first use)."""
    if name == "digits":
        return ["--dataset", "digits"]
    if name == "seq":
        path = project / SEQUENCE_FILE
        if not path.exists():
            write_sequences(path)
        return ["--dataset", f"npz:{path}"]
    raise SystemExit(f"unknown dataset '{name}' (known: digits, seq)")


def add_search_arguments(parser: argparse.ArgumentParser, strategies: str) -> None:
    """The flags of the benchmarks that run real searches on ``DATASET_SHAPES``: datasets, strategies, seeds, budget,
    population, epochs and ``--json``."""
    parser.add_argument("--datasets", default="digits,seq", help="comma-separated: digits, seq")
    parser.add_argument("--strategies", default=strategies, help="comma-separated strategies")
    parser.add_argument("--seeds", type=int, default=5, help="searches per dataset and strategy (seeds 0 .. N-1)")
    parser.add_argument("--budget", type=int, default=8, help="evaluations per search")
    parser.add_argument("--population", type=int, default=2, help="evaluations per generation")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per evaluation")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def write_results(args: argparse.Namespace, packages: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """``args.json`` (when given): the machine and versions, the settings and the result rows."""
    if args.json is None:
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    record = {"environment": environment(packages), "settings": settings, "results": list(rows)}
    args.json.write_text(json.dumps(record, indent=2) + "\n")
