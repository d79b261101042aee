"""Searches that remember: reuse of exact evaluations, warm starts, and the time budget (the core loop, runs in memory)."""

import dataclasses

import pytest

from nas_core.config import SearchConfig
from nas_core.data.store import LocalDataStore
from nas_core.evaluation.training import TrainConfig
from nas_core.search import checkpoint as files
from nas_core.search.clock import SearchClock
from nas_core.search.identity import evaluation_key
from nas_core.search.loop import Search
from nas_core.search.memory import WarmStartError
from nas_core.search.ports import MemoryTracker
from nas_core.search.records import Evaluation
from nas_core.search.warm_start import check_warm_start
from nas_core.spaces import create_space
from tests.nas_core.search.test_table_search import write_table

TABLE_SETTINGS = {"space": "nb201", "select_metric": "val", "report_metric": "test", "budget": 6, "population": 3}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_table(tmp_path_factory.mktemp("table") / "toy_table.json")


def _search(root, tracker, name, resume=False, **settings):
    config = SearchConfig(project_dir=root, output=root / name, **settings)
    return Search(config, LocalDataStore(root / "data"), search_id=name, resume=resume, connect_tracker=lambda: tracker)


def _table_search(root, tracker, table, name, **settings):
    return _search(root, tracker, name, evaluator=f"table:{table}", **{**TABLE_SETTINGS, **settings})


def _snapshot(tracker, search_id):
    return {
        run_id: (run.status, dict(run.tags), {k: list(v) for k, v in run.metrics.items()})
        for run_id, run in tracker.runs.items()
        if run.tags.get("search_id") == search_id
    }


def test_the_same_search_again_with_reuse_trains_only_new_candidates(tmp_path, table):
    tracker = MemoryTracker()
    first = _table_search(tmp_path, tracker, table, "first", seed=1)
    first_summary = first.run()
    before = _snapshot(tracker, "first")
    again = _table_search(tmp_path, tracker, table, "again", seed=1, warm_start="reuse")
    summary = again.run()

    by_run = {c["mlflow_run_id"]: c for c in first_summary.candidates}
    reused = [c for c in summary.candidates if c["reused_from"]]
    trained = [c for c in summary.candidates if not c["reused_from"]]
    assert len(reused) == 6 and len(trained) == 6, "the first search's 6 are reused; the budget buys 6 new ones"
    for candidate in reused:  # the same seed proposes the same architectures: each points at the run that measured it
        assert by_run[candidate["reused_from"]]["hash"] == candidate["hash"]
        assert by_run[candidate["reused_from"]]["val_accuracy"] == candidate["val_accuracy"]
    assert not {c["hash"] for c in trained} & {c["hash"] for c in first_summary.candidates}
    assert summary.best.val_accuracy >= first_summary.best.val_accuracy
    assert _snapshot(tracker, "first") == before, "the earlier search's runs are read, never changed"
    runs = [tracker.runs[c["mlflow_run_id"]] for c in reused]
    assert all(r.status == "FINISHED" and r.tags["reused_from"] and r.parent_run_id == again.run_id for r in runs)


def test_a_warm_start_tells_the_strategy_the_earlier_results_and_never_ends_below_them(tmp_path, table):
    tracker = MemoryTracker()
    first = _table_search(tmp_path, tracker, table, "first", seed=1).run()
    warm = _table_search(tmp_path, tracker, table, "warm", seed=2, warm_start="auto")
    summary = warm.run()

    assert summary.warm_start == {"mode": "auto", "searches": ["first"], "told": 6, "seeded": 0}
    assert not {c["hash"] for c in summary.candidates} & {c["hash"] for c in first.candidates}, "told = seen: never proposed"
    assert len(summary.candidates) == 6 and not any(c["reused_from"] for c in summary.candidates)
    assert summary.best.val_accuracy >= first.best.val_accuracy
    assert set(warm.strategy.seen) >= {c["hash"] for c in first.candidates}
    assert tracker.runs[warm.run_id].artifacts["warm_start.json"][0]["reused_from"] in {
        c["mlflow_run_id"] for c in first.candidates
    }


def test_warm_start_from_named_searches_tells_only_theirs_and_seeds_the_best(tmp_path, table):
    tracker = MemoryTracker()
    first = _table_search(tmp_path, tracker, table, "first", seed=1).run()
    _table_search(tmp_path, tracker, table, "second", seed=2).run()
    warm = _table_search(tmp_path, tracker, table, "warm", seed=3, warm_start="first")
    summary = warm.run()
    assert summary.warm_start["searches"] == ["first"] and summary.warm_start["told"] == 6
    assert {e.reused_from for e in warm.told} == {c["mlflow_run_id"] for c in first.candidates}


