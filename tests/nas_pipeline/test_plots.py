"""Search figures: valid PNGs for every space and awkward summaries; Pareto fronts and lineage links are right."""

from __future__ import annotations

import math
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from nas_core.genome import Genome
from nas_core.search.summary import SearchSummary
from nas_core.spaces import SPACES, create_space
from nas_core.spaces.nb201 import cell_to_genome
from nas_pipeline import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_size: tuple[int, int] = (150, 100)) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_size[0] and image.height >= min_size[1], image.size


def candidate(index: int, generation: int = 1, **fields) -> dict:
    base = {
        "index": index, "generation": generation, "hash": f"h{index}", "fidelity": 12, "status": "ok", "reason": "",
        "origin": "sample", "val_accuracy": 0.5 + index / 100, "val_f1": 0.5, "test_accuracy": 0.5, "params": 1000.0 * index,
        "flops": 5e4 * index, "mlflow_run_id": f"run{index}", "parents": [], "parent_run_ids": [],
        "finished_seconds": 10.0 * index, "train_seconds": 9.0, "proxy": None, "promoted_from": None,
    }  # fmt: skip
    return {**base, **fields}


def hand_made_candidates() -> list[dict]:
    """Two fidelities with a promotion, mutation and crossover children, a failed and a metric-less candidate."""
    no_metrics = dict.fromkeys(("val_accuracy", "val_f1", "test_accuracy", "params", "flops"))
    return [
        candidate(1, fidelity=4, val_accuracy=0.70),
        candidate(2, fidelity=4, val_accuracy=0.80),
        candidate(3, status="failed", reason="diverged: training loss is nan", fidelity=4, **no_metrics),
        candidate(4, 2, origin="mutation", fidelity=4, val_accuracy=0.85, parents=["h2"], parent_run_ids=["run2"]),
        candidate(5, 2, origin="crossover", fidelity=4, val_accuracy=0.60, parents=["h1", "h4"], parent_run_ids=[]),
        candidate(6, 2, origin="promotion", hash="h4", fidelity=12, val_accuracy=0.75, parents=["h4"], promoted_from="run4"),
        candidate(7, 3, origin="promotion", hash="h2", fidelity=12, val_accuracy=0.90, parents=["h2"], promoted_from=None),
        candidate(8, 3, origin="mutation", fidelity=4, val_accuracy=math.nan, status="failed", reason="timeout", parents=["h2"]),
    ]


def summary_of(candidates: list[dict], **fields) -> SearchSummary:
    """A finished search's summary record holding ``candidates`` (no best model unless ``fields`` give one)."""
    data = {
        "search_id": "20260101-000000-abcdef", "mlflow_tracking_uri": "sqlite:///mlflow.db", "mlflow_experiment": "nas-digits",
        "mlflow_run_id": "parent0", "mlflow_ui": "mlflow ui --backend-store-uri sqlite:///mlflow.db", "output": "outputs/s",
        "dataset": {"name": "digits", "version": "22788fc6.dir"}, "strategy": "evolution", "budget": len(candidates),
        "seed": 0, "fidelity": {}, "proxy": None, "final": None, "candidates": candidates, "best": None,
    }  # fmt: skip
    return SearchSummary.from_dict({**data, **fields})


@pytest.mark.parametrize("space", sorted(SPACES))
def test_architecture_png_for_every_space(space, tmp_path):
    genomes = [create_space(space).sample(random.Random(seed)) for seed in range(3)]
    if space == "nb201":
        genomes.append(cell_to_genome(["nor_conv_3x3", "none", "skip_connect", "avg_pool_3x3", "nor_conv_1x1", "none"]))
    for i, genome in enumerate(genomes):
        dims = 1 if space == "sequence" else 2
        assert_png(plots.architecture_png(genome, tmp_path / f"{space}_{i}.png", title=f"{space} $x$ genome", dims=dims))


