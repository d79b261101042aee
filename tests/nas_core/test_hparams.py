"""Training hyperparameters: validation, genomes that carry them, and the joint architecture + hyperparameter space."""

from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch

from nas_core import hparams as hp
from nas_core.genome import Genome, GenomeError, Node
from nas_core.metrics import count_params
from nas_core.spaces import create_space
from nas_core.spaces.image import ImageSpace
from nas_core.spaces.joint import JointSpace
from nas_core.spaces.nb201 import NB201_OPS, NB201Space, cell_to_genome, format_arch, genome_to_cell

pytestmark = pytest.mark.usefixtures("single_torch_thread")

NONE, SKIP, C1, C3, POOL = NB201_OPS
CHOICES = {"optimizer": ["adam", "sgd"], "lr": [0.1, 0.01, 0.001], "batch_size": [32, 64]}  # deliberately unsorted
SETTINGS = math.prod(len(v) for v in CHOICES.values())
IMAGE_OPTIONS = {"min_nodes": 1, "max_nodes": 3}
NB201_OPTIONS = {"channels": 4, "cells_per_stage": 1}


def joint(kind: str, choices=None) -> JointSpace:
    options = IMAGE_OPTIONS if kind == "image" else NB201_OPTIONS
    space = create_space(kind, hparams=CHOICES if choices is None else choices, **options)
    assert isinstance(space, JointSpace)
    return space


def strip(genome: Genome) -> Genome:
    return dataclasses.replace(genome, hparams={})


def tag(genome: Genome, **values) -> Genome:
    return dataclasses.replace(genome, hparams=values)


def diff(a: dict, b: dict) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}


KINDS = pytest.mark.parametrize("kind", ["image", "nb201"])


# ---- checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"lr": 0.1},
        {"lr": 1},
        {"weight_decay": 0},
        {"weight_decay": 5e-4},
        {"batch_size": 1},
        {"optimizer": "adamw"},
        {"lr": 3e-4, "weight_decay": 0.0, "batch_size": 128, "optimizer": "sgd"},
    ],
)
def test_check_hparams_accepts_valid_values(values):
    hp.check_hparams(values)


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"momentum": 0.9}, "unknown hyperparameter 'momentum'"),
        ({"lr": 0.1, "epochs": 3}, "unknown hyperparameter 'epochs'"),
        ({"lr": 0}, "lr=0 must be a number > 0"),
        ({"lr": -0.1}, "lr=-0.1"),
        ({"lr": "0.1"}, "lr='0.1'"),
        ({"lr": True}, "lr=True"),
        ({"lr": None}, "lr=None"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"weight_decay": -1e-4}, "weight_decay=-0.0001 must be a number >= 0"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 32.0}, "batch_size=32.0"),
        ({"batch_size": False}, "batch_size=False"),
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop' must be one of"),
        ({"optimizer": "Adam"}, "optimizer='Adam'"),
    ],
)
def test_check_hparams_rejects_unknown_names_and_invalid_values(values, problem):
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace("+", r"\+")):
        hp.check_hparams(values)


def test_unknown_name_message_lists_the_known_ones():
    with pytest.raises(ValueError) as excinfo:
        hp.check_hparams({"dropout": 0.1})
    assert all(name in str(excinfo.value) for name in ("lr", "weight_decay", "batch_size", "optimizer"))


def test_check_choices_accepts_valid_choices():
    hp.check_choices(CHOICES)
    hp.check_choices({"lr": (0.1,), "weight_decay": [0, 1e-4]})
    hp.check_choices({})