def test_seed_genomes_start_a_search_on_new_data_from_the_best_earlier_architectures(tmp_path, table):
    tracker = MemoryTracker()
    first = _table_search(tmp_path, tracker, table, "first", seed=1).run()
    changed = tmp_path / "changed.json"  # another table version: nothing is comparable, architectures still are
    changed.write_text(table.read_text().replace('"rank": 0', '"rank": 1'))
    seeded = _table_search(tmp_path, tracker, changed, "seeded", seed=5, warm_start="auto", seed_genomes=2)
    summary = seeded.run()
    best_two = sorted(first.candidates, key=lambda c: c["val_accuracy"], reverse=True)[:2]
    assert summary.warm_start["told"] == 0 and summary.warm_start["seeded"] == 2
    assert [c["hash"] for c in summary.candidates[:2]] == [c["hash"] for c in best_two]
    assert all(c["origin"] == "enqueued" and not c["reused_from"] for c in summary.candidates[:2]), "retrained"


def test_a_warm_start_naming_an_unknown_search_or_another_space_is_refused(tmp_path, table):
    tracker = MemoryTracker()
    _table_search(tmp_path, tracker, table, "first", seed=1).run()
    searches = tracker.memory().searches()
    config = SearchConfig(space="nb201", warm_start="first")
    check_warm_start(config, searches, "memory:")
    with pytest.raises(WarmStartError, match="no search 'nope'"):
        check_warm_start(config.model_copy(update={"warm_start": "first,nope"}), searches, "memory:")
    with pytest.raises(WarmStartError, match="searched space 'nb201', not 'image'"):
        check_warm_start(SearchConfig(space="image", warm_start="first"), searches, "memory:")


# ---- the evaluation identity ------------------------------------------------------------------------------------------

TRAINED = {"budget": 1, "population": 1, "epochs": 1, "workers": 1, "seed": 0, "warm_start": "reuse"}
IN_THE_IDENTITY = {
    "epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0, "seed": 1, "augment": "shift",
    "precision": "bf16", "early_stop": "median",
}  # fmt: skip
EXECUTION_ONLY = {
    "workers": 2, "runner": "processes", "device": "cpu", "candidate_timeout": 600.0, "tracking_timeout": 60.0,
    "budget": 3, "population": 2, "strategy": "random", "proxy": "synflow", "final_epochs": 2, "time_budget": "1h",
}  # fmt: skip
# (the output folder differs in every search here; the experiment is where the memory is: another one has none)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """One trained candidate (digits, one epoch) in a tracker: the store later searches look their candidates up in."""
    root = tmp_path_factory.mktemp("identity")
    tracker = MemoryTracker()
    summary = _search(root, tracker, "first", **TRAINED).run()
    return root, tracker, summary.candidates[0]["hash"]


def _first_planned_is_reused(root, tracker, name, **changed):
    """Plan a search with one setting changed: whether its first candidate (the same genome) was reused."""
    search = _search(root, tracker, name, **{**TRAINED, **changed})
    search.prepare()
    search.propose()
    return search.records[0].reused_from != "" if search.records else False


@pytest.mark.parametrize("setting", sorted(IN_THE_IDENTITY))
def test_changing_a_setting_in_the_identity_misses_the_earlier_evaluation(trained_once, setting):
    root, tracker, _ = trained_once
    assert not _first_planned_is_reused(root, tracker, f"changed-{setting}", **{setting: IN_THE_IDENTITY[setting]})


def test_changing_only_how_and_where_it_runs_hits_the_earlier_evaluation(trained_once):
    root, tracker, first_hash = trained_once
    for setting, value in EXECUTION_ONLY.items():
        search = _search(root, tracker, f"moved-{setting}", **{**TRAINED, setting: value})
        search.prepare()
        search.propose()
        assert search.records and search.records[0].reused_from, f"{setting} is not part of the identity"
        assert search.records[0].hash == first_hash


