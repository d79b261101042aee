"""Benchmark the trainer: samples per second of ``nas_core.evaluation.training.fit`` vs a plain PyTorch loop.

Both train the same network (a genome built by ``nas_core.builder.build_model`` from the same seed) on the
same data, device, epochs, batch size, optimizer (AdamW) and cosine schedule, and validate once per epoch.
The plain loop is what a user would write: ``DataLoader(TensorDataset(x, y), batch_size, shuffle=True)``,
each batch moved to the device, forward, loss, backward, step, the schedule stepped per epoch, validation
accuracy at the end of every epoch. The trainer runs with its defaults (on CUDA: bf16 autocast and
channels-last) unless ``--precision`` / ``--channels-last`` say otherwise. Throughput is training samples x
epochs over the wall time of the whole call (setup, validation, and for the trainer also FLOP counting, the
test split and the resumable state), the median of ``--repeats`` runs after a one-epoch warm-up of each.
Workloads: scikit-learn's 8x8 digits (prepared as a search prepares them) and a synthetic CIFAR-sized set
(3x32x32, 10 classes, learnable patterns).

    python3 benchmarks/train_throughput.py --threads 1 --sampled 2 --workloads digits      # CPU
    python3 benchmarks/train_throughput.py --threads 1 --workloads synthetic-cifar --synthetic-samples 3000 --epochs 4
    python3 benchmarks/train_throughput.py --device cuda --sampled 2 --json gpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment  # noqa: E402
from nas_core.builder import build_model  # noqa: E402
from nas_core.data.preparation import PreparedData, load_prepared, prepare_dataset  # noqa: E402
from nas_core.evaluation.training import PRECISIONS, TrainConfig, fit  # noqa: E402
from nas_core.genome import Genome  # noqa: E402
from nas_core.spaces.image import ImageSpace  # noqa: E402

TARGETS = {"cpu": 1.0, "cuda": 1.3}

# A mid-sized genome of the image space: conv -> sepconv (stride 2) -> conv -> maxpool (stride 2), one skip.
MID_GENOME = {
    "nodes": [
        {"id": "input", "op": "input"},
        {"id": "c1", "op": "conv", "settings": {"kernel": 3, "channels": 32, "stride": 1}},
        {"id": "s2", "op": "sepconv", "settings": {"kernel": 3, "channels": 64, "stride": 2}},
        {"id": "c3", "op": "conv", "settings": {"kernel": 3, "channels": 64, "stride": 1}},
        {"id": "p4", "op": "maxpool", "settings": {"kernel": 3, "stride": 2}},
        {"id": "output", "op": "output"},
    ],
    "edges": [["input", "c1"], ["c1", "s2"], ["s2", "c3"], ["c3", "p4"], ["p4", "output"], ["s2", "output"]],
}


def digits_data() -> PreparedData:
    """The digits splits exactly as a search prepares them."""
    with tempfile.TemporaryDirectory(prefix="nas-bench-digits-") as tmp:
        prepare_dataset("digits", Path(tmp))
        return load_prepared(Path(tmp), "digits")


def synthetic_cifar(samples: int, seed: int = 0) -> PreparedData:
    """3x32x32 images in [0, 1] of 10 classes: a class's blocky random pattern, shifted up to 4 pixels, faint in noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(10, 3, 4, 4)).repeat(8, axis=2).repeat(8, axis=3)
    labels = rng.permutation(np.arange(samples) % 10)
    shifts = rng.integers(-4, 5, size=(samples, 2))
    images = np.stack([np.roll(patterns[c], tuple(s), axis=(1, 2)) for c, s in zip(labels, shifts, strict=True)])
    images = np.clip(0.5 + 0.04 * images + 0.25 * rng.normal(size=images.shape), 0.0, 1.0).astype(np.float32)
    cut = [0, int(0.6 * samples), int(0.8 * samples), samples]
    split = {s: slice(cut[i], cut[i + 1]) for i, s in enumerate(("train", "val", "test"))}
    train = images[split["train"]]
    return PreparedData(
        name="synthetic-cifar",
        x={s: images[part] for s, part in split.items()},
        y={s: labels[part].astype(np.int64) for s, part in split.items()},
        input_shape=(3, 32, 32),
        num_classes=10,
        classes=[str(c) for c in range(10)],
        mean=train.mean(axis=(0, 2, 3)).tolist(),
        std=train.std(axis=(0, 2, 3)).tolist(),
        source="synthetic",
    )