@pytest.mark.parametrize(
    ("choices", "problem"),
    [
        ({"lr": []}, "'lr' needs a non-empty list of choices"),
        ({"optimizer": ()}, "'optimizer' needs a non-empty list"),
        ({"optimizer": "adam"}, "'optimizer' needs a non-empty list"),
        ({"lr": 0.1}, "'lr' needs a non-empty list"),
        ({"lr": [0.1, 0]}, "lr=0"),
        ({"batch_size": [32, 2.5]}, "batch_size=2.5"),
        ({"optimizer": ["adam", "rmsprop"]}, "optimizer='rmsprop'"),
        ({"momentum": [0.9]}, "unknown hyperparameter 'momentum'"),
    ],
)
def test_check_choices_rejects_bad_choices(choices, problem):
    with pytest.raises(ValueError, match=problem):
        hp.check_choices(choices)


def test_sample_and_alternatives():
    rng = random.Random(0)
    values = hp.sample(CHOICES, rng)
    assert list(values) == sorted(CHOICES)
    assert all(values[k] in CHOICES[k] for k in CHOICES)
    alternatives = hp.alternatives(CHOICES, values)
    assert len(alternatives) == sum(len(v) - 1 for v in CHOICES.values())
    assert all(len(diff(a, values)) == 1 for a in alternatives)
    assert len({json.dumps(a, sort_keys=True) for a in alternatives}) == len(alternatives)


# ---- genomes with hyperparameters --------------------------------------------------------------------

CELL = cell_to_genome((C3, C3, C3, SKIP, C3, C3))
VALUES = {"lr": 0.01, "optimizer": "sgd", "batch_size": 64, "weight_decay": 5e-4}


def test_json_round_trip_keeps_hparams():
    g = tag(CELL, **VALUES)
    data = json.loads(g.to_json())
    assert data["hparams"] == VALUES
    assert list(data["hparams"]) == sorted(VALUES)
    back = Genome.from_json(g.to_json(indent=2))
    assert back == g
    assert back.hparams == VALUES
    assert back.canonical_hash() == g.canonical_hash()
    assert "hparams" not in json.loads(CELL.to_json())
    assert Genome.from_json(CELL.to_json()).hparams == {}


def test_hash_depends_on_hparams():
    with_values = tag(CELL, **VALUES)
    assert with_values.canonical_hash() != CELL.canonical_hash()
    assert with_values.canonical_hash() != tag(CELL, **{**VALUES, "lr": 0.1}).canonical_hash()
    assert with_values.canonical_hash() != tag(CELL, **{**VALUES, "optimizer": "adam"}).canonical_hash()
    reordered = tag(CELL, **dict(reversed(list(VALUES.items()))))
    assert reordered.canonical_hash() == with_values.canonical_hash()
    assert reordered.to_json() == with_values.to_json()
    assert with_values != CELL


def test_hash_of_isomorphic_genomes_with_equal_hparams_is_equal():
    a = Genome(
        (
            Node("input", "input"),
            Node("x", "identity"),
            Node("y", "avgpool", {"kernel": 3, "stride": 1}),
            Node("output", "output"),
        ),
        (("input", "x"), ("input", "y"), ("x", "output"), ("y", "output")),
        {"lr": 0.1},
    )
    b = Genome(
        (
            Node("input", "input"),
            Node("p", "avgpool", {"kernel": 3, "stride": 1}),
            Node("q", "identity"),
            Node("output", "output"),
        ),
        (("input", "p"), ("input", "q"), ("q", "output"), ("p", "output")),
        {"lr": 0.1},
    )
    a.validate()
    b.validate()
    assert a.canonical_hash() == b.canonical_hash()
    assert a.canonical_hash() != tag(b, lr=0.2).canonical_hash()


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"lr": 0}, "lr=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"optimizer": "rmsprop"}, "optimizer='rmsprop'"),
        ({"momentum": 0.9}, "unknown hyperparameter 'momentum'"),
    ],
)
def test_validate_rejects_bad_hparams(values, problem):
    g = tag(CELL, **values)
    with pytest.raises(GenomeError, match=problem):
        g.validate()
    assert not g.is_valid()
    assert tag(CELL, **VALUES).validate().hparams == VALUES


