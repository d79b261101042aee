"""Turn a genome into a ``torch.nn.Module`` for a given input shape and class count.

Inputs are images (C, H, W) or sequences (C, L): the number of spatial dimensions comes from the input
shape, and every module (stem, ops, aligners, normalisation, pooling) is built for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nas_core.genome import Genome
from nas_core.ops import AVG_POOL, BATCH_NORM, CONV, INPUT_OP, OPS, OUTPUT_OP

Shape = tuple[int, ...]  # channels, then the spatial sizes: (C, H, W) for images, (C, L) for sequences


def spatial_dims(input_shape: Sequence[int]) -> int:
    """2 for (C, H, W) images, 1 for (C, L) sequences; anything else is an error."""
    dims = len(input_shape) - 1
    if dims not in CONV:
        raise ValueError(f"input shape {tuple(input_shape)} is neither (C, H, W) nor (C, L)")
    return dims


def _pool_kernel(size: int, target: int) -> int:
    """The smallest k with ceil(size / k) == target (stride-2 ops give ceil halvings)."""
    for k in range(1, size + 1):
        if math.ceil(size / k) == target:
            return k
    raise ValueError(f"cannot pool {size} down to {target}")


def _aligner(src: Shape, dst: Shape) -> nn.Module:
    """Project ``src`` to ``dst``: pool to the smaller spatial size, 1x1 conv to the channel count."""
    dims = len(src) - 1
    layers: list[nn.Module] = []
    if src[1:] != dst[1:]:
        kernel = tuple(_pool_kernel(s, d) for s, d in zip(src[1:], dst[1:], strict=True))
        layers.append(AVG_POOL[dims](kernel, stride=kernel, ceil_mode=True))
    if src[0] != dst[0]:
        layers.append(CONV[dims](src[0], dst[0], 1, bias=False))
    return nn.Sequential(*layers) if layers else nn.Identity()


DEFAULT_STEM_CHANNELS = 16


class GenomeCell(nn.Module):
    """The DAG of one genome on inputs of shape (C, H, W) or (C, L): a node sums its aligned inputs.

    Returns the merged inputs of the ``output`` node; ``shapes`` maps node ids to output shapes.
    """

    def __init__(self, genome: Genome, input_shape: Sequence[int]) -> None:
        super().__init__()
        genome.validate()
        start: Shape = tuple(int(v) for v in input_shape)
        dims = spatial_dims(start)
        self.order = genome.topological_order()
        nodes = genome.node_map
        self.inputs: dict[str, list[tuple[str, int]]] = {}
        self.edge_modules = nn.ModuleList()
        self.ops = nn.ModuleDict()
        self.op_keys: dict[str, str] = {}
        shapes: dict[str, Shape] = {}
        for position, node_id in enumerate(self.order):
            node = nodes[node_id]
            if node.op == INPUT_OP:
                shapes[node_id] = start
                self.input_id = node_id
                continue
            preds = genome.predecessors(node_id)
            merged: Shape = (max(shapes[p][0] for p in preds), *(min(shapes[p][d] for p in preds) for d in range(1, dims + 1)))
            self.inputs[node_id] = []
            for p in preds:
                self.inputs[node_id].append((p, len(self.edge_modules)))
                self.edge_modules.append(_aligner(shapes[p], merged))
            if node.op == OUTPUT_OP:
                shapes[node_id] = merged
                self.output_id = node_id
                continue
            spec = OPS[node.op]
            key = f"n{position}"
            self.op_keys[node_id] = key
            self.ops[key] = spec.build(merged[0], node.settings, dims)
            stride = spec.stride(node.settings)
            shapes[node_id] = (spec.out_channels(merged[0], node.settings), *(math.ceil(size / stride) for size in merged[1:]))
        self.shapes = shapes

    @property
    def output_shape(self) -> Shape:
        return self.shapes[self.output_id]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.input_id: x}
        for node_id in self.order:
            if node_id == self.input_id:
                continue
            merged = None
            for pred, edge in self.inputs[node_id]:
                aligned = self.edge_modules[edge](values[pred])
                merged = aligned if merged is None else merged + aligned
            if node_id == self.output_id:
                return merged
            values[node_id] = self.ops[self.op_keys[node_id]](merged)
        raise AssertionError("a validated genome always reaches its output node")


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` with the constants stored in the model (and its ONNX export)."""

    def __init__(self, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None, dims: int = 2) -> None:
        super().__init__()
        shape = (1, channels) + (1,) * dims
        self.register_buffer("mean", torch.tensor(mean if mean is not None else [0.0] * channels).view(shape))
        self.register_buffer("std", torch.tensor(std if std is not None else [1.0] * channels).view(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class GenomeNet(GenomeCell):
    """The network of one genome inside a fixed skeleton.

    Inputs are normalised, then a stem (3x3 conv, BN, ReLU) feeds the genome's ``input`` node, as in
    most cell-based NAS; the ``output`` node is pooled and classified.
    """

    def __init__(
        self,
        genome: Genome,
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stem_channels: int = DEFAULT_STEM_CHANNELS,
    ) -> None:
        in_channels, *spatial = (int(v) for v in input_shape)
        dims = spatial_dims(input_shape)
        super().__init__(genome, (stem_channels, *spatial))
        self.normalize = Normalize(in_channels, mean, std, dims)
        self.stem = nn.Sequential(
            CONV[dims](in_channels, stem_channels, 3, padding=1, bias=False),
            BATCH_NORM[dims](stem_channels),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(self.output_shape[0], num_classes)
        self.pool_dims = tuple(range(2, 2 + dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(super().forward(self.stem(self.normalize(x))).mean(dim=self.pool_dims))


def build_model(
    genome: Genome,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stem_channels: int = DEFAULT_STEM_CHANNELS,
) -> GenomeNet:
    """Build the ``nn.Module`` of a valid genome for inputs of shape (C, H, W) or (C, L)."""
    return GenomeNet(genome, input_shape, num_classes, mean, std, stem_channels)
