"""Latency on the handoff runtime: onnxruntime sessions with pinned threads, the machine they run on, and the
:class:`~nas_core.latency.ModuleTimer` the search's latency predictor times network parts with.

Every figure is :func:`steady_ms`: milliseconds per call, the lowest median of a few rounds of calls after warm-up
calls, on one execution provider with ``intra_op_num_threads`` (and one inter-op thread) pinned, so that figures of
different models are comparable.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nas_core.latency import LATENCY_FOLDER, LatencyPredictor, LatencyTable, Machine, ModuleTimer

if TYPE_CHECKING:
    import onnxruntime as ort
    from torch import nn

    from nas_core.genome import Genome

PROVIDER = "CPUExecutionProvider"
THREADS = 1  # one intra-op thread: comparable across candidates, and free of the other candidates training


@dataclass(frozen=True)
class Timing:
    """How a figure is timed: ``warmup`` calls, then ``rounds`` rounds of ``calls`` calls, ``gap_seconds`` apart."""

    calls: int
    rounds: int
    warmup: int = 10
    gap_seconds: float = 0.0


# A part of a network, for the predictor's table (hundreds of parts): rounds back to back, milliseconds in all.
PART_TIMING = Timing(calls=20, rounds=5)
# A whole network whose figure is checked against a limit or handed over (the search's check, the model card, the
# Pareto set): rounds spread over about a second, so that a slow spell of a shared machine (seen lasting 0.1 to a few
# seconds on a 2-core VM, every call about 2x slower) misses some of them.
NETWORK_TIMING = Timing(calls=10, rounds=10, gap_seconds=0.1)


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_of(threads: int = THREADS, provider: str = PROVIDER) -> Machine:
    """This machine as latency figures name it."""
    import onnxruntime as ort

    return Machine(cpu_model(), os.cpu_count() or 1, f"onnxruntime {ort.__version__}", provider, threads)


def open_session(model: Path | bytes, threads: int = THREADS, provider: str = PROVIDER) -> ort.InferenceSession:
    """An onnxruntime session on ``provider`` with ``threads`` intra-op threads and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=[provider])


def steady_ms(session: ort.InferenceSession, batch_size: int, timing: Timing = NETWORK_TIMING) -> float:
    """Milliseconds per call of ``session`` on a random batch: the lowest median of ``timing``'s rounds of calls.

    Other work on a shared machine only ever adds time (on this project's 2-core VM the same network's figure
    flips between two levels about 2x apart), so the least disturbed round is the closest to the runtime's own cost:
    the reasoning of Python's ``timeit``, which reports the minimum for the same cause.
    """
    return steady_ms_each(session, (batch_size,), timing)[batch_size]


def steady_ms_each(
    session: ort.InferenceSession, batch_sizes: Sequence[int], timing: Timing = NETWORK_TIMING
) -> dict[int, float]:
    """:func:`steady_ms` of each batch size, the sizes taking turns within each round: the rounds' spread over time
    is shared, so several sizes cost about what one does."""
    spec = session.get_inputs()[0]
    rng = np.random.default_rng(0)
    feeds = {size: {spec.name: rng.random((size, *spec.shape[1:]), dtype=np.float32)} for size in dict.fromkeys(batch_sizes)}
    for feed in feeds.values():
        for _ in range(timing.warmup):
            session.run(None, feed)
    medians: dict[int, list[float]] = {size: [] for size in feeds}
    for index in range(timing.rounds):
        if index and timing.gap_seconds:
            time.sleep(timing.gap_seconds)
        for size, feed in feeds.items():
            times = []
            for _ in range(timing.calls):
                start = time.perf_counter()
                session.run(None, feed)
                times.append((time.perf_counter() - start) * 1000)
            medians[size].append(statistics.median(times))
    return {size: min(values) for size, values in medians.items()}


def part_onnx(module: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """A network part as ONNX bytes, with a dynamic batch axis.

    The TorchScript exporter: about 30 ms a part where the handoff's exporter (``dynamo``) takes seconds a network;
    the predictor's figures (docs/latency.md) are against the handoff's exports.
    """
    import torch

    buffer = io.BytesIO()
    example = torch.zeros((2, *input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), (example,), buffer, dynamo=False, input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )  # fmt: skip
    return buffer.getvalue()


class OnnxTimer:
    """Times network parts and whole networks with onnxruntime on this machine (the :class:`ModuleTimer` of a search)."""

    def __init__(
        self, threads: int = THREADS, provider: str = PROVIDER, part: Timing = PART_TIMING, network: Timing = NETWORK_TIMING
    ):
        self.threads, self.provider, self.part, self.network = threads, provider, part, network
        self._machine = machine_of(threads, provider)

    def machine(self) -> Machine:
        return self._machine

    def time_ms(self, module: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> float:
        return self._time(module, input_shape, batch_size, self.part)

    def time_network_ms(self, module: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> float:
        return self._time(module, input_shape, batch_size, self.network)

    def _time(self, module: nn.Module, input_shape: tuple[int, ...], batch_size: int, timing: Timing) -> float:
        session = open_session(part_onnx(module, input_shape), self.threads, self.provider)
        return steady_ms(session, batch_size, timing)


def predictor(
    build: Callable[[Genome], nn.Module],
    input_shape: tuple[int, ...],
    project_dir: Path,
    batch_size: int = 1,
    timer: ModuleTimer | None = None,
) -> LatencyPredictor:
    """The latency predictor of a space's networks on inputs of ``input_shape``, its table cached in the project."""
    table = LatencyTable(timer or OnnxTimer(), Path(project_dir) / LATENCY_FOLDER, batch_size)
    return LatencyPredictor(build, input_shape, table)


def measure_network_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    threads: int = THREADS,
    timing: Timing = NETWORK_TIMING,
) -> float:
    """A whole network's latency, exported exactly as the handoff exports it (checked, compared with PyTorch)."""
    from nas_pipeline.onnx_export import export_onnx

    inputs = np.random.default_rng(0).random((4, *input_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(model, Path(folder) / "model.onnx", inputs, {}).path
        return steady_ms(open_session(path, threads), batch_size, timing)


class MeasuredLatency:
    """A genome's latency measured as a whole (export + onnxruntime): exact, but seconds a genome."""

    source = "measured"

    def __init__(
        self, build: Callable[[Genome], nn.Module], input_shape: tuple[int, ...], batch_size: int = 1, threads: int = THREADS
    ):
        self.build, self.input_shape, self.batch_size, self.threads = build, tuple(input_shape), batch_size, threads

    def machine(self) -> Machine:
        return machine_of(self.threads)

    def latency_ms(self, genome: Genome) -> float:
        return measure_network_ms(self.build(genome), self.input_shape, self.batch_size, self.threads)