@pytest.mark.parametrize("hparams", [[["lr", 0.1]], "lr=0.1", 0.1, None])
def test_from_dict_rejects_non_object_hparams(hparams):
    data = {**CELL.to_dict(), "hparams": hparams}
    with pytest.raises(GenomeError, match="'hparams' must be an object"):
        Genome.from_dict(data)


def test_from_dict_keeps_hparams_without_validating():
    g = Genome.from_dict({**CELL.to_dict(), "hparams": {"lr": -1}})
    assert g.hparams == {"lr": -1}
    with pytest.raises(GenomeError, match="lr=-1"):
        g.validate()


# ---- the joint space ---------------------------------------------------------------------------------


def test_create_space_wraps_only_when_hparams_are_given():
    assert isinstance(create_space("image"), ImageSpace)
    assert isinstance(create_space("nb201", hparams={}), NB201Space)
    assert isinstance(create_space("nb201", hparams=None, channels=4), NB201Space)
    space = joint("nb201")
    assert isinstance(space.base, NB201Space) and space.base.channels == 4
    assert space.name == "nb201"
    assert list(space.choices) == sorted(CHOICES)
    assert joint("image").name == "image"


@pytest.mark.parametrize(
    "choices",
    [{"lr": []}, {"lr": [0]}, {"optimizer": ["rmsprop"]}, {"momentum": [0.9]}, {"batch_size": "32"}],
)
@KINDS
def test_create_space_rejects_bad_choices(kind, choices):
    with pytest.raises(ValueError):
        create_space(kind, hparams=choices)


@KINDS
def test_samples_carry_one_valid_choice_per_hparam(kind):
    space = joint(kind)
    rng = random.Random(1)
    seen: dict[str, set] = {name: set() for name in CHOICES}
    for _ in range(60):
        g = space.sample(rng)
        g.validate()
        assert set(g.hparams) == set(CHOICES)
        for name, value in g.hparams.items():
            assert value in CHOICES[name]
            seen[name].add(value)
        space.base.identity(strip(g))  # the architecture belongs to the base space
    assert all(seen[name] == set(CHOICES[name]) for name in CHOICES)
    assert space.sample(random.Random(7)) == space.sample(random.Random(7))


@KINDS
def test_mutate_changes_the_architecture_or_exactly_one_hparam(kind):
    space = joint(kind)
    rng = random.Random(2)
    kinds = {"architecture": 0, "hparam": 0}
    for _ in range(40):
        g = space.sample(rng)
        for _ in range(3):
            child = space.mutate(g, rng)
            child.validate()
            assert space.identity(child) != space.identity(g)
            changed = diff(child.hparams, g.hparams)
            if changed:
                assert len(changed) == 1, changed
                (name,) = changed
                assert child.hparams[name] in CHOICES[name]
                assert strip(child) == strip(g), "a hyperparameter change keeps the architecture"
                kinds["hparam"] += 1
            else:
                assert space.base.identity(strip(child)) != space.base.identity(strip(g))
                kinds["architecture"] += 1
            g = child
    assert kinds["architecture"] > kinds["hparam"] > 0, kinds


@KINDS
def test_mutate_with_single_choices_always_changes_the_architecture(kind):
    space = joint(kind, {"lr": [0.01], "optimizer": ["adam"]})
    rng = random.Random(3)
    for _ in range(30):
        g = space.sample(rng)
        child = space.mutate(g, rng)
        assert child.hparams == g.hparams == {"lr": 0.01, "optimizer": "adam"}
        assert space.base.identity(strip(child)) != space.base.identity(strip(g))


@KINDS
def test_crossover_takes_each_hparam_from_a_parent(kind):
    space = joint(kind)
    rng = random.Random(4)
    a = tag(space.base.sample(rng), optimizer="adam", lr=0.1, batch_size=32)
    b = tag(space.base.sample(rng), optimizer="sgd", lr=0.001, batch_size=64)
    seen: dict[str, set] = {name: set() for name in CHOICES}
    for _ in range(40):
        child = space.crossover(a, b, rng)
        child.validate()
        assert set(child.hparams) == set(CHOICES)
        for name, value in child.hparams.items():
            assert value in (a.hparams[name], b.hparams[name])
            seen[name].add(value)
        space.base.identity(strip(child))
    assert all(seen[name] == {a.hparams[name], b.hparams[name]} for name in CHOICES)