def plain_loop(model: nn.Module, data: PreparedData, config: TrainConfig) -> float:
    """A hand-written PyTorch training loop; returns the last epoch's validation accuracy."""
    device = torch.device(config.device)
    model.to(device)
    train = DataLoader(
        TensorDataset(torch.from_numpy(data.x["train"]), torch.from_numpy(data.y["train"])), config.batch_size, shuffle=True
    )
    val = DataLoader(TensorDataset(torch.from_numpy(data.x["val"]), torch.from_numpy(data.y["val"])), 512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    val_accuracy = 0.0
    for _ in range(config.epochs):
        model.train()
        for x, y in train:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += (model(x.to(device)).argmax(dim=1) == y.to(device)).sum().item()
        val_accuracy = correct / len(val.dataset)
    return val_accuracy


def trainer(model: nn.Module, data: PreparedData, config: TrainConfig) -> float:
    result = fit(model, data, config)
    if result.status != "ok":
        raise SystemExit(f"the trainer failed: {result.reason}")
    return result.val_accuracy


def timed(
    run: Callable[[nn.Module, PreparedData, TrainConfig], float], genome: Genome, data: PreparedData, config: TrainConfig
) -> tuple[float, float]:
    """(seconds, val accuracy) of one run on a freshly built model (same seed, so same initial weights)."""
    torch.manual_seed(config.seed)  # weight init, and the plain loop's shuffling
    model = build_model(genome, data.input_shape, data.num_classes, data.mean, data.std)
    sync = torch.cuda.synchronize if config.device.startswith("cuda") else (lambda: None)
    sync()
    started = time.perf_counter()
    val_accuracy = run(model, data, config)
    sync()
    return time.perf_counter() - started, val_accuracy


def measure(workload: str, label: str, genome: Genome, data: PreparedData, args: argparse.Namespace) -> dict[str, Any]:
    """Median samples/s of the trainer and the plain loop (runs interleaved), after a one-epoch warm-up of each."""
    layout = {"auto": None, "on": True, "off": False}[args.channels_last]
    config = TrainConfig(
        args.epochs, args.batch_size, device=args.device, seed=args.seed, precision=args.precision, channels_last=layout
    )
    warmup = dataclasses.replace(config, epochs=1)
    loops = {"trainer": trainer, "plain": plain_loop}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in loops}
    for run in loops.values():
        timed(run, genome, data, warmup)
    for _ in range(args.repeats):
        for name, run in loops.items():
            runs[name].append(timed(run, genome, data, config))
    samples = len(data.y["train"]) * args.epochs
    speed = {name: statistics.median(samples / seconds for seconds, _ in r) for name, r in runs.items()}
    return {
        "workload": workload,
        "genome": label,
        "device": args.device,
        "train_samples": len(data.y["train"]),
        "epochs": args.epochs,
        "trainer_samples_per_s": round(speed["trainer"], 1),
        "plain_samples_per_s": round(speed["plain"], 1),
        "ratio": round(speed["trainer"] / speed["plain"], 3),
        "target": TARGETS.get(torch.device(args.device).type, 1.0),
        "trainer_val_accuracy": runs["trainer"][-1][1],
        "plain_val_accuracy": runs["plain"][-1][1],
        "trainer_seconds": [round(s, 3) for s, _ in runs["trainer"]],
        "plain_seconds": [round(s, 3) for s, _ in runs["plain"]],
    }


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    labels = ("workload", "genome", "device")
    for column in (*labels, "trainer samples/s", "plain samples/s", "ratio", "target", "val acc trainer / plain"):
        table.add_column(column, justify="left" if column in labels else "right")
    for r in rows:
        mark = "ok" if r["ratio"] >= r["target"] else "below"
        table.add_row(
            r["workload"], r["genome"], r["device"], f"{r['trainer_samples_per_s']:,.0f}", f"{r['plain_samples_per_s']:,.0f}",
            f"{r['ratio']:.2f}x", f">= {r['target']:.1f} ({mark})",
            f"{r['trainer_val_accuracy']:.4f} / {r['plain_val_accuracy']:.4f}",
        )  # fmt: skip
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--workloads", default="digits,synthetic-cifar", help="comma-separated (default: digits,synthetic-cifar)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run (default: 12, as a search)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each loop; the median counts (default: 3)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--synthetic-samples", type=int, default=10_000, help="synthetic set size, all splits (default: 10000)")
    parser.add_argument("--sampled", type=int, default=0, help="also this many genomes sampled from the image space (default: 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="the trainer's precision (default: auto)")
    parser.add_argument(
        "--channels-last", default="auto", choices=("auto", "on", "off"), help="the trainer's layout (default: auto)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaders = {"digits": digits_data, "synthetic-cifar": lambda: synthetic_cifar(args.synthetic_samples, args.seed)}
    workloads = args.workloads.split(",")
    if unknown := [w for w in workloads if w not in loaders]:
        raise SystemExit(f"unknown workloads {unknown} (known: {', '.join(loaders)})")
    rng = random.Random(args.seed)
    genomes = {"mid": Genome.from_dict(MID_GENOME).validate()}
    genomes |= {f"sampled-{i}": ImageSpace().sample(rng) for i in range(args.sampled)}
    rows = []
    for workload in workloads:
        data = loaders[workload]()
        for label, genome in genomes.items():
            print(f"{workload}, {label} ...", file=sys.stderr, flush=True)
            rows.append(measure(workload, label, genome, data, args))
    gpu = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else None
    title = f"trainer ({args.precision}, channels-last {args.channels_last}) vs plain PyTorch loop"
    print_table(rows, f"{title}: {args.epochs} epochs, batch {args.batch_size}, {gpu or 'CPU'}")
    if args.json:
        keys = (
            "device",
            "epochs",
            "repeats",
            "batch_size",
            "synthetic_samples",
            "sampled",
            "seed",
            "threads",
            "precision",
            "channels_last",
        )
        result = {
            **environment(("torch", "numpy", "scikit-learn")),
            "gpu": gpu,
            "torch_threads": torch.get_num_threads(),
            "settings": {k: getattr(args, k) for k in keys},
            "genomes": {label: g.to_dict() for label, g in genomes.items()},
            "results": rows,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
