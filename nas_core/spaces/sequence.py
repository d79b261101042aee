"""A search space for sequence classifiers: the ``image`` space's genomes, ops and moves, built in 1D.

Inputs are (C, L): audio features, time series, token embeddings. The ops keep their names and settings
(``conv``, ``sepconv``, ``maxpool``, ``avgpool``, ``identity``) and build Conv1d, MaxPool1d, AvgPool1d and
BatchNorm1d modules; the network is the same skeleton (normalisation, 3-wide stem conv, the genome, global
average pooling over L, linear classifier). Kernels default to 3/5/7 (a 1-wide kernel sees a single step)
and stride-2 ops are a little more likely than in the image space, since sequences are usually longer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from nas_core.genome import Genome
from nas_core.spaces.base import register_space
from nas_core.spaces.image import ImageSpace

if TYPE_CHECKING:
    from torch import nn

SEQUENCE_DIMS = 1


def _check_shape(input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != SEQUENCE_DIMS + 1:
        raise ValueError(f"the sequence space builds networks for (C, L) inputs, got shape {tuple(input_shape)}")


@register_space("sequence")
@dataclass(frozen=True)
class SequenceSpace(ImageSpace):
    """Cells of ``min_nodes..max_nodes`` 1D ops with skip connections, for inputs of shape (C, L)."""

    kernels: tuple[int, ...] = (3, 5, 7)
    reduce_prob: float = 0.3
    name: str = "sequence"
    input_ndim: ClassVar[int] = SEQUENCE_DIMS  # spatial dimensions of the inputs this space builds for

    def build(self, genome: Genome, input_shape, num_classes, mean=None, std=None) -> nn.Module:
        from nas_core.builder import build_model  # torch: imported when a network is built

        _check_shape(input_shape)
        return build_model(genome, input_shape, num_classes, mean, std)

    def cost(self, genome: Genome, input_shape: tuple[int, ...], num_classes: int) -> dict[str, int]:
        """Parameters and FLOPs of the built 1D network."""
        from nas_core.builder import build_model
        from nas_core.metrics import count_flops, count_params

        _check_shape(input_shape)
        model = build_model(genome, input_shape, num_classes)
        return {"params": count_params(model), "flops": count_flops(model, input_shape)}
