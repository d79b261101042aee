"""The Registry helper: a read-only mapping filled by a decorator, with clear errors; and every registry built on it."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from nas_core.registry import Registry


def make() -> Registry:
    registry: Registry = Registry("widget")

    @registry.register("zeta")
    def zeta(size: int = 1) -> tuple[str, int]:
        return ("zeta", size)

    @registry.register("alpha")
    class Alpha:
        def __init__(self, size: int = 2) -> None:
            self.size = size

    registry.add("mid", lambda size=3: ("mid", size))
    return registry


def test_register_returns_the_entry_unchanged_and_create_calls_it():
    registry: Registry = Registry("widget")

    def factory(size: int) -> int:
        return size * 2

    assert registry.register("double")(factory) is factory
    assert registry["double"] is factory
    assert registry.create("double", size=4) == 8
    assert registry.create("double", 5) == 10


def test_names_keep_registration_order_and_iteration_matches():
    registry = make()
    assert registry.names() == ["zeta", "alpha", "mid"]
    assert list(registry) == registry.names()
    assert sorted(registry) == ["alpha", "mid", "zeta"]
    assert len(registry) == 3
    assert registry.create("alpha", size=7).size == 7


def test_duplicate_name_is_rejected_and_the_first_entry_kept():
    registry = make()
    first = registry["zeta"]
    with pytest.raises(ValueError, match="widget 'zeta' is already registered"):
        registry.register("zeta")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("alpha", object())
    assert registry["zeta"] is first
    assert registry.names() == ["zeta", "alpha", "mid"]


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_must_be_non_empty_strings(name):
    with pytest.raises(ValueError, match="non-empty string"):
        Registry("widget").add(name, object())


def test_unknown_name_error_names_the_kind_and_lists_the_known_names_sorted():
    registry = make()
    with pytest.raises(ValueError, match=r"^unknown widget 'nope' \(known: alpha, mid, zeta\)$"):
        registry.create("nope")
    with pytest.raises(ValueError, match=r"unknown widget 'nope' \(known: alpha, mid, zeta\)"):
        registry.lookup("nope")
    with pytest.raises(ValueError, match=r"unknown widget '\['x'\]'"):
        registry.lookup(["x"])  # unhashable: still the same clear error


def test_registry_is_a_read_only_mapping():
    registry = make()
    assert isinstance(registry, Mapping)
    assert "zeta" in registry and "nope" not in registry
    assert registry.get("nope") is None
    with pytest.raises(KeyError):
        registry["nope"]  # the Mapping contract: a missing key is a KeyError
    with pytest.raises(TypeError):
        registry["new"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        del registry["zeta"]  # type: ignore[attr-defined]
    assert "widget" in repr(registry) and "zeta" in repr(registry)


def test_every_package_registry_uses_the_helper():
    from nas_core.data.base import SOURCES, list_sources
    from nas_core.evaluation.evaluators import EVALUATORS, list_evaluators
    from nas_core.evaluation.proxies import PROXIES, list_proxies
    from nas_core.ops import OPS, list_ops
    from nas_core.spaces import SPACES, list_spaces
    from nas_core.strategies import STRATEGIES, list_strategies

    registries = [
        (OPS, list_ops, {"conv", "sepconv", "identity", "nor_conv_3x3"}),
        (SPACES, list_spaces, {"image", "nb201", "sequence"}),
        (STRATEGIES, list_strategies, {"random", "evolution", "genetic", "local", "nsga2", "bo"}),
        (SOURCES, list_sources, {"digits", "mnist", "fashion-mnist", "cifar10", "imagefolder", "npz"}),
        (PROXIES, list_proxies, {"synflow", "naswot"}),
        (EVALUATORS, list_evaluators, {"train", "table"}),
    ]
    for registry, lister, builtins in registries:
        assert isinstance(registry, Registry)
        assert lister() == registry.names()
        assert builtins <= set(lister()), registry.kind


def test_strategy_registration_order_is_the_benchmark_order():
    from nas_core.strategies import list_strategies

    assert list_strategies() == ["random", "evolution", "genetic", "local", "nsga2", "bo"]
