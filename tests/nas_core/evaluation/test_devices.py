"""Device leases: per-device limits under threads, least-loaded choice, release on error, timeouts, visible devices."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from nas_core.evaluation import devices
from nas_core.evaluation.devices import DeviceError, DeviceLeases, free_memory, shared_leases, visible_devices

GPUS = ["cuda:0", "cuda:1"]


@pytest.fixture
def freed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record ``free_memory`` calls instead of touching CUDA."""
    calls: list[str] = []
    lock = threading.Lock()

    def record(device: str) -> None:
        with lock:
            calls.append(device)

    monkeypatch.setattr(devices, "free_memory", record)
    return calls


class Threads:
    """Start ``n`` daemon threads running ``target``; ``join`` waits for them and re-raises the first error."""

    def __init__(self, target: Callable[[], None], n: int) -> None:
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(target,), daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # surfaced by join
            self.errors.append(exc)

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=10)
            assert not t.is_alive(), "a thread is stuck"
        if self.errors:
            raise self.errors[0]


def test_one_holder_per_device_under_threads(freed: list[str]) -> None:
    leases = DeviceLeases(GPUS, per_device=1)
    start = threading.Barrier(6)
    lock = threading.Lock()
    active = dict.fromkeys(GPUS, 0)
    peak = dict.fromkeys(GPUS, 0)
    snapshots: list[dict[str, int]] = []

    def work() -> None:
        start.wait(timeout=5)
        with leases.lease() as dev:
            with lock:
                active[dev] += 1
                peak[dev] = max(peak[dev], active[dev])
            snapshots.append(leases.holders())
            time.sleep(0.05)
            with lock:
                active[dev] -= 1

    Threads(work, 6).join()
    assert peak == {"cuda:0": 1, "cuda:1": 1}  # every device used, never shared
    assert all(max(s.values()) <= 1 for s in snapshots)
    assert leases.holders() == {"cuda:0": 0, "cuda:1": 0}
    assert len(freed) == 6 and set(freed) == set(GPUS)


def test_per_device_two_allows_exactly_two(freed: list[str]) -> None:
    leases = DeviceLeases(["cuda:0"], per_device=2)
    assert leases.capacity == 2
    both_in = threading.Barrier(3)  # two holders + this test: passes only if two hold at once
    go = threading.Event()
    third_in = threading.Event()

    def hold() -> None:
        with leases.lease():
            both_in.wait(timeout=5)
            go.wait(timeout=5)

    def third() -> None:
        with leases.lease():
            third_in.set()

    holders = Threads(hold, 2)
    both_in.wait(timeout=5)
    assert leases.holders() == {"cuda:0": 2}
    waiter = Threads(third, 1)
    assert not third_in.wait(0.2)  # the third waits while two hold
    go.set()
    assert third_in.wait(5)  # and gets in once one leaves
    holders.join()
    waiter.join()
    assert leases.holders() == {"cuda:0": 0}
    assert freed == ["cuda:0"] * 3


def test_raising_block_releases_and_frees(freed: list[str]) -> None:
    leases = DeviceLeases(GPUS, per_device=1)
    with pytest.raises(RuntimeError, match="boom"), leases.lease() as dev:
        assert leases.holders()[dev] == 1
        raise RuntimeError("boom")
    assert dev == "cuda:0"
    assert leases.holders() == {"cuda:0": 0, "cuda:1": 0}
    assert freed == ["cuda:0"]


def test_failing_free_memory_still_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(device: str) -> None:
        raise RuntimeError("CUDA error")

    monkeypatch.setattr(devices, "free_memory", broken)
    leases = DeviceLeases(GPUS, per_device=1)
    with leases.lease():
        pass
    assert leases.holders() == {"cuda:0": 0, "cuda:1": 0}


def test_least_loaded_then_first_of_ties(freed: list[str]) -> None:
    leases = DeviceLeases(["cuda:0", "cuda:1", "cuda:2"], per_device=2)
    with leases.lease() as first:
        assert first == "cuda:0"
        with leases.lease() as second:
            assert second == "cuda:1"
            with leases.lease() as third, leases.lease() as fourth:
                assert third == "cuda:2"
                assert fourth == "cuda:0"  # all at one holder: first in the list
                assert leases.holders() == {"cuda:0": 2, "cuda:1": 1, "cuda:2": 1}
    with leases.lease() as again:
        assert again == "cuda:0"


