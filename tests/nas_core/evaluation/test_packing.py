"""GPU packing and utilisation, on CPU with fake devices: the plan's decisions, the monitor's figures, the loop's use."""

import itertools
import time

import pytest

from nas_core.config import SearchConfig
from nas_core.data.store import LocalDataStore
from nas_core.evaluation.packing import GpuMonitor, GpuWatch, PackingPlan
from nas_core.search.execution import evaluate_here
from nas_core.search.loop import Search
from nas_core.search.ports import MemoryTracker


def test_the_plan_doubles_while_utilisation_rises_then_keeps_the_last_count_that_paid():
    plan = PackingPlan(8)
    assert [plan.next((busy, 0.2)) for busy in (0.30, 0.50, 0.70, 0.72, 0.99)] == [2, 4, 8, 4, 4]
    assert plan.settled and [count for count, _, _ in plan.tried] == [1, 2, 4, 8]


@pytest.mark.parametrize(
    ("measured", "maximum", "expected"),
    [
        ([(0.3, 0.9)], 8, [1]),  # memory nearly full: no doubling
        ([(0.3, 0.2), (0.6, 0.2)], 2, [2, 2]),  # the maximum reached
        ([None, None], 8, [1, 1]),  # nothing measured: nothing decided
    ],
)
def test_the_plan_stops_at_memory_the_maximum_or_without_figures(measured, maximum, expected):
    plan = PackingPlan(maximum)
    assert [plan.next(m) for m in measured] == expected


def test_the_plan_state_round_trips():
    plan = PackingPlan(8)
    plan.next((0.3, 0.1))
    again = PackingPlan(8)
    again.load(plan.state())
    assert again.state() == plan.state() and again.next((0.6, 0.1)) == plan.next((0.6, 0.1)) == 4


def test_the_monitor_reports_busy_share_per_device_and_per_stretch():
    readings = iter([{"cuda:0": (0.2, 0.1), "cuda:1": (0.4, 0.3)}, {"cuda:0": (0.6, 0.5), "cuda:1": (0.8, 0.2)}])
    monitor = GpuMonitor(lambda: next(readings))
    monitor.sample()
    mark = monitor.mark()
    monitor.sample()
    assert monitor.since(mark) == pytest.approx((0.7, 0.5))
    assert monitor.since({}) == pytest.approx((0.5, 0.5))
    summary = monitor.summary()
    assert summary["cuda:0"] == {"busy_share": 0.4, "peak_memory_share": 0.5, "samples": 2}
    assert summary["cuda:1"]["busy_share"] == pytest.approx(0.6)


def test_the_monitor_samples_on_its_own_thread_and_a_failing_probe_is_skipped():
    calls = itertools.count()

    def probe():
        if next(calls) % 2:
            raise RuntimeError("NVML hiccup")
        return {"cuda:0": (1.0, 0.5)}

    monitor = GpuMonitor(probe, interval=0.01).start()
    deadline = time.monotonic() + 30
    while monitor.summary().get("cuda:0", {}).get("samples", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    monitor.stop()
    assert monitor.summary()["cuda:0"]["samples"] >= 3 and monitor.summary()["cuda:0"]["busy_share"] == 1.0


def test_a_search_packs_more_candidates_per_gpu_as_measured_utilisation_rises(tmp_path):
    """Fake GPU figures rising over time: the second generation's requests share a GPU two at a time."""
    calls = itertools.count()
    config = SearchConfig(project_dir=tmp_path, output=tmp_path / "out", budget=4, population=2, epochs=1, workers=1,
                          candidates_per_gpu="auto")  # fmt: skip
    search = Search(config, LocalDataStore(tmp_path / "data"), search_id="packed", connect_tracker=MemoryTracker)
    monitor = GpuMonitor(lambda: {"cuda:0": (min(1.0, next(calls) / 2000), 0.1)}, interval=0.005).start()
    search.gpus = GpuWatch(monitor, PackingPlan(config.max_candidates_per_gpu))
    per_device = []

    def evaluate(requests):
        per_device.append({r.per_device for r in requests})
        yield from evaluate_here(requests)

    summary = search.run(evaluate)
    assert per_device == [{1}, {2}]
    assert [count for count, _, _ in summary.gpus["candidates_per_gpu"]["tried"]] == [1, 2]
    assert 0 < summary.gpus["devices"]["cuda:0"]["busy_share"] <= 1
    assert monitor._thread is None, "the monitor stops with the search"


def test_a_search_on_cpu_reports_no_gpus(tmp_path):
    config = SearchConfig(project_dir=tmp_path, output=tmp_path / "out", budget=1, population=1, epochs=1, workers=1,
                          candidates_per_gpu="auto", device="cpu")  # fmt: skip
    summary = Search(config, LocalDataStore(tmp_path / "data"), search_id="cpu", connect_tracker=MemoryTracker).run()
    assert summary.gpus is None
