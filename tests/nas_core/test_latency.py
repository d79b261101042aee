"""The latency predictor: a genome's network cut into parts, each timed once per machine and batch size (a fake timer
here), cached by machine, summed."""

from __future__ import annotations

import json
import random

import pytest

from nas_core.genome import Genome
from nas_core.latency import (
    BASE_KEY,
    LatencyPredictor,
    LatencyTable,
    Machine,
    network_parts,
)
from nas_core.spaces import create_space

SHAPES = {"image": (1, 8, 8), "sequence": (4, 32)}
HERE = Machine("Test CPU 9000", 2, "onnxruntime 0.0", "CPUExecutionProvider", 1)


class FakeTimer:
    """Milliseconds from the part's description and shape (deterministic); counts what it was asked to time."""

    def __init__(self, machine: Machine = HERE) -> None:
        self._machine, self.calls = machine, []

    def machine(self) -> Machine:
        return self._machine

    def time_ms(self, module, input_shape, batch_size) -> float:
        self.calls.append((type(module).__name__, tuple(input_shape), batch_size))
        size = 1
        for v in input_shape:
            size *= v
        weight = sum(p.numel() for p in module.parameters())
        return 0.005 + 1e-6 * (size + weight) * batch_size

    def time_network_ms(self, module, input_shape, batch_size) -> float:
        return self.time_ms(module, input_shape, batch_size)


def predictor(space: str, timer: FakeTimer, folder=None, batch: int = 1) -> LatencyPredictor:
    shape = SHAPES[space]
    built = create_space(space)
    return LatencyPredictor(lambda g: built.build(g, shape, 10), shape, LatencyTable(timer, folder, batch))


def genomes(space: str, n: int = 6, seed: int = 0) -> list[Genome]:
    rng = random.Random(seed)
    return [create_space(space).sample(rng) for _ in range(n)]


@pytest.mark.parametrize("space", sorted(SHAPES))
def test_a_prediction_is_the_base_plus_each_parts_time_beyond_its_output_cost(space):
    timer = FakeTimer()
    model = predictor(space, timer)
    genome = genomes(space, 1)[0]
    parts = model.parts(genome)
    predicted = model.latency_ms(genome)
    times = model.table.times
    base = next(v for k, v in times.items() if k.startswith(BASE_KEY))
    beyond = [times[p.key] - times[f"output overhead (a ReLU) @ {p.output_shape}"] for p in parts]
    assert predicted == pytest.approx(base + sum(max(b, 0.0) for b in beyond))
    assert len(parts) >= 3, "stem, at least one op and the classifier"


def test_the_parts_are_the_stem_the_ops_the_aligners_the_sums_and_the_classifier():
    genome = Genome.from_dict(
        {
            "nodes": [
                {"id": "input", "op": "input"},
                {"id": "a", "op": "conv", "settings": {"kernel": 3, "channels": 32, "stride": 2}},
                {"id": "b", "op": "identity"},
                {"id": "output", "op": "output"},
            ],
            "edges": [["input", "a"], ["input", "b"], ["a", "output"], ["b", "output"]],
        }
    )
    model = create_space("image").build(genome, (1, 8, 8), 10)
    keys = [p.key for p in network_parts(model, genome)]
    assert keys[0].startswith("Sequential( (0): Normalize()") and keys[0].endswith("@ (1, 8, 8)")
    assert any(k.startswith("Sequential( (0): Conv2d(16, 32, kernel_size=(3, 3), stride=(2, 2)") for k in keys)
    assert any("AvgPool2d" in k and "Conv2d(16, 32, kernel_size=(1, 1)" in k for k in keys), "b is aligned to a"
    assert sum(k.startswith("Sum()") for k in keys) == 1, "two inputs at the output: one sum"
    assert keys[-1].startswith("Head(") and keys[-1].endswith("@ (32, 4, 4)")
    assert not any(k.startswith("Identity") for k in keys), "an identity costs nothing"


def test_more_work_is_predicted_slower():
    small, big = (
        Genome.from_dict(
            {
                "nodes": [
                    {"id": "input", "op": "input"},
                    {"id": "a", "op": "conv", "settings": {"kernel": 3, "channels": channels, "stride": 1}},
                    {"id": "output", "op": "output"},
                ],
                "edges": [["input", "a"], ["a", "output"]],
            }
        )
        for channels in (16, 64)
    )
    model = predictor("image", FakeTimer())
    assert model.latency_ms(small) < model.latency_ms(big)


def test_each_part_is_timed_once_and_the_table_is_kept_for_the_next_search(tmp_path):
    timer = FakeTimer()
    model = predictor("image", timer, tmp_path)
    first = [model.latency_ms(g) for g in genomes("image")]
    timed = len(timer.calls)
    assert timed == len(model.table.times), "no part is timed twice"
    again = FakeTimer()
    second = [predictor("image", again, tmp_path).latency_ms(g) for g in genomes("image")]
    assert second == first and again.calls == [], "the cached table answers, nothing is timed again"
    saved = json.loads(model.table.path.read_text())
    assert saved["machine"]["cpu"] == "Test CPU 9000" and saved["batch_size"] == 1
    assert model.table.path.name.startswith(HERE.key())


@pytest.mark.parametrize(
    "other",
    [
        Machine("Other CPU", 2, "onnxruntime 0.0", "CPUExecutionProvider", 1),
        Machine("Test CPU 9000", 8, "onnxruntime 0.0", "CPUExecutionProvider", 1),
        Machine("Test CPU 9000", 2, "onnxruntime 0.1", "CPUExecutionProvider", 1),
        Machine("Test CPU 9000", 2, "onnxruntime 0.0", "CUDAExecutionProvider", 1),
        Machine("Test CPU 9000", 2, "onnxruntime 0.0", "CPUExecutionProvider", 4),
    ],
)
def test_a_table_is_never_read_on_another_machine(tmp_path, other):
    genome = genomes("image", 1)[0]
    predictor("image", FakeTimer(), tmp_path).latency_ms(genome)
    elsewhere = FakeTimer(other)
    predictor("image", elsewhere, tmp_path).latency_ms(genome)
    assert elsewhere.calls, "every part is timed again on the other machine"
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_another_batch_size_has_its_own_table(tmp_path):
    genome = genomes("image", 1)[0]
    one = predictor("image", FakeTimer(), tmp_path, batch=1).latency_ms(genome)
    timer = FakeTimer()
    eight = predictor("image", timer, tmp_path, batch=8).latency_ms(genome)
    assert timer.calls and all(b == 8 for _, _, b in timer.calls)
    assert eight > one


def test_a_table_moved_from_another_machine_is_not_trusted(tmp_path):
    model = predictor("image", FakeTimer(), tmp_path)
    model.latency_ms(genomes("image", 1)[0])
    data = json.loads(model.table.path.read_text())
    data["machine"]["cpu"] = "Other CPU"  # a file copied over from elsewhere, under this machine's name
    model.table.path.write_text(json.dumps(data))
    timer = FakeTimer()
    predictor("image", timer, tmp_path).latency_ms(genomes("image", 1)[0])
    assert timer.calls


def test_machine_params_name_the_machine():
    params = HERE.params()
    assert params["latency.cpu"] == "Test CPU 9000" and params["latency.threads"] == 1
    assert params["latency.runtime"] == "onnxruntime 0.0" and params["latency.machine_key"] == HERE.key()
    assert "Test CPU 9000, 2 cores" in HERE.describe()
