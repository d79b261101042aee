"""Device leases for parallel candidate training: which devices are visible, and who may use which one right now."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


class DeviceError(ValueError):
    """A device request that cannot be met: unknown kind, no CUDA device, index out of range, lease timeout."""


def _cuda_index(item: str, count: int) -> int:
    """The visible CUDA index named by ``"3"`` or ``"cuda:3"``, checked against ``count``."""
    text = item.removeprefix("cuda:")
    if not text.isdigit():
        raise DeviceError(f"unknown device {item!r}: expected 'auto', 'cpu', 'cuda' or a list like 'cuda:0,cuda:1' or '0,1'")
    index = int(text)
    if index >= count:
        raise DeviceError(
            f"CUDA device {index} is out of range: {count} visible (indices count from 0 among CUDA_VISIBLE_DEVICES)"
        )
    return index


GPU_DRIVER_FILES = ("proc/driver/nvidia", "dev/nvidia0", "dev/nvidiactl", "dev/kfd", "dev/dxg")  # NVIDIA, ROCm, WSL


def gpu_driver_present(root: Path = Path("/")) -> bool:
    """Whether this machine may have a GPU torch can use: on Linux, whether any GPU driver's files exist (other
    systems: assumed yes). Without them ``torch.cuda.device_count()`` is 0, known here without importing torch."""
    return not sys.platform.startswith("linux") or any((root / name).exists() for name in GPU_DRIVER_FILES)


def cuda_device_count() -> int:
    """The CUDA devices torch sees; 0 without importing torch (seconds) on a machine with no GPU driver."""
    if not gpu_driver_present():
        return 0
    import torch

    return torch.cuda.device_count()


def visible_devices(kind: str = "auto") -> list[str]:
    """Devices for ``kind``: ``"cpu"``, ``"cuda"`` (all visible GPUs), ``"auto"`` (GPUs if any, else CPU) or ``"0,1"``.

    A list may also read ``"cuda:0,cuda:1"``. Indices count among the visible devices (torch renumbers them from 0),
    so they compose with an outer ``CUDA_VISIBLE_DEVICES``.
    """
    spec = kind.strip().lower()
    if spec == "cpu":
        return ["cpu"]
    count = cuda_device_count()
    if spec == "auto":
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    if spec == "cuda":
        if count == 0:
            raise DeviceError("no CUDA device is visible (check the GPU driver and CUDA_VISIBLE_DEVICES)")
        return [f"cuda:{i}" for i in range(count)]
    items = [item.strip() for item in spec.split(",")]
    if not all(items):
        raise DeviceError(f"empty entry in device list {kind!r}")
    indices = [_cuda_index(item, count) for item in items]
    if len(set(indices)) != len(indices):
        raise DeviceError(f"device list {kind!r} names a device twice")
    return [f"cuda:{i}" for i in indices]


def trains_on_gpus(device: str, remote_cluster: bool = False) -> bool:
    """Whether candidates will train on GPUs; on a remote cluster its GPUs are not visible here, so ``auto`` means no."""
    if remote_cluster:
        return device.strip().lower() not in ("auto", "cpu")
    return visible_devices(device) != ["cpu"]


def free_memory(device: str) -> None:
    """Collect garbage and, for an initialised CUDA device, return its cached blocks to the driver."""
    gc.collect()
    if not device.startswith("cuda"):
        return
    import torch

    if torch.cuda.is_initialized():
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


class DeviceLeases:
    """A thread-safe pool of device slots: at most ``per_device`` holders per device (``None``: unlimited)."""

    def __init__(self, devices: Sequence[str], per_device: int | None) -> None:
        if not devices:
            raise DeviceError("DeviceLeases needs at least one device")
        if len(set(devices)) != len(devices):
            raise DeviceError(f"duplicate device in {list(devices)}")
        if per_device is not None and per_device < 1:
            raise DeviceError(f"per_device must be at least 1 or None, got {per_device}")
        self.devices: tuple[str, ...] = tuple(devices)
        self.per_device = per_device
        self._holders = dict.fromkeys(self.devices, 0)
        self._cond = threading.Condition()

    @property
    def capacity(self) -> int | None:
        """Total slots, or ``None`` when unlimited."""
        return None if self.per_device is None else self.per_device * len(self.devices)

    def holders(self) -> dict[str, int]:
        """A snapshot of how many leases each device has out."""
        with self._cond:
            return dict(self._holders)

    def _pick(self) -> str | None:
        """The least-loaded device with a free slot (ties: first in the list), or ``None``; call under the lock."""
        free = [d for d in self.devices if self.per_device is None or self._holders[d] < self.per_device]
        return min(free, key=lambda d: self._holders[d]) if free else None  # min keeps the first of equals

    @contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[str]:
        """Hold a slot on the least-loaded device for the block; waits for one, up to ``timeout`` seconds.

        On exit, however the block ends, memory is freed and the slot is returned.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (device := self._pick()) is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise DeviceError(f"no free device slot within {timeout}s on {list(self.devices)} ({self.per_device} each)")
                self._cond.wait(remaining)
            self._holders[device] += 1
        try:
            yield device
        finally:
            try:
                if device != "cpu":  # CPU memory went with the model's last reference; a full gc.collect costs ~0.2 s
                    free_memory(device)
            except Exception:  # best effort: never mask the block's outcome or keep the slot
                logger.warning("freeing memory on %s failed", device, exc_info=True)
            finally:
                with self._cond:
                    self._holders[device] -= 1
                    self._cond.notify_all()

    def __repr__(self) -> str:
        return f"DeviceLeases({list(self.devices)!r}, per_device={self.per_device})"


_REGISTRY: dict[tuple[tuple[str, ...], int | None], DeviceLeases] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_leases(devices: Sequence[str], per_device: int | None) -> DeviceLeases:
    """The process-wide pool for these arguments: every thread of one process shares it."""
    key = (tuple(devices), per_device)
    with _REGISTRY_LOCK:
        if key not in _REGISTRY:
            _REGISTRY[key] = DeviceLeases(key[0], per_device)
        return _REGISTRY[key]
