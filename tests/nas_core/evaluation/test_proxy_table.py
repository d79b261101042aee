"""The proxy table: every architecture of a listable space scored once, cached by key with a checksum."""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import dataclass

import pytest

from nas_core.evaluation import proxy_table as pt
from nas_core.evaluation.proxies import PROXIES
from nas_core.spaces import create_space
from nas_core.spaces.nb201 import EDGES, NB201_OPS, NB201Space, cell_to_genome, unique_string

SHAPE, CLASSES = (3, 8, 8), 4


@dataclass(frozen=True)
class TinySpace(NB201Space):
    """``size`` architectures spread over a narrow, shallow NAS-Bench-201 (cheap to build and score)."""

    channels: int = 4
    cells_per_stage: int = 1
    size: int = 6
    name: str = "tiny"

    def enumerate(self):
        return list(spread_genomes(self.size))


@functools.cache
def spread_genomes(size: int) -> tuple:
    """``size`` distinct architectures from all over the space (one per identity)."""
    cells = list(itertools.product(NB201_OPS, repeat=len(EDGES)))
    unique = {unique_string(c): c for c in cells[len(cells) // 3 :: 97]}  # past the mostly empty cells
    return tuple(cell_to_genome(c) for c in list(unique.values())[:size])


@pytest.fixture
def counted(monkeypatch):
    """A registered proxy counting its calls; the score depends on the architecture (its parameter count)."""
    calls = []

    def params(model, x, y) -> float:
        calls.append(x.shape)
        total = sum(p.numel() for p in model.parameters())
        return -math.inf if total == 0 else float(total) + float(x.sum()) * 0  # x is there (data-free batch)

    monkeypatch.setitem(PROXIES._entries, "counted", params)
    return calls


def key(proxy: str = "counted", **options) -> pt.ProxyTableKey:
    return pt.ProxyTableKey.of(TinySpace(), SHAPE, CLASSES, proxy, **options)


def test_every_identity_is_scored_once_with_a_data_free_batch(counted):
    table = pt.compute_table(TinySpace(), key(batch_size=5))
    space = TinySpace()
    assert set(table.scores) == {space.identity(g) for g in space.enumerate()}
    assert len(counted) == space.size and all(tuple(shape) == (5, *SHAPE) for shape in counted)
    assert len(set(table.scores.values())) > 1  # architectures differ


def test_scores_are_deterministic_and_follow_the_seed():
    space = TinySpace(size=3)
    first, again = pt.compute_table(space, key("naswot")), pt.compute_table(space, key("naswot"))
    other = pt.compute_table(space, key("naswot", seed=1))
    assert first.scores == again.scores and first.checksum == again.checksum
    assert other.scores != first.scores
    x, y = pt.data_free_batch(key("naswot"))
    assert x.shape == (16, *SHAPE) and int(y.max()) < CLASSES


def test_cached_file_is_reused_and_a_changed_key_recomputes(counted, tmp_path):
    table, path = pt.load_or_compute(TinySpace(), key(), tmp_path)
    assert path.parent == tmp_path and path.name == key().file_name()
    calls = len(counted)
    again, same_path = pt.load_or_compute(TinySpace(), key(), tmp_path)
    assert same_path == path and again.scores == table.scores and len(counted) == calls  # read, not computed
    for changed in (key(seed=3), pt.ProxyTableKey.of(TinySpace(), (3, 6, 6), CLASSES, "counted"), key(batch_size=2)):
        assert changed.file_name() != path.name
        _, other_path = pt.load_or_compute(TinySpace(), changed, tmp_path)
        assert other_path != path
    assert len(counted) == 4 * calls


def test_a_tampered_file_fails_its_checksum_and_is_computed_again(counted, tmp_path):
    table, path = pt.load_or_compute(TinySpace(), key(), tmp_path)
    data = json.loads(path.read_text())
    first = next(iter(data["scores"]))
    data["scores"][first] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(pt.ProxyTableError, match="checksum"):
        pt.ProxyTable.read(path)
    calls = len(counted)
    again, _ = pt.load_or_compute(TinySpace(), key(), tmp_path)
    assert len(counted) == 2 * calls and again.scores == table.scores
    assert pt.ProxyTable.read(path).checksum == table.checksum


def test_non_finite_scores_round_trip_as_null(tmp_path):
    table = pt.ProxyTable(key("synflow"), {"a": -math.inf, "b": 1.5})
    path = table.write(tmp_path / "t.json")
    assert json.loads(path.read_text())["scores"] == {"a": None, "b": 1.5}
    assert pt.ProxyTable.read(path).scores == {"a": -math.inf, "b": 1.5}


def test_the_key_holds_the_space_options_and_an_unknown_proxy_is_refused():
    assert key("synflow").space_options["channels"] == 4 and key("synflow").space == "tiny"
    assert pt.ProxyTableKey.of(TinySpace(channels=8), SHAPE, CLASSES, "synflow") != pt.ProxyTableKey.of(
        TinySpace(), SHAPE, CLASSES, "synflow"
    )
    with pytest.raises(ValueError, match="unknown proxy"):
        key("nope")


def test_a_space_that_cannot_be_listed_is_an_error():
    with pytest.raises(pt.ProxyTableError, match="cannot be listed"):
        pt.compute_table(create_space("image"), pt.ProxyTableKey("image", SHAPE, CLASSES, "synflow"))


@pytest.mark.slow
def test_a_process_pool_gives_the_same_scores():
    space = TinySpace(size=40)
    assert pt.compute_table(space, key("synflow"), processes=2).scores == pt.compute_table(space, key("synflow")).scores


# ---- a pool: a seeded sample of a space too large to list ------------------------------------------------------


def test_a_pool_of_a_space_that_cannot_be_listed_holds_its_genomes_and_is_the_same_every_time(counted, tmp_path):
    space = create_space("image", max_nodes=3)
    pool_key = pt.ProxyTableKey.of(space, (1, 8, 8), 10, "counted", sample=5)
    table, path = pt.load_or_compute(space, pool_key, tmp_path)
    assert len(table.scores) == 5 == len(counted) and set(table.genomes) == set(table.scores)
    assert all(space.identity(genome) == identity for identity, genome in table.pool().items())
    read = pt.ProxyTable.read(path)
    assert read.pool().keys() == table.pool().keys() and read.checksum == table.checksum
    assert pt.compute_table(space, pool_key).genomes == table.genomes  # the seed draws the same pool
    assert set(pt.compute_table(space, pt.ProxyTableKey.of(space, (1, 8, 8), 10, "counted", sample=5, seed=1)).scores) != set(
        table.scores
    )


def test_a_pool_genome_changed_in_the_file_fails_the_checksum(counted, tmp_path):
    space = create_space("image", max_nodes=3)
    _, path = pt.load_or_compute(space, pt.ProxyTableKey.of(space, (1, 8, 8), 10, "counted", sample=3), tmp_path)
    data = json.loads(path.read_text())
    genome = next(iter(data["genomes"].values()))
    genome["nodes"] = genome["nodes"][:1]
    path.write_text(json.dumps(data))
    with pytest.raises(pt.ProxyTableError, match="checksum"):
        pt.ProxyTable.read(path)


def test_a_whole_space_key_has_no_pool_size_in_its_form(counted):
    """Tables cached before pools existed keep their file names and checksums."""
    assert "sample" not in key().to_dict() and key(sample=4).to_dict()["sample"] == 4
    assert pt.ProxyTableKey.from_dict(key().to_dict()) == key() and key(sample=4).file_name() != key().file_name()
    assert pt.compute_table(TinySpace(size=2), key()).genomes == {}