def test_nb201_crossover_takes_each_edge_from_a_parent():
    space = joint("nb201")
    rng = random.Random(5)
    a = tag(cell_to_genome((C3, C1, NONE, SKIP, POOL, C3)), optimizer="adam", lr=0.1, batch_size=32)
    b = tag(cell_to_genome((POOL, SKIP, C3, C1, NONE, C1)), optimizer="sgd", lr=0.01, batch_size=64)
    for _ in range(20):
        cell = genome_to_cell(strip(space.crossover(a, b, rng)))
        parents = zip(genome_to_cell(strip(a)), genome_to_cell(strip(b)), strict=True)
        assert all(op in pair for op, pair in zip(cell, parents, strict=True))


@KINDS
def test_neighbours_are_hparam_alternatives_plus_architecture_neighbours(kind):
    space = joint(kind)
    rng = random.Random(6)
    for _ in range(4):
        g = space.sample(rng)
        neighbours = space.neighbours(g)
        identities = [space.identity(n) for n in neighbours]
        assert len(set(identities)) == len(identities)
        assert space.identity(g) not in identities
        architecture = space.base.neighbours(strip(g))
        one_hparam = [
            tag(strip(g), **{**g.hparams, name: value}) for name in CHOICES for value in CHOICES[name] if value != g.hparams[name]
        ]
        expected = [tag(n, **g.hparams) for n in architecture] + one_hparam
        assert len(neighbours) == len(architecture) + sum(len(v) - 1 for v in CHOICES.values())
        assert set(identities) == {space.identity(n) for n in expected}
        for n in neighbours:
            changed = diff(n.hparams, g.hparams)
            if changed:
                assert len(changed) == 1 and strip(n) == strip(g)
            else:
                assert space.base.identity(strip(n)) != space.base.identity(strip(g))
        assert space.neighbours(g) == neighbours


def test_nb201_identity_is_equal_for_isomorphic_architectures_with_equal_hparams():
    space = joint("nb201")
    a, b = cell_to_genome((NONE, C3, C3, C1, C3, POOL)), cell_to_genome((NONE, C3, POOL, C1, SKIP, POOL))
    assert a != b
    values = {"lr": 0.1, "optimizer": "adam", "batch_size": 32}
    assert space.identity(tag(a, **values)) == space.identity(tag(b, **values))
    assert space.identity(tag(a, **values)) == space.identity(tag(b, **dict(reversed(list(values.items())))))
    assert space.identity(tag(a, **values)) != space.identity(tag(b, **{**values, "lr": 0.01}))
    assert space.identity(tag(a, **values)) != space.identity(tag(cell_to_genome((C1,) * 6), **values))


def test_image_identity_is_equal_for_isomorphic_architectures_with_equal_hparams():
    space = joint("image")
    conv = {"kernel": 3, "channels": 16, "stride": 1}
    a = Genome(
        (Node("input", "input"), Node("n0", "conv", conv), Node("n1", "identity"), Node("output", "output")),
        (("input", "n0"), ("input", "n1"), ("n0", "output"), ("n1", "output")),
    )
    b = Genome(
        (Node("input", "input"), Node("n0", "identity"), Node("n1", "conv", conv), Node("output", "output")),
        (("input", "n1"), ("input", "n0"), ("n1", "output"), ("n0", "output")),
    )
    values = {"lr": 0.01, "optimizer": "sgd", "batch_size": 64}
    assert space.identity(tag(a, **values)) == space.identity(tag(b, **values))
    assert space.identity(tag(a, **values)) != space.identity(tag(b, **{**values, "batch_size": 32}))
    assert space.identity(tag(a, **values)) != space.identity(a)