def test_lease_timeout(freed: list[str]) -> None:
    leases = DeviceLeases(["cuda:0"], per_device=1)
    with leases.lease():
        began = time.monotonic()
        with pytest.raises(DeviceError, match="no free device slot"), leases.lease(timeout=0.1):
            pass
        assert time.monotonic() - began >= 0.09
        assert leases.holders() == {"cuda:0": 1}  # the failed lease took nothing
    with leases.lease(timeout=0.1) as dev:  # a free slot is taken at once
        assert dev == "cuda:0"


def test_unlimited_cpu_never_blocks(freed: list[str]) -> None:
    leases = DeviceLeases(["cpu"], per_device=None)
    assert leases.capacity is None
    with contextlib.ExitStack() as stack:
        got = [stack.enter_context(leases.lease(timeout=0.5)) for _ in range(8)]
        assert got == ["cpu"] * 8
        assert leases.holders() == {"cpu": 8}
    assert leases.holders() == {"cpu": 0}


@pytest.mark.parametrize(
    ("devs", "per_device"), [([], 1), (["cuda:0", "cuda:0"], 1), (["cuda:0"], 0)], ids=["empty", "duplicate", "zero"]
)
def test_bad_pools_rejected(devs: list[str], per_device: int) -> None:
    with pytest.raises(DeviceError):
        DeviceLeases(devs, per_device)


def test_a_gpu_driver_is_known_by_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices.sys, "platform", "linux")
    assert not devices.gpu_driver_present(tmp_path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "nvidiactl").touch()
    assert devices.gpu_driver_present(tmp_path)
    monkeypatch.setattr(devices.sys, "platform", "darwin")
    assert devices.gpu_driver_present(tmp_path / "elsewhere")  # not Linux: not known from files, so torch is asked


def test_without_a_gpu_driver_no_device_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "gpu_driver_present", lambda root=None: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # torch would say otherwise: it is not asked
    assert devices.cuda_device_count() == 0
    monkeypatch.setattr(devices, "gpu_driver_present", lambda root=None: True)
    assert devices.cuda_device_count() == 2


def test_visible_devices_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    assert visible_devices() == ["cpu"]
    assert visible_devices("auto") == ["cpu"]
    assert visible_devices("cpu") == ["cpu"]
    with pytest.raises(DeviceError, match="CUDA_VISIBLE_DEVICES"):
        visible_devices("cuda")
    with pytest.raises(DeviceError, match="out of range"):
        visible_devices("0")


def test_visible_devices_with_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)
    assert visible_devices() == GPUS
    assert visible_devices("cuda") == GPUS
    assert visible_devices(" CUDA ") == GPUS
    assert visible_devices("cpu") == ["cpu"]
    assert visible_devices("1") == ["cuda:1"]
    assert visible_devices("cuda:1") == ["cuda:1"]
    assert visible_devices("1, 0") == ["cuda:1", "cuda:0"]
    assert visible_devices("cuda:0,cuda:1") == GPUS
    with pytest.raises(DeviceError, match="out of range"):
        visible_devices("2")
    with pytest.raises(DeviceError, match="out of range"):
        visible_devices("cuda:0,cuda:5")
    for bad in ("tpu", "mps", "cuda:x", "0,,1", "-1", "0,0"):
        with pytest.raises(DeviceError):
            visible_devices(bad)
    assert issubclass(DeviceError, ValueError)


def test_shared_leases_one_pool_per_arguments() -> None:
    a = shared_leases(("cuda:0", "cuda:1"), 1)
    assert shared_leases(("cuda:0", "cuda:1"), 1) is a
    assert shared_leases(["cuda:0", "cuda:1"], 1) is a
    assert shared_leases(("cuda:0", "cuda:1"), 2) is not a
    assert shared_leases(("cuda:1", "cuda:0"), 1) is not a
    assert shared_leases(("cpu",), None) is not a


def test_shared_leases_same_object_across_threads() -> None:
    seen: list[DeviceLeases] = []
    start = threading.Barrier(8)

    def get() -> None:
        start.wait(timeout=5)
        seen.append(shared_leases(("cuda:7",), 3))

    Threads(get, 8).join()
    assert len(seen) == 8 and all(s is seen[0] for s in seen)


def test_free_memory_only_empties_cuda_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    @contextlib.contextmanager
    def fake_device(dev: str) -> Iterator[None]:
        events.append(f"enter {dev}")
        yield

    monkeypatch.setattr(devices.gc, "collect", lambda: events.append("gc") or 0)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: events.append("empty"))
    free_memory("cpu")
    assert events == ["gc"]
    free_memory("cuda:1")
    assert events == ["gc", "gc", "enter cuda:1", "empty"]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)  # CUDA never used here: nothing to empty
    free_memory("cuda:0")
    assert events == ["gc", "gc", "enter cuda:1", "empty", "gc"]
