"""Benchmark GPU packing: candidates per hour and GPU busy share at 1, 2, 4, 8 candidates per GPU, and ``auto``.

Every run is a real ``nas search`` (a subprocess) of the default image space on 3 x 32 x 32 data (an ``.npz`` of
random images with learnable labels written here: no download), on ``--device cuda``. ``candidates/h`` is the
candidates stage's throughput: candidates / ``timings["candidates"]``. ``busy`` is the mean GPU utilisation
(NVML, sampled every 0.2 s) while the search ran, from ``summary["gpus"]``. The issue's target is 3x the
candidates per hour of one candidate at a time, and GPU busy at least 70 %.

    python benchmarks/gpu_packing.py --json benchmarks/results/gpu_packing.json      # needs a CUDA GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment, nas_search, scratch_project  # noqa: E402


def write_images(path: Path, samples: int, seed: int = 0) -> Path:
    """``samples`` random 3 x 32 x 32 images in 10 classes, each class shifted by its own mean pattern (learnable)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, samples)
    patterns = rng.normal(0, 1, (10, 3, 32, 32)).astype(np.float32)
    x = (rng.normal(0, 1, (samples, 3, 32, 32)).astype(np.float32) + patterns[labels]).astype(np.float32)
    np.savez(path, x=x, y=labels.astype(np.int64))
    return path


def run(project: Path, data: Path, per_gpu: str, args: argparse.Namespace) -> dict[str, Any]:
    flags = ["--dataset", f"npz:{data}", "--budget", str(args.budget), "--population", str(args.population),
             "--epochs", str(args.epochs), "--device", "cuda", "--candidates-per-gpu", per_gpu, "--seed", "0"]  # fmt: skip
    summary, wall = nas_search(project, project / f"out-{per_gpu}", flags)
    candidates = len(summary["candidates"])
    stage = summary["timings"]["candidates"]
    devices = (summary.get("gpus") or {}).get("devices", {})
    busy = [d["busy_share"] for d in devices.values()]
    packing = (summary.get("gpus") or {}).get("candidates_per_gpu")
    return {
        "candidates_per_gpu": per_gpu,
        "candidates": candidates,
        "candidates_stage_seconds": stage,
        "candidates_per_hour": round(3600 * candidates / stage, 1),
        "gpu_busy_share": round(sum(busy) / len(busy), 4) if busy else None,
        "auto_tried": packing["tried"] if packing else None,
        "wall_seconds": round(wall, 1),
        "best_val_accuracy": summary["best"]["val_accuracy"] if summary["best"] else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-gpu", default="1,2,4,8,auto", help="comma-separated counts (default: 1,2,4,8,auto)")
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU is visible: this benchmark measures GPU packing and needs one", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-gpu-packing-") as tmp:
        project = scratch_project(Path(tmp), prepare=False)
        data = write_images(Path(tmp) / "images32.npz", args.samples)
        for per_gpu in args.per_gpu.split(","):
            print(f"{per_gpu} candidate(s) per GPU ...", file=sys.stderr, flush=True)
            rows.append(run(project, data, per_gpu, args))
    base = next((r["candidates_per_hour"] for r in rows if r["candidates_per_gpu"] == "1"), None)
    table = Table(title=f"GPU packing: {args.budget} candidates x {args.epochs} epochs, 3x32x32, {torch.cuda.get_device_name()}")
    for column in ("per GPU", "candidates/h", "vs 1", "GPU busy", "auto tried", "best val acc"):
        table.add_column(column, justify="right")
    for r in rows:
        speedup = f"{r['candidates_per_hour'] / base:.2f}x" if base else "-"
        busy = f"{100 * r['gpu_busy_share']:.0f} %" if r["gpu_busy_share"] is not None else "-"
        tried = ",".join(str(t[0]) for t in r["auto_tried"]) if r["auto_tried"] else ""
        table.add_row(r["candidates_per_gpu"], f"{r['candidates_per_hour']:.0f}", speedup, busy, tried,
                      f"{r['best_val_accuracy']:.4f}" if r["best_val_accuracy"] is not None else "-")  # fmt: skip
    Console().print(table)
    if args.json:
        settings = {k: getattr(args, k) for k in ("budget", "population", "epochs", "samples")}
        result = {**environment(("torch", "prefect", "mlflow")), "gpu": torch.cuda.get_device_name(), "settings": settings,
                  "results": rows}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
