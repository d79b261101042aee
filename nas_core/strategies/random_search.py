"""Random search: the baseline every other strategy has to beat."""

from __future__ import annotations

from nas_core.strategies.base import Strategy, register_strategy


@register_strategy("random")
class RandomSearch(Strategy):
    """Uniform samples from the space (never the same architecture twice); with a prior, prior draws
    (``Strategy.use_prior``): random among the best-scored unseen architectures.

    Told results it did not propose: only never proposed (random search ignores fitness).
    """

    name = "random"
