"""Keeping GPUs busy: how busy each GPU is (sampled), and how many candidates to pack onto each one.

Small networks leave a GPU idle most of the time: the host launching kernels is the bottleneck, not the GPU.
With ``candidates_per_gpu: auto`` a search starts at one candidate per GPU and doubles the count after each
generation while the GPUs' measured utilisation keeps rising, up to :data:`AUTO_MAX_PER_GPU`, and not while memory
runs short (:class:`PackingPlan`). :class:`GpuMonitor` samples utilisation and memory on a background thread. It
gives the busy share per device for the summary, and per generation for the plan. The default probe reads NVML
through ``torch.cuda.utilization`` and ``torch.cuda.mem_get_info``; tests give a fake one.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from nas_core.config import AUTO_MAX_PER_GPU

RISE = 0.05  # utilisation must rise by this much (of 1.0) for another doubling to count as worth it
MEMORY_LIMIT = 0.85  # no doubling once a GPU's memory was this full
SAMPLE_INTERVAL_S = 0.2

Probe = Callable[[], dict[str, tuple[float, float]]]  # device -> (busy 0..1, memory used 0..1)


def nvml_probe(devices: Sequence[str]) -> Probe | None:
    """Utilisation and memory of CUDA ``devices`` from NVML (None when it cannot be read: no driver, no pynvml)."""
    import torch

    gpus = [d for d in devices if d.startswith("cuda")]
    if not gpus:
        return None

    def probe() -> dict[str, tuple[float, float]]:
        readings = {}
        for device in gpus:
            free, total = torch.cuda.mem_get_info(device)
            readings[device] = (torch.cuda.utilization(device) / 100.0, 1.0 - free / total)
        return readings

    try:
        probe()
    except Exception:  # noqa: BLE001 - NVML missing or refusing: the search runs without utilisation figures
        return None
    return probe


@dataclass
class DeviceUsage:
    """Samples of one device: busy fraction and memory fraction, over time."""

    busy: list[float] = field(default_factory=list)
    memory: list[float] = field(default_factory=list)


class GpuMonitor:
    """Samples ``probe`` every ``interval`` seconds on a daemon thread while started."""

    def __init__(self, probe: Probe, interval: float = SAMPLE_INTERVAL_S) -> None:
        self.probe, self.interval = probe, interval
        self.usage: dict[str, DeviceUsage] = {}
        self.seconds = 0.0  # time sampled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuMonitor:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            now = time.monotonic()
            with self._lock:
                self.seconds += now - last
            last = now
            self._stop.wait(self.interval)

    def sample(self) -> None:
        """Take one reading of every device (the thread calls it; a test may call it directly)."""
        try:
            readings = self.probe()
        except Exception:  # noqa: BLE001 - a failed reading is skipped, never the search's problem
            return
        with self._lock:
            for device, (busy, memory) in readings.items():
                usage = self.usage.setdefault(device, DeviceUsage())
                usage.busy.append(busy)
                usage.memory.append(memory)

    def mark(self) -> dict[str, int]:
        """Where each device's samples stand now: pass it to :meth:`since` for the busy share of a stretch of time."""
        with self._lock:
            return {device: len(usage.busy) for device, usage in self.usage.items()}

    def since(self, mark: dict[str, int]) -> tuple[float, float] | None:
        """Mean busy fraction (over devices) and peak memory fraction since ``mark``; None without samples."""
        with self._lock:
            busy = [b for d, u in self.usage.items() for b in u.busy[mark.get(d, 0) :]]
            memory = [m for d, u in self.usage.items() for m in u.memory[mark.get(d, 0) :]]
        return (statistics.fmean(busy), max(memory)) if busy else None

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per device: the busy share of the sampled time, the peak memory share, the number of samples."""
        with self._lock:
            return {
                device: {
                    "busy_share": round(statistics.fmean(u.busy), 4),
                    "peak_memory_share": round(max(u.memory), 4),
                    "samples": len(u.busy),
                }
                for device, u in self.usage.items()
                if u.busy
            }


class PackingPlan:
    """Candidates per GPU for each generation: 1, then doubling while utilisation rises, then the best count found."""

    def __init__(self, maximum: int = AUTO_MAX_PER_GPU) -> None:
        self.maximum = maximum
        self.current = 1
        self.settled = False
        self.tried: list[tuple[int, float, float]] = []  # (per GPU, mean busy, peak memory) per generation measured

    def next(self, measured: tuple[float, float] | None) -> int:
        """Take the generation just run (mean busy, peak memory; None if unmeasured); the count for the next one."""
        if self.settled or measured is None:
            return self.current
        busy, memory = measured
        self.tried.append((self.current, busy, memory))
        previous = self.tried[-2][1] if len(self.tried) >= 2 else None
        if previous is not None and busy - previous < RISE:  # no longer worth it: back to the count that was
            self.current, self.settled = self.tried[-2][0], True
        elif memory >= MEMORY_LIMIT or self.current * 2 > self.maximum:
            self.settled = True
        else:
            self.current *= 2
        return self.current

    def state(self) -> dict[str, Any]:
        return {"current": self.current, "settled": self.settled, "tried": [list(t) for t in self.tried]}

    def load(self, state: dict[str, Any] | None) -> None:
        if state:
            self.current, self.settled = state["current"], state["settled"]
            self.tried = [tuple(t) for t in state["tried"]]


class GpuWatch:
    """The GPUs a search trains on in this process's machine: their monitor and, with ``auto``, the packing plan."""

    def __init__(self, monitor: GpuMonitor | None = None, packing: PackingPlan | None = None) -> None:
        self.monitor, self.packing = monitor, packing
        self.measured: tuple[float, float] | None = None  # the last generation's mean busy share and peak memory

    @classmethod
    def of(cls, device: str, candidates_per_gpu: int | str) -> GpuWatch:
        """Watch the GPUs ``device`` names (none on CPU); plan packing when ``candidates_per_gpu`` is ``auto``."""
        from nas_core.evaluation.devices import visible_devices

        gpus = [d for d in visible_devices(device) if d.startswith("cuda")]
        probe = nvml_probe(gpus) if gpus else None
        packing = PackingPlan() if gpus and candidates_per_gpu == "auto" else None
        return cls(GpuMonitor(probe).start() if probe else None, packing)

    @property
    def watching(self) -> bool:
        return self.monitor is not None or self.packing is not None

    def mark(self) -> dict[str, int]:
        return self.monitor.mark() if self.monitor else {}

    def measure(self, mark: dict[str, int]) -> None:
        """Keep the busy share and peak memory since ``mark`` (the generation just trained)."""
        self.measured = self.monitor.since(mark) if self.monitor else None

    def generation_done(self) -> None:
        if self.packing is not None:
            self.packing.next(self.measured)

    def per_gpu(self, fixed: int) -> int:
        """Candidates per GPU for the next generation: the plan's count, else ``fixed``."""
        return self.packing.current if self.packing else fixed

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()

    def state(self) -> dict[str, Any] | None:
        return self.packing.state() if self.packing else None

    def load(self, state: dict[str, Any] | None) -> None:
        if self.packing is not None:
            self.packing.load(state)

    def summary(self) -> dict[str, Any] | None:
        """Each GPU's busy share and peak memory and, with ``auto``, the counts tried (None: no GPU watched)."""
        if not self.watching:
            return None
        packing = {"candidates_per_gpu": self.packing.state()} if self.packing else {}
        return {"devices": self.monitor.summary() if self.monitor else {}, **packing}
