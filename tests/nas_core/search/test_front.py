"""export pareto in the core: the accuracy/latency front, which of its models are handed over, and their weights."""

from __future__ import annotations

import pytest
import torch

from nas_core.genome import Genome
from nas_core.search.front import FRONT_DIR, FrontWeights, choose, front_of
from nas_core.search.records import Evaluation

GENOME = Genome.from_dict({"nodes": [{"id": "input", "op": "input"}, {"id": "output", "op": "output"}],
                           "edges": [["input", "output"]]})  # fmt: skip


def evaluation(index: int, accuracy: float | None, latency: float | None, hash_: str | None = None, fidelity: int = 3,
               status: str = "ok") -> Evaluation:  # fmt: skip
    metrics = {k: v for k, v in (("val_accuracy", accuracy), ("latency_ms", latency)) if v is not None}
    return Evaluation(index, 1, GENOME, "sample", (), (), f"run-{index}", status, metrics=metrics,
                      hash=hash_ or f"h{index}", fidelity=fidelity)  # fmt: skip


def hashes(evaluations) -> list[str]:
    return [e.hash for e in evaluations]


def test_the_front_keeps_the_non_dominated_fastest_first():
    points = [evaluation(0, 0.90, 3.0), evaluation(1, 0.80, 1.0), evaluation(2, 0.85, 2.5), evaluation(3, 0.84, 2.6),
              evaluation(4, 0.95, 5.0), evaluation(5, 0.70, 1.5)]  # fmt: skip
    assert hashes(front_of(points)) == ["h1", "h2", "h0", "h4"]  # 3 is slower and worse than 2; 5 than 1


def test_failures_missing_figures_and_shorter_trainings_are_left_out():
    points = [evaluation(0, 0.99, 0.5, status="failed"), evaluation(1, 0.80, None), evaluation(2, 0.97, 1.0, "a", 1),
              evaluation(3, 0.60, 1.0, "a", 3), evaluation(4, 0.70, 2.0)]  # fmt: skip
    front = front_of(points)
    assert hashes(front) == ["a", "h4"] and front[0].fidelity == 3  # the architecture at its longest training


def test_equal_points_are_one_member_the_first_evaluated():
    assert hashes(front_of([evaluation(0, 0.9, 1.0), evaluation(1, 0.9, 1.0)])) == ["h0"]


def test_choose_keeps_the_best_the_fastest_and_the_tiers_within_the_limit():
    front = [evaluation(i, 0.5 + 0.05 * i, 1.0 + i) for i in range(8)]  # latencies 1..8 ms, accuracy rising
    best = front[-1]
    chosen = choose(front, best, limit=4, targets=(3.5,))
    assert len(chosen) == 4 and hashes(chosen)[:1] == ["h0"] and best in chosen
    assert "h2" in hashes(chosen)  # the most accurate predicted under 3.5 ms
    assert [e.metrics["latency_ms"] for e in chosen] == sorted(e.metrics["latency_ms"] for e in chosen)
    assert hashes(choose(front, best, limit=20)) == hashes(front)
    assert hashes(choose(front, best, limit=2, targets=(3.5,))) == ["h0", "h7"]  # the limit wins over the tiers


def test_the_best_is_handed_over_even_off_the_kept_front():
    best = evaluation(9, 0.99, None)  # e.g. a reused result: no weights kept, no predicted latency
    chosen = choose([evaluation(0, 0.5, 1.0)], best, limit=3)
    assert hashes(chosen) == ["h0", "h9"]


def test_weights_are_kept_for_the_front_only_and_dropped_when_pushed_off(tmp_path):
    keeper = FrontWeights(tmp_path)
    weights = {"w": torch.ones(2)}
    records: list[Evaluation] = []
    for e in (evaluation(0, 0.8, 2.0), evaluation(1, 0.7, 3.0), evaluation(2, 0.9, 1.0)):
        records.append(e)
        keeper.offer(e, weights, records)
    assert sorted(p.name for p in (tmp_path / FRONT_DIR).iterdir()) == ["h2.pt"]  # 2 dominates 0; 1 never was on it
    assert torch.equal(keeper.weights("h2")["w"], weights["w"]) and keeper.weights("h0") is None
    records.append(evaluation(3, 0.95, 4.0))
    keeper.offer(records[-1], weights, records)
    assert keeper.has("h2") and keeper.has("h3")


def test_a_result_without_weights_is_not_kept(tmp_path):
    keeper = FrontWeights(tmp_path)
    e = evaluation(0, 0.8, 2.0)
    keeper.offer(e, None, [e])
    assert not keeper.has("h0")


@pytest.mark.parametrize("limit", [2, 3])
def test_choose_without_a_best_fills_from_the_front(limit):
    front = [evaluation(i, 0.5 + 0.1 * i, 1.0 + i) for i in range(4)]
    assert len(choose(front, None, limit)) == limit and choose(front, None, limit)[0].hash == "h0"