@KINDS
def test_encode_appends_one_one_hot_block_per_hparam(kind):
    space = joint(kind)
    rng = random.Random(8)
    for _ in range(10):
        g = space.sample(rng)
        base = space.base.encode(strip(g))
        features = space.encode(g)
        assert features.shape == (len(base) + sum(len(v) for v in CHOICES.values()),)
        np.testing.assert_array_equal(features[: len(base)], base)
        offset = len(base)
        for name in sorted(CHOICES):  # blocks follow the sorted names
            block = features[offset : offset + len(CHOICES[name])]
            expected = np.zeros(len(CHOICES[name]), dtype=np.float32)
            expected[CHOICES[name].index(g.hparams[name])] = 1.0
            np.testing.assert_array_equal(block, expected)
            offset += len(CHOICES[name])
    g = space.sample(rng)
    other = tag(strip(g), **{**g.hparams, "lr": next(v for v in CHOICES["lr"] if v != g.hparams["lr"])})
    assert not np.array_equal(space.encode(g), space.encode(other))


@pytest.mark.slow
def test_enumerate_of_nb201_crosses_architectures_with_settings():
    choices = {"lr": [0.1, 0.01], "optimizer": ["adam", "sgd"]}
    space = create_space("nb201", hparams=choices)
    genomes = space.enumerate()
    assert len(genomes) == 6466 * 4
    assert len({space.identity(g) for g in genomes}) == len(genomes)
    settings = {}
    for g in genomes:
        key = (g.hparams["lr"], g.hparams["optimizer"])
        settings[key] = settings.get(key, 0) + 1
    assert settings == {(lr, opt): 6466 for lr in choices["lr"] for opt in choices["optimizer"]}
    base = space.base.enumerate()
    assert {space.base.identity(strip(g)) for g in genomes[::97]} <= {space.base.identity(g) for g in base}


def test_enumerate_counts_the_product_of_choices():
    assert len(joint("nb201").enumerate()) == 6466 * SETTINGS
    assert joint("image").enumerate() is None


def test_arch_string_is_delegated_and_ignores_hparams():
    space = joint("nb201")
    cell = (C3, C1, NONE, SKIP, POOL, C3)
    plain = cell_to_genome(cell)
    for values in [{"lr": 0.1, "optimizer": "adam", "batch_size": 32}, {"lr": 0.001, "optimizer": "sgd", "batch_size": 64}]:
        assert space.arch_string(tag(plain, **values)) == format_arch(cell) == space.base.arch_string(plain)
    assert space.describe(tag(plain, lr=0.1))["arch"] == format_arch(cell)
    assert space.describe(tag(plain, lr=0.1))["hparam.lr"] == 0.1
    assert not hasattr(joint("image"), "arch_string")


def test_from_arch_string_is_delegated():
    space = joint("nb201")
    text = format_arch((C3, C1, NONE, SKIP, POOL, C3))
    assert space.arch_string(space.from_arch_string(text)) == text


@KINDS
def test_build_and_cost_ignore_hparams(kind):
    space = joint(kind)
    rng = random.Random(9)
    shape = (1, 8, 8)
    for _ in range(3):
        g = space.sample(rng)
        other = tag(strip(g), lr=0.001, optimizer="sgd", batch_size=64)
        net = space.build(g, shape, 10)
        assert net(torch.randn(2, *shape)).shape == (2, 10)
        params = count_params(net)
        assert params == count_params(space.build(other, shape, 10)) == count_params(space.base.build(strip(g), shape, 10))
        cost = space.cost(g, shape, 10)
        assert cost == space.cost(other, shape, 10) == space.base.cost(strip(g), shape, 10)
        assert cost["params"] == params


def test_choices_listed_twice_and_non_finite_values_are_rejected():
    from nas_core.hparams import check_choices, check_hparams

    with pytest.raises(ValueError, match="twice"):
        check_choices({"lr": [0.1, 0.1]})
    with pytest.raises(ValueError, match="lr"):
        check_hparams({"lr": float("inf")})
