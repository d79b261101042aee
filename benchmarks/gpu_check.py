"""Check the trainer's GPU path on a CUDA machine: precision, memory layout, host syncs, results vs fp32.

For one mid-sized image-space network on synthetic CIFAR-sized data (3x32x32, 10 classes), trains with
``fit`` under each precision (fp32, bf16, fp16) and with channels-last on and off, and prints per run:
the autocast dtype seen by the convolutions, the weights' memory format during training, the number of
host synchronisations CUDA reported while training (``torch.cuda.set_sync_debug_mode('warn')``) against
the number of optimizer steps, the wall time, and the validation accuracy (which must match fp32 within
noise). Also runs the zero-cost proxies on the GPU. Needs only torch, numpy, scikit-learn and rich.

    python3 benchmarks/gpu_check.py --json gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import environment  # noqa: E402
from benchmarks.train_throughput import MID_GENOME, synthetic_cifar  # noqa: E402
from nas_core.builder import build_model  # noqa: E402
from nas_core.evaluation.proxies import PROXIES, proxy_score  # noqa: E402
from nas_core.evaluation.training import TrainConfig, fit  # noqa: E402
from nas_core.genome import Genome  # noqa: E402


def _observe(model: torch.nn.Module) -> dict[str, Any]:
    """Record the dtype conv outputs have and the first conv weight's memory format, during training."""
    seen: dict[str, Any] = {}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training and "dtype" not in seen:
            seen["dtype"] = str(output.dtype).removeprefix("torch.")
            seen["channels_last"] = module.weight.is_contiguous(memory_format=torch.channels_last) and module.weight.dim() == 4

    conv.register_forward_hook(hook)
    return seen


def run(precision: str, channels_last: bool | None, data: Any, epochs: int, batch_size: int, device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(Genome.from_dict(MID_GENOME), data.input_shape, data.num_classes, data.mean, data.std)
    seen = _observe(model)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, device=device, precision=precision, channels_last=channels_last)
    cuda = device.startswith("cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        try:
            started = time.perf_counter()
            result = fit(model, data, config)
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    n = len(data.x["train"])
    steps = epochs * max(1, n // batch_size + (n % batch_size > 1))
    return {
        "precision": precision,
        "channels_last": channels_last,
        "status": result.status,
        "reason": result.reason,
        "autocast_dtype": seen.get("dtype"),
        "weights_channels_last": seen.get("channels_last"),
        "host_syncs": syncs,
        "optimizer_steps": steps,
        "seconds": round(seconds, 3),
        "val_accuracy": result.val_accuracy,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script itself")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible; this check needs a GPU", file=sys.stderr)
        return 2
    data = synthetic_cifar(args.samples)
    run("fp32", False, data, 1, args.batch_size, args.device)  # warm-up (cuDNN autotuning, allocator), not reported
    runs = [
        run(precision, layout, data, args.epochs, args.batch_size, args.device)
        for precision, layout in [
            ("fp32", False),
            ("fp32", None),
            ("bf16", None),
            ("fp16", None),
            ("auto", None),
            ("auto", False),
        ]
    ]
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    table = Table(title=f"trainer on {name} ({args.epochs} epochs, batch {args.batch_size})")
    for column in ("precision", "channels_last", "autocast dtype", "weights NHWC", "host syncs / steps", "s", "val acc"):
        table.add_column(column)
    for r in runs:
        table.add_row(
            r["precision"], str(r["channels_last"]), str(r["autocast_dtype"]), str(r["weights_channels_last"]),
            f"{r['host_syncs']} / {r['optimizer_steps']}", f"{r['seconds']:.2f}", f"{r['val_accuracy']:.4f}",
        )  # fmt: skip
    console = Console()
    console.print(table)
    model = build_model(Genome.from_dict(MID_GENOME), data.input_shape, data.num_classes, data.mean, data.std).to(args.device)
    x = torch.from_numpy(data.x["train"][:64]).to(args.device)
    y = torch.from_numpy(data.y["train"][:64]).to(args.device)
    proxies = {name: proxy_score(name, model, x, y) for name in PROXIES}
    cpu = {name: proxy_score(name, model.cpu(), x.cpu(), y.cpu()) for name in PROXIES}
    console.print(f"proxies on {args.device}: {proxies}; on cpu: {cpu}")
    if args.json:
        args.json.write_text(
            json.dumps({"environment": environment(["torch"]), "runs": runs, "proxies": proxies, "proxies_cpu": cpu}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
