"""Latency on the real handoff runtime (onnxruntime): the machine named, a part timed, a genome predicted and measured."""

from __future__ import annotations

import json
import os

import pytest

from nas_core.config import SearchConfig
from nas_core.genome import Genome
from nas_core.latency import LatencyTable
from nas_core.spaces import create_space
from nas_pipeline.latency import OnnxTimer, Timing, machine_of, measure_network_ms, predictor, steady_ms, steady_ms_each

SMALL = {
    "nodes": [
        {"id": "input", "op": "input"},
        {"id": "a", "op": "conv", "settings": {"kernel": 3, "channels": 16, "stride": 1}},
        {"id": "b", "op": "maxpool", "settings": {"kernel": 3, "stride": 2}},
        {"id": "output", "op": "output"},
    ],
    "edges": [["input", "a"], ["a", "b"], ["b", "output"]],
}


def test_the_machine_is_named_by_cpu_cores_runtime_provider_and_threads():
    import onnxruntime

    machine = machine_of(threads=2)
    assert machine.cores == os.cpu_count() and machine.threads == 2
    assert machine.runtime == f"onnxruntime {onnxruntime.__version__}" and machine.provider == "CPUExecutionProvider"
    assert machine.cpu and machine.cpu in machine.describe()
    assert machine.key() != machine_of(threads=1).key()


def test_part_tables_of_two_providers_never_mix(tmp_path):
    """The table is keyed by the machine, its provider included: a CPU figure is never read for CUDA, nor back."""
    cpu = LatencyTable(OnnxTimer(provider="CPUExecutionProvider"), tmp_path)
    cuda = LatencyTable(OnnxTimer(provider="CUDAExecutionProvider"), tmp_path)  # named only: nothing is timed here
    assert cpu.machine.provider == "CPUExecutionProvider" and cuda.machine.provider == "CUDAExecutionProvider"
    assert cpu.path != cuda.path
    cpu.times["a part"] = 1.5
    cpu.save()
    assert LatencyTable(OnnxTimer(provider="CUDAExecutionProvider"), tmp_path).times == {}
    assert LatencyTable(OnnxTimer(), tmp_path).times == {"a part": 1.5}  # the default provider is the CPU's
    cuda.path.write_bytes(cpu.path.read_bytes())  # the CPU's table under the CUDA name: its machine says otherwise
    assert LatencyTable(OnnxTimer(provider="CUDAExecutionProvider"), tmp_path).times == {}


def test_the_search_times_latencies_on_the_configured_provider(project):
    from nas_pipeline.pipeline import build_search

    config = SearchConfig(
        project_dir=project, output=project / "out", latency_provider="CUDAExecutionProvider", latency_threads=2
    )
    timer = build_search(config, search_id="provider").proposer.latency_timer
    assert isinstance(timer, OnnxTimer)
    assert timer.machine() == machine_of(threads=2, provider="CUDAExecutionProvider")


@pytest.mark.slow
def test_a_small_genome_is_predicted_and_measured_on_onnxruntime(tmp_path, single_torch_thread):
    genome = Genome.from_dict(SMALL)
    space = create_space("image")

    def build(g):
        return space.build(g, (1, 8, 8), 10)

    model = predictor(build, (1, 8, 8), tmp_path, timer=OnnxTimer(part=Timing(calls=5, rounds=4, warmup=2)))
    predicted = model.latency_ms(genome)
    measured = measure_network_ms(build(genome), (1, 8, 8), timing=Timing(calls=5, rounds=4, warmup=2))
    assert 0 < predicted < 1000 and 0 < measured < 1000
    table = json.loads(model.table.path.read_text())
    assert table["machine"] == json.loads(json.dumps(machine_of().__dict__))
    assert len(table["parts"]) == len(model.parts(genome)) + 1 + len({p.output_shape for p in model.parts(genome)})
    assert all(v > 0 for v in table["parts"].values())


@pytest.mark.slow
def test_a_search_logs_each_candidates_latency_and_names_the_machine(project):
    from mlflow.tracking import MlflowClient

    from tests.conftest import search_directly

    search = search_directly(project, budget=2, population=2, epochs=1, workers=1, max_latency_ms=1000.0)
    here = machine_of()
    ok = [r for r in search.records if r.ok]
    assert ok and all(r.metrics["latency_ms"] > 0 for r in ok)
    summary = json.loads((project / "out" / "summary.json").read_text())
    assert [c["latency_ms"] for c in summary["candidates"] if c["status"] == "ok"] == [r.metrics["latency_ms"] for r in ok]
    client = MlflowClient(search.tracker.tracking_uri)
    for record in ok:
        assert client.get_run(record.mlflow_run_id).data.metrics["latency_ms"] == pytest.approx(record.metrics["latency_ms"])
    params = client.get_run(search.run_id).data.params
    assert params["latency.source"] == "predicted" and params["latency.machine_key"] == here.key()
    assert (params["latency.cpu"], params["latency.cores"]) == (here.cpu, str(here.cores))
    assert (params["latency.runtime"], params["latency.provider"], params["latency.threads"]) == (
        here.runtime, here.provider, "1",
    )  # fmt: skip
    card = json.loads((project / "out" / "handoff" / "model_card.json").read_text())
    assert card["latency"]["machine"] == here.describe() and card["latency"]["threads"] == 1
    assert here.describe() in (project / "out" / "handoff" / "model_card.md").read_text()
    assert list((project / "latency").glob(f"{here.key()}-b1.json")), "the part table is cached by machine"


class _ClockedSession:
    """An onnxruntime-like session whose calls take the given milliseconds, in turn (the first ``warmup`` untimed)."""

    def __init__(self, call_ms):
        self.call_ms, self.calls = list(call_ms), 0

    def get_inputs(self):
        return [type("Input", (), {"name": "input", "shape": ["batch", 1, 2, 2]})()]

    def run(self, outputs, feed):
        assert feed["input"].shape == (3, 1, 2, 2)
        import time

        time.sleep(self.call_ms[self.calls] / 1000)
        self.calls += 1


def test_steady_ms_is_the_lowest_median_of_its_rounds():
    # one warm-up call, then 3 rounds of 3 calls: a slow spell over the first two rounds, the last round undisturbed
    session = _ClockedSession([50, 40, 40, 40, 40, 40, 40, 5, 5, 30])
    figure = steady_ms(session, 3, Timing(calls=3, rounds=3, warmup=1))
    assert session.calls == 10
    assert 5 <= figure < 20  # the undisturbed round's median (sleep only ever oversleeps), not the spell's 40


class _BatchRecorder:
    """A session that records the batch size of every call."""

    def __init__(self):
        self.sizes = []

    def get_inputs(self):
        return [type("Input", (), {"name": "input", "shape": ["batch", 4]})()]

    def run(self, outputs, feed):
        self.sizes.append(len(feed["input"]))


def test_several_batch_sizes_take_turns_within_each_round():
    session = _BatchRecorder()
    figures = steady_ms_each(session, (1, 8, 1), Timing(calls=2, rounds=3, warmup=1))
    assert list(figures) == [1, 8] and all(ms >= 0 for ms in figures.values())  # a size asked twice is timed once
    assert session.sizes == [1, 8] + [1, 1, 8, 8] * 3  # the warm-up calls, then each round times every size
