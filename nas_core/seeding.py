"""torch's global random generator is one per process: whoever seeds it or draws from it takes turns.

Building a network draws its initial weights from it. A candidate seeds it and builds its network holding
:data:`GLOBAL_RNG` (:func:`build_seeded`), so that its weights depend on its seed alone; any other thread that
builds a network while candidates train (the latency predictor, a proxy score) holds it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

GLOBAL_RNG = threading.RLock()


def build_seeded(build: Callable[..., nn.Module], seed: int, *args: Any) -> nn.Module:
    """``build(*args)`` right after seeding torch's global generator with ``seed``, no other thread in between."""
    import torch

    with GLOBAL_RNG:
        torch.manual_seed(seed)
        return build(*args)
