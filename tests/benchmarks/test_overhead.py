"""The pure parts of benchmarks/overhead.py and benchmarks/time_to_accuracy.py, on hand-made summaries."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from benchmarks import overhead
from benchmarks import time_to_accuracy as tta


def test_union_counts_overlaps_once():
    assert overhead.union_seconds([]) == 0.0
    assert overhead.union_seconds([(0, 4), (2, 6), (10, 11), (3, 5)]) == 7.0  # [0, 6] and [10, 11]
    assert overhead.union_seconds([(5, 6), (0, 1), (0.5, 0.75)]) == 2.0


def summary() -> dict:
    candidates = [
        {"train_started": 100.0, "train_ended": 104.0, "train_seconds": 4.0, "wall_seconds": 5.0},
        {"train_started": 102.0, "train_ended": 108.0, "train_seconds": 6.0, "wall_seconds": 6.5},
    ]
    timings = {"prepare": 1.0, "propose": 0.5, "candidates": 9.0, "select": 0.25, "export": 2.0, "finish": 0.25, "total": 13.5}
    return {"elapsed_seconds": 14.0, "timings": timings, "candidates": candidates}


def test_breakdown_of_a_complete_summary():
    result = overhead.breakdown(summary(), wall=20.0)
    assert result["training"] == 8.0 and result["overhead_share"] == pytest.approx(0.6)
    assert result["startup"] == 6.0 and result["candidates_outside_fit"] == 1.0
    assert result["per_candidate_outside_fit"] == 1.5 and result["train_seconds_sum"] == 10.0
    assert result["final"] is None  # the stage did not run
    assert result["other"] == pytest.approx(14.0 - 13.0)


def test_the_report_judges_the_time_per_candidate_outside_fit():
    out = io.StringIO()
    overhead.print_report(overhead.aggregate([overhead.breakdown(summary(), wall=20.0)]), "t", Console(file=out, width=200))
    assert "per candidate outside fit: 0.75 s on average" in out.getvalue()
    assert "target < 0.1 s: missed" in out.getvalue()
    # training 8 s of 20 s wall and of 14 s of the search's own time: 60 % and 43 %, over both targets
    assert "overhead: 60.0 % of wall (target with nas up <= 25 %: missed)" in out.getvalue()
    assert "overhead: 42.9 % of the search's own time (target with nas up <= 15 %: missed)" in out.getvalue()


def test_latency_prediction_is_reported_apart_from_the_stages_it_runs_inside():
    timed = summary()
    timed["timings"]["latency_prediction"] = 0.4
    result = overhead.breakdown(timed, wall=20.0)
    assert result["latency_prediction"] == 0.4 and result["other"] == pytest.approx(1.0), "not counted twice"
    out = io.StringIO()
    overhead.print_report(overhead.aggregate([result]), "t", Console(file=out, width=200))
    assert "latency prediction: 0.40 s (2.0 % of wall, 0.200 s per candidate" in out.getvalue()
    assert overhead.breakdown(summary(), wall=20.0)["latency_prediction"] is None


def test_breakdown_tolerates_missing_keys_and_prints_dashes():
    old = {"elapsed_seconds": 10.0, "candidates": [{"train_seconds": 3.0}]}  # before timings existed
    result = overhead.breakdown(old, wall=12.0)
    assert result["training"] is result["overhead_share"] is result["prepare"] is result["other"] is None
    assert result["startup"] == 2.0 and result["per_candidate_outside_fit"] is None
    out = io.StringIO()
    overhead.print_report(overhead.aggregate([result]), "t", Console(file=out, width=200))
    assert "overhead: -" in out.getvalue() and "│ prepare " in out.getvalue()


def test_aggregate_takes_medians_ignoring_missing():
    runs = [{"a": 1.0, "b": None}, {"a": 3.0, "b": None}, {"a": 8.0, "b": 2.0}]
    assert overhead.aggregate(runs) == {"a": 3.0, "b": 2.0}


def entry(seconds: float, accuracy: float | None, status: str = "ok") -> dict:
    return {"finished_seconds": seconds, "test_accuracy": accuracy, "status": status, "fidelity": 4}


def test_time_to_target_takes_the_first_successful_evaluation_reaching_it():
    candidates = [entry(30, 0.95), entry(10, 0.90), entry(5, 0.99, "failed"), entry(20, 0.96), entry(1, None)]
    assert tta.time_to_target(candidates, 0.955) == 20
    assert tta.time_to_target(candidates, 0.95) == 20 and tta.time_to_target(candidates, 0.9) == 10
    assert tta.time_to_target(candidates, 0.97) is None
    assert tta.best_test_accuracy(candidates) == 0.96 and tta.best_test_accuracy([]) is None


def test_compare_and_summarise_over_seeds():
    full = {"elapsed_seconds": 100.0, "candidates": [entry(40, 0.95), entry(90, 0.97)]}
    multi = {"elapsed_seconds": 60.0, "candidates": [entry(10, 0.90), entry(30, 0.968)]}
    row = tta.compare("bo", 0, full, multi, target=None, tolerance=0.005)
    assert row["target"] == pytest.approx(0.965) and (row["ff_seconds"], row["mf_seconds"]) == (90, 30)
    never = tta.compare("bo", 1, full, {"elapsed_seconds": 50.0, "candidates": [entry(5, 0.9)]}, target=0.95, tolerance=0.005)
    assert (never["ff_seconds"], never["mf_seconds"]) == (40, None)
    result = tta.summarise("bo", [row, never])
    assert result["ff_seconds"] == 65 and result["mf_seconds"] is None and result["ratio"] is None  # median of 30 and never
    assert tta.summarise("bo", [row])["ratio"] == pytest.approx(1 / 3)
