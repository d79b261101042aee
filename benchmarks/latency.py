"""The latency predictor against measured latency on the handoff runtime, and what measuring a candidate costs.

For each space (``image`` on digits-shaped inputs, 1 x 8 x 8 with 10 classes; ``sequence`` on 8 x 128 inputs with
10 classes, by default), ``--genomes`` random genomes are drawn (seeded). Each genome's latency at batch 1 is

- predicted by :class:`nas_core.latency.LatencyPredictor` from a part table that starts empty (timed with onnxruntime,
  one intra-op thread, as a search does), and
- measured: the network exported exactly as the handoff exports it (``torch.onnx`` dynamo exporter, onnx.checker,
  parity with PyTorch), then timed with onnxruntime on one pinned thread (median of 20 calls after 3 warm-up calls).

Reported per space: Spearman's rank correlation and the median relative error |predicted - measured| / measured,
the median seconds to export and time one genome (the cost of measuring every candidate) and to predict one (with
the table still filling, and from a full table), and the 1-minute load average while it ran (other work on the
machine makes microsecond timings noisy; rank figures suffer least).

    python benchmarks/latency.py --genomes 100 --json benchmarks/results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment, report_console  # noqa: E402

SPACES = {"image": (1, 8, 8), "sequence": (8, 128)}
CLASSES = 10
CANDIDATE_SECONDS = 5.0  # one candidate of the default search (digits, 12 epochs) on 2 cores: docs/benchmarks.md


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for value in np.unique(x):
        tied = x == value
        r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on the ranks)."""
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def run_space(name: str, shape: tuple[int, ...], genomes: int, seed: int, log: Any) -> dict[str, Any]:
    import torch

    from nas_core.spaces import create_space
    from nas_pipeline.latency import measure_network_ms, predictor

    torch.set_num_threads(1)
    space = create_space(name)
    rng = random.Random(seed)

    def build(genome: Any) -> Any:
        return space.build(genome, shape, CLASSES)

    rows, loads = [], []
    with tempfile.TemporaryDirectory() as folder:
        model = predictor(build, shape, Path(folder))
        for i in range(genomes):
            genome = space.sample(rng)
            start = time.perf_counter()
            predicted = model.latency_ms(genome)
            predict_s = time.perf_counter() - start
            start = time.perf_counter()
            model._cache.clear()  # noqa: SLF001 - a second prediction from the full table
            model.latency_ms(genome)
            warm_s = time.perf_counter() - start
            start = time.perf_counter()
            measured = measure_network_ms(build(genome), shape)
            measure_s = time.perf_counter() - start
            loads.append(os.getloadavg()[0])
            rows.append({"hash": genome.canonical_hash(), "predicted_ms": predicted, "measured_ms": measured,
                         "predict_seconds": predict_s, "predict_warm_seconds": warm_s, "measure_seconds": measure_s})  # fmt: skip
            log(f"{name} {i + 1}/{genomes}: predicted {predicted:.4f} ms, measured {measured:.4f} ms")
        parts = len(model.table.times)
    predicted, measured = [r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]
    return {
        "space": name,
        "input_shape": list(shape),
        "genomes": genomes,
        "spearman": round(spearman(predicted, measured), 4),
        "median_relative_error": round(statistics.median(abs(p - m) / m for p, m in zip(predicted, measured, strict=True)), 4),
        "median_measured_ms": round(statistics.median(measured), 4),
        "median_predicted_ms": round(statistics.median(predicted), 4),
        "median_measure_seconds": round(statistics.median(r["measure_seconds"] for r in rows), 3),
        "median_predict_seconds": round(statistics.median(r["predict_seconds"] for r in rows), 4),
        "median_predict_warm_seconds": round(statistics.median(r["predict_warm_seconds"] for r in rows), 5),
        "table_parts": parts,
        "load_average_median": round(statistics.median(loads), 2),
        "rows": rows,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genomes", type=int, default=100, help="random genomes per space")
    parser.add_argument("--spaces", default="image,sequence", help="comma-separated spaces (of: image, sequence)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = report_console()
    warnings.simplefilter("ignore")
    results = [run_space(s, SPACES[s], args.genomes, args.seed, console.log) for s in args.spaces.split(",")]
    table = Table(title="Latency predictor vs measured (onnxruntime, CPU, 1 thread, batch 1)")
    for column in ("space", "genomes", "Spearman", "median rel. error", "median measured ms", "measure s/genome",
                   "share of a 5 s candidate", "predict s/genome (filling)", "predict s (full table)", "load"):  # fmt: skip
        table.add_column(column)
    for r in results:
        table.add_row(
            r["space"], str(r["genomes"]), f"{r['spearman']:.3f}", f"{r['median_relative_error']:.1%}",
            f"{r['median_measured_ms']:.4f}", f"{r['median_measure_seconds']:.2f}",
            f"{r['median_measure_seconds'] / CANDIDATE_SECONDS:.0%}", f"{r['median_predict_seconds']:.3f}",
            f"{r['median_predict_warm_seconds']:.5f}", f"{r['load_average_median']:.1f}",
        )  # fmt: skip
    console.print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {"genomes": args.genomes, "seed": args.seed, "threads": 1, "batch_size": 1, "classes": CLASSES}
        document = {"results": results, "settings": settings, **environment(["torch", "onnxruntime", "onnx"])}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        console.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
