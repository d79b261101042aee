"""Rungs, brackets and the promotion rule of multi-fidelity search (pure planning, no training)."""

import pytest

from nas_core.evaluation.fidelity import RungResult, Rungs, promotions
from nas_core.search.requests import train_config
from tests.conftest import search_directly


@pytest.mark.parametrize(
    ("rungs", "epochs"),
    [(Rungs(2, 12, 3), [2, 6, 12]), (Rungs(1, 27, 3), [1, 3, 9, 27]), (Rungs(4, 4, 3), [4]), (Rungs(3, 20, 2), [3, 6, 12, 20])],
)
def test_rungs_grow_by_eta_up_to_max_epochs(rungs, epochs):
    assert rungs.epochs == epochs


def test_hyperband_has_a_bracket_starting_at_every_rung_and_deals_new_architectures_in_turn():
    assert Rungs(2, 12, 3).brackets == 1
    hyperband = Rungs(2, 12, 3, "hyperband")
    assert hyperband.brackets == 3
    assert [hyperband.bracket_of(i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_planned_evaluations_count_every_rung():
    assert Rungs(2, 12, 3).planned_evaluations(20) == 20 + 6 + 2
    # brackets of 7, 7, 6 new architectures starting at rungs 0, 1, 2
    assert Rungs(2, 12, 3, "hyperband").planned_evaluations(20) == (7 + 2 + 0) + (7 + 2) + 6


def _rung(epochs, scores, bracket=0, prefix="h"):
    return [RungResult(f"{prefix}{i}", bracket, epochs, None if s is None else (s,)) for i, s in enumerate(scores)]


def test_the_top_third_of_a_rung_is_promoted_once():
    rungs = Rungs(2, 12, 3)
    first = _rung(2, [0.5, 0.9, 0.7, 0.8, 0.1, 0.2, 0.3, 0.4, 0.6])
    assert [e.hash for e in promotions(rungs, first)] == ["h1", "h3", "h2"]
    assert [e.hash for e in promotions(rungs, first, pending=[("h1", 6)])] == ["h3", "h2"]
    second = [*first, RungResult("h1", 0, 6, (0.95,)), RungResult("h3", 0, 6, (0.85,)), RungResult("h2", 0, 6, (0.9,))]
    assert [(e.hash, e.epochs) for e in promotions(rungs, second)] == [("h1", 6)], "only the next rung's top third moves on"


def test_failed_evaluations_count_in_a_rung_but_are_never_promoted():
    rungs = Rungs(1, 3, 3)
    assert [e.hash for e in promotions(rungs, _rung(1, [None, None, 0.2]))] == ["h2"]
    assert promotions(rungs, _rung(1, [None, None, None])) == []
    assert promotions(rungs, _rung(1, [0.9, 0.8])) == [], "fewer than eta evaluations promote nobody"


def test_higher_rungs_come_first_and_ties_keep_evaluation_order():
    rungs = Rungs(1, 9, 3)
    low = _rung(1, [0.5, 0.5, 0.5], prefix="a")
    high = [RungResult(f"b{i}", 0, 3, (0.7,)) for i in range(3)]
    chosen = promotions(rungs, [*low, *high])
    assert [(e.hash, e.epochs) for e in chosen] == [("b0", 3), ("a0", 1)]


def test_hyperband_brackets_compete_only_among_themselves():
    rungs = Rungs(1, 9, 3, "hyperband")
    bracket0 = _rung(1, [0.1, 0.2, 0.3], bracket=0, prefix="x")
    bracket1 = _rung(3, [0.9, 0.8, 0.7], bracket=1, prefix="y")
    assert [(e.hash, e.epochs) for e in promotions(rungs, [*bracket0, *bracket1])] == [("y0", 3), ("x2", 1)]


# ---- a real multi-fidelity search on digits (library side, no Prefect) -------------------------------------------
def _search(project, **settings):
    return search_directly(project, "mf", **{"population": 3, "workers": 1, **settings})


@pytest.mark.slow
def test_successive_halving_promotes_the_best_and_continues_them_from_their_checkpoint(project, single_torch_thread):
    import dataclasses

    import torch
    from mlflow.tracking import MlflowClient

    from nas_core.evaluation.training import train_genome
    from nas_core.search.records import PROMOTION

    run = _search(project, budget=6, fidelity="epochs", min_epochs=1, max_epochs=3, eta=3)
    first = sorted((r for r in run.records if r.origin != PROMOTION), key=lambda r: r.index)
    promoted = [r for r in run.records if r.origin == PROMOTION]
    assert len(first) == 6 and {r.fidelity for r in first} == {1}
    assert promoted and {r.fidelity for r in promoted} == {3}
    top = sorted((r for r in first if r.ok), key=lambda r: r.selection_key(), reverse=True)[: len(first) // 3]
    assert {r.hash for r in top} <= {r.hash for r in promoted}, "the top third of the first rung reached the last"
    assert len({(r.hash, r.fidelity) for r in run.records}) == len(run.records), "each (hash, fidelity) evaluated once"
    assert run.best().fidelity == 3 and run.best().origin == PROMOTION

    client = MlflowClient(run.tracker.tracking_uri)
    by_run = {r.mlflow_run_id: r for r in first}
    for record in promoted:
        source = by_run[record.promoted_from]
        assert source.hash == record.hash and record.parent_run_ids == (source.mlflow_run_id,)
        remote = client.get_run(record.mlflow_run_id)
        assert remote.data.tags["nas.fidelity"] == "3" and remote.data.tags["nas.resumed_from_epoch"] == "1"
        history = client.get_metric_history(record.mlflow_run_id, "val_accuracy")
        assert sorted(m.step for m in history) == [1, 2, 3], "the promoted run shows the whole learning curve"
    assert not (run.output / "checkpoints").exists() or not any(
        p.name.endswith("-e3.pt") for p in (run.output / "checkpoints").iterdir()
    ), "the last rung keeps no training state"

    # continuing from the checkpoint gives exactly what training straight through for 3 epochs gives
    best = run.best()
    config = dataclasses.replace(train_config(run.config, run.proposer.fidelity, best.genome), epochs=3, schedule_epochs=3)
    straight = train_genome(best.genome, run.data, config, build=run.space.build)
    assert straight.val_accuracy == best.metrics["val_accuracy"]
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, run.best_weights[name]), name


@pytest.mark.slow
def test_a_resumed_multi_fidelity_search_plans_the_same_generations(project, single_torch_thread):
    from nas_core.config import SearchConfig
    from nas_core.evaluation.worker import evaluate
    from nas_pipeline.pipeline import build_search

    settings = {"budget": 4, "fidelity": "epochs", "min_epochs": 1, "max_epochs": 2, "eta": 2, "population": 2, "workers": 1}
    straight = _search(project, **settings)
    identities = sorted((r.index, r.hash, r.fidelity) for r in straight.records)

    config = SearchConfig(project_dir=project, output=project / "crashed", **settings)
    crashed = build_search(config, search_id="mf-crash")
    crashed.prepare()
    for _ in range(2):  # two generations, the second one left half done
        jobs = crashed.propose()
        crashed.record(evaluate(jobs[0]))
        if len(jobs) > 1 and crashed.generation == 1:
            crashed.record(evaluate(jobs[1]))
            crashed.select()
    resumed = build_search(config, search_id="mf-crash", resume=True)
    resumed.prepare()
    while jobs := resumed.propose():
        for job in jobs:
            resumed.record(evaluate(job))
        resumed.select()
    assert sorted((r.index, r.hash, r.fidelity) for r in resumed.records) == identities