def test_the_key_covers_architecture_data_version_and_evaluator():
    config, train = SearchConfig(), TrainConfig(epochs=3)
    table = SearchConfig(evaluator="table:t.json", space="nb201")
    keys = {
        evaluation_key(config, train, "arch-a", "data-1", None),
        evaluation_key(config, train, "arch-b", "data-1", None),
        evaluation_key(config, train, "arch-a", "data-2", None),
        evaluation_key(config, dataclasses.replace(train, epochs=4), "arch-a", "data-1", None),
        evaluation_key(table, train, "arch-a", "table-1", "table-1"),
        evaluation_key(table, train, "arch-a", "table-2", "table-2"),
        evaluation_key(table.model_copy(update={"select_metric": "other"}), train, "arch-a", "table-1", "table-1"),
    }
    assert len(keys) == 7
    # a table lookup does not train: training settings are not part of its identity
    assert evaluation_key(table, train, "a", "t", "t") == evaluation_key(table, TrainConfig(lr=0.5), "a", "t", "t")


# ---- the time budget --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # trains real candidates against a clock
def test_a_time_budget_stops_proposing_and_closes_every_run(tmp_path):
    tracker = MemoryTracker()
    search = _search(tmp_path, tracker, "timed", budget=500, population=2, epochs=1, workers=1, time_budget="3s")
    summary = search.run()
    assert summary.stop_reason == "time"
    assert 0 < len(summary.candidates) < 500
    assert summary.time_budget_seconds == 3.0 and summary.spent_seconds > 0
    assert summary.device_seconds > 0
    assert {run.status for run in tracker.runs.values()} == {"FINISHED"}, "nothing left RUNNING"


@pytest.mark.slow  # trains real candidates against a clock
def test_a_multi_fidelity_search_respects_the_time_budget_too(tmp_path):
    tracker = MemoryTracker()
    settings = {"fidelity": "epochs", "min_epochs": 1, "max_epochs": 3, "eta": 2, "budget": 500, "population": 2}
    summary = _search(tmp_path, tracker, "rungs", workers=1, time_budget="4s", **settings).run()
    assert summary.stop_reason == "time" and 0 < len(summary.candidates) < 500
    assert {run.status for run in tracker.runs.values()} == {"FINISHED"}


def test_a_search_that_ends_by_its_budget_says_so(tmp_path, table):
    summary = _table_search(tmp_path, MemoryTracker(), table, "counted", seed=1).run()
    assert summary.stop_reason == "budget" and summary.time_budget_seconds is None


def test_a_resumed_search_keeps_the_time_it_already_spent(tmp_path):
    tracker = MemoryTracker()
    settings = {"budget": 4, "population": 2, "epochs": 1, "workers": 1, "time_budget": "1h"}
    search = _search(tmp_path, tracker, "spent", **settings)
    search.prepare()
    search.propose()  # plans (and checkpoints) the first generation; the process "dies" here
    state = files.read_state(search.output)
    files.write_state(search.output, {**state, "spent_seconds": 3700.0})
    resumed = _search(tmp_path, tracker, "spent", resume=True, **settings)
    summary = resumed.run()
    assert summary.stop_reason == "time" and summary.candidates == ()
    assert summary.spent_seconds >= 3700.0


def test_the_clock_fits_rounds_of_the_measured_epoch_time_into_what_is_left():
    clock = SearchClock(100.0, workers=2)
    done = [_trained(wall_seconds=10.0, epochs=2)]  # 5 s per epoch
    assert clock.affordable([2, 2, 2, 2], []) == 4, "no estimate yet: the whole generation"
    assert clock.affordable([2] * 20, done) == 18, "9 rounds of 2 x 10 s fit in 100 s"
    assert clock.affordable([8, 8], done) == 2 and clock.affordable([30], done) == 0
    assert SearchClock(None, workers=1).affordable([10**6], done) == 1
    assert SearchClock(-1.0, workers=1).affordable([1], []) == 0, "time up"


def _trained(wall_seconds, epochs):
    genome = create_space("image").sample(__import__("random").Random(0))
    return Evaluation(1, 1, genome, "sample", (), (), "r", "ok", metrics={"wall_seconds": wall_seconds}, fidelity=epochs)


def test_a_warm_start_after_a_reuse_tells_each_result_once_from_the_run_that_measured_it(tmp_path, table):
    tracker = MemoryTracker()
    first = _table_search(tmp_path, tracker, table, "first", seed=1).run()
    again = _table_search(tmp_path, tracker, table, "again", seed=1, warm_start="reuse").run()
    warm = _table_search(tmp_path, tracker, table, "warm", seed=2, warm_start="auto")
    summary = warm.run()
    measured = {c["mlflow_run_id"] for c in (*first.candidates, *again.candidates) if not c["reused_from"]}
    assert summary.warm_start["told"] == 12 and summary.warm_start["searches"] == ["again", "first"]
    assert {e.reused_from for e in warm.told} == measured
