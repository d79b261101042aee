"""Search spaces, registered by name: sample, mutate and cross genomes (always valid ones).

Import order is registration order (``image``, ``nb201``, ``sequence``), which is the order of ``SPACES``.
"""

from __future__ import annotations

from typing import Any

from nas_core.spaces.base import SPACES, SearchSpace, SpaceExhausted, register_space
from nas_core.spaces.image import ImageSpace
from nas_core.spaces.joint import JointSpace
from nas_core.spaces.nb201 import NB201Space
from nas_core.spaces.sequence import SequenceSpace


def create_space(name: str, hparams: dict[str, list[Any]] | None = None, **options: Any) -> SearchSpace:
    """The space registered as ``name``; with ``hparams`` (name -> choices) it also searches those."""
    space = SPACES.create(name, **options)
    return JointSpace(space, hparams) if hparams else space


def list_spaces() -> list[str]:
    """The registered space names, in registration order."""
    return SPACES.names()


__all__ = [
    "SPACES",
    "ImageSpace",
    "JointSpace",
    "NB201Space",
    "SearchSpace",
    "SequenceSpace",
    "SpaceExhausted",
    "create_space",
    "list_spaces",
    "register_space",
]