def test_architecture_png_with_hparams_and_labels(tmp_path):
    genome = create_space("image", hparams={"lr": [0.01, 0.001]}).sample(random.Random(1))
    assert genome.hparams
    assert_png(plots.architecture_png(genome, tmp_path / "joint.png"))
    node = Genome.from_dict(
        {"nodes": [{"id": "c", "op": "conv", "settings": {"kernel": 3, "channels": 32, "stride": 2}}], "edges": []}
    ).nodes[0]
    assert plots.node_label(node) == "conv 3x3 c32 s2"
    assert plots.node_label(node, dims=1) == "conv k3 c32 s2"


def test_pareto_front_known_answers():
    points = [(10, 0.9), (5, 0.8), (5, 0.7), (20, 0.95), (20, 0.9), (1, 0.5), (30, 0.95)]
    # (5, 0.7) loses to (5, 0.8); (20, 0.9) to (10, 0.9); (30, 0.95) to (20, 0.95)
    assert plots.pareto_front(points) == [0, 1, 3, 5]
    assert plots.pareto_front([(3, 0.5), (3, 0.5), (4, 0.5)]) == [0, 1]  # equal points are all kept
    assert plots.pareto_front([(1, math.nan), (2, 0.4), (math.inf, 0.9)]) == [1]
    assert plots.pareto_front([]) == []


def test_best_so_far_follows_the_highest_fidelity():
    steps = plots.best_so_far_history(hand_made_candidates())
    # finishing order 1, 2, 4, 5 at 4 epochs; 6 is the first at 12 epochs (0.75 < 0.85 at 4: the line steps down); 7 raises it
    assert [round(y, 2) for _, y in steps] == [0.70, 0.80, 0.85, 0.85, 0.75, 0.90]
    assert [x for x, _ in steps] == [10, 20, 40, 50, 60, 70]


def test_lineage_links_parents_and_promotions():
    edges = set(plots.lineage_edges(hand_made_candidates()))
    assert edges == {
        (2, 4, "mutation"),  # by parent run id
        (1, 5, "crossover"), (4, 5, "crossover"),  # by hash
        (4, 6, "promotion"),  # promoted_from
        (2, 7, "promotion"),  # the lower-fidelity entry of the same hash
        (7, 8, "mutation"),  # the latest earlier entry of hash h2
    }  # fmt: skip


@pytest.mark.parametrize(
    "candidates",
    [
        hand_made_candidates(),
        [candidate(1)],
        [candidate(1, status="failed", val_accuracy=None, params=None, flops=None, finished_seconds=None)],
        [{"index": 1, "status": "failed"}, {"index": 2, "status": "ok", "val_accuracy": 0.5}],  # an old, sparse summary
        [],
    ],
    ids=["multi-fidelity", "single", "all-failed", "sparse", "empty"],
)
def test_search_plots_survive_awkward_summaries(candidates, tmp_path):
    paths = plots.search_plots(summary_of(candidates), tmp_path / "plots")
    assert set(paths) == {"best_so_far", "accuracy_vs_cost", "lineage"}
    for key, path in paths.items():
        assert path == tmp_path / "plots" / f"{key}.png"
        assert_png(path)
    assert_png(plots.accuracy_vs_cost_png(candidates, tmp_path / "flops.png", cost="flops"))


def test_learning_curves_with_gaps(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_accuracy": 0.3, "val_f1": 0.2},
        {"epoch": 2, "train_loss": 1.0, "val_loss": math.nan, "val_accuracy": 0.6},
        {"epoch": 3, "train_loss": 0.5},  # final training: train loss only
    ]
    assert_png(plots.learning_curves_png(history, tmp_path / "curves.png", title="#1 sample"))
    assert_png(plots.learning_curves_png([{"epoch": 1, "train_loss": 1.0}], tmp_path / "one.png"))
    assert_png(plots.learning_curves_png([], tmp_path / "none.png"))


def test_rendering_in_threads_matches_serial(tmp_path):
    """Candidates render in worker threads: concurrent figures must not disturb each other."""
    genomes = [create_space("image").sample(random.Random(seed)) for seed in range(4)]
    serial = [plots.architecture_png(g, tmp_path / f"serial{i}.png").read_bytes() for i, g in enumerate(genomes)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ig: plots.architecture_png(ig[1], tmp_path / f"thread{ig[0]}.png"), enumerate(genomes)))
    assert [p.read_bytes() for p in threaded] == serial
