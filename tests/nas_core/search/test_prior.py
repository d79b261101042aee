"""The ``prior`` setting: a table search in memory starts from the best architectures of a cached proxy table."""

import json

import pytest

from nas_core.config import SETTING_GROUPS, ConfigError, load_config
from nas_core.data.store import LocalDataStore
from nas_core.evaluation.proxy_table import ProxyTable, ProxyTableKey
from nas_core.search import checkpoint as files
from nas_core.search import proposing
from nas_core.search.loop import Search
from nas_core.search.ports import MemoryTracker
from nas_core.search.proposing import PRIOR_FOLDER, PRIOR_SEED, TABLE_INPUT_SPEC
from nas_core.spaces import create_space
from nas_core.strategies.base import PRIOR_POOL
from tests.nas_core.search.test_table_search import write_table

SETTINGS = {"space": "nb201", "select_metric": "val", "report_metric": "test", "budget": 6, "population": 3}


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_table(tmp_path_factory.mktemp("table") / "toy_table.json")


@pytest.fixture(scope="module")
def scores():
    """A stand-in proxy table: the more average pools, the higher (the toy table's values disagree)."""
    space = create_space("nb201")
    return {space.identity(g): float(space.arch_string(g).count("avg_pool")) for g in space.enumerate()}


def cache_table(project, scores) -> ProxyTable:
    """Write the table where a search of ``project`` looks for it, so that nothing is computed."""
    key = ProxyTableKey.of(create_space("nb201"), *TABLE_INPUT_SPEC, "synflow", seed=PRIOR_SEED)
    table = ProxyTable(key, scores)
    table.write(project / PRIOR_FOLDER / key.file_name())
    return table


def search(root, table, name, **settings):
    config = load_config(overrides={"project_dir": root, "output": root / name, "evaluator": f"table:{table}",
                                    **SETTINGS, **settings})  # fmt: skip
    return Search(config, LocalDataStore(root / "data"), search_id=name, connect_tracker=lambda: MemoryTracker())


@pytest.mark.parametrize("strategy", ["evolution", "bo"])
def test_a_search_with_a_prior_starts_from_the_best_scored_and_records_the_table(tmp_path, table, scores, strategy):
    cached = cache_table(tmp_path, scores)
    summary = search(tmp_path, table, "primed", strategy=strategy, prior="synflow").run()
    best = sorted(scores, key=lambda h: -scores[h])[:PRIOR_POOL]
    first = summary.candidates[: SETTINGS["population"]]
    assert all(c["origin"] == "prior" and c["hash"] in best for c in first)
    state = json.loads((tmp_path / "primed" / files.STATE_FILE).read_text())
    assert state["prior"]["checksum"] == cached.checksum and state["prior"]["proxy"] == "synflow"
    plain = search(tmp_path, table, "plain", strategy=strategy).run()
    assert not any(c["origin"] == "prior" for c in plain.candidates)
    assert json.loads((tmp_path / "plain" / files.STATE_FILE).read_text())["prior"] is None


def test_the_setting_is_in_its_group_and_takes_every_space():
    assert "prior" in SETTING_GROUPS["Fast evaluation"]
    assert load_config(overrides={"space": "nb201", "prior": "naswot"}).prior == "naswot"
    assert load_config(overrides={"space": "image", "prior": "synflow"}).prior == "synflow"
    with pytest.raises(ConfigError, match="prior"):
        load_config(overrides={"space": "nb201", "prior": "params"})


@pytest.mark.parametrize("strategy", ["evolution", "bo"])
def test_a_space_that_cannot_be_listed_gets_a_scored_pool_cached_in_the_project(tmp_path, monkeypatch, strategy):
    monkeypatch.setattr(proposing, "PRIOR_SAMPLE", 12)  # a small pool: real synflow scores, in seconds
    config = load_config(overrides={"project_dir": tmp_path, "space": "image", "max_nodes": 3, "prior": "synflow",
                                    "strategy": strategy, "population": 3, "seed": 4})  # fmt: skip
    proposer = proposing.Proposer(config, tmp_path / "out")
    proposer.use_prior(((1, 8, 8), 10))
    (path,) = (tmp_path / PRIOR_FOLDER).iterdir()
    table = ProxyTable.read(path)
    assert table.key.sample == 12 and len(table.genomes) == 12 and proposer.prior["checksum"] == table.checksum
    best = sorted(table.scores, key=lambda h: -table.scores[h])[:PRIOR_POOL]
    first = proposer.strategy.ask(3)
    assert all(p.origin == "prior" and p.hash in best for p in first)
    again = proposing.Proposer(config, tmp_path / "again")
    again.use_prior(((1, 8, 8), 10))
    assert again.prior == proposer.prior and [p.hash for p in again.strategy.ask(3)] == [p.hash for p in first]
