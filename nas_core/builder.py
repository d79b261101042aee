"""Turn a genome into a ``torch.nn.Module`` for a given input shape and class count."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nas_core.genome import Genome
from nas_core.ops import INPUT_OP, OPS, OUTPUT_OP

Shape = tuple[int, int, int]  # channels, height, width


def _pool_kernel(size: int, target: int) -> int:
    """The smallest k with ceil(size / k) == target (stride-2 ops give ceil halvings)."""
    for k in range(1, size + 1):
        if math.ceil(size / k) == target:
            return k
    raise ValueError(f"cannot pool {size} down to {target}")


def _aligner(src: Shape, dst: Shape) -> nn.Module:
    """Project ``src`` to ``dst``: pool to the smaller spatial size, 1x1 conv to the channel count."""
    layers: list[nn.Module] = []
    if src[1:] != dst[1:]:
        kernel = (_pool_kernel(src[1], dst[1]), _pool_kernel(src[2], dst[2]))
        layers.append(nn.AvgPool2d(kernel, stride=kernel, ceil_mode=True))
    if src[0] != dst[0]:
        layers.append(nn.Conv2d(src[0], dst[0], 1, bias=False))
    return nn.Sequential(*layers) if layers else nn.Identity()


DEFAULT_STEM_CHANNELS = 16


class GenomeCell(nn.Module):
    """The DAG of one genome on inputs of shape (C, H, W): a node sums its aligned inputs.

    Returns the merged inputs of the ``output`` node; ``shapes`` maps node ids to output shapes.
    """

    def __init__(self, genome: Genome, input_shape: Sequence[int]) -> None:
        super().__init__()
        genome.validate()
        c, h, w = (int(v) for v in input_shape)
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
                shapes[node_id] = (c, h, w)
                self.input_id = node_id
                continue
            preds = genome.predecessors(node_id)
            merged: Shape = (
                max(shapes[p][0] for p in preds),
                min(shapes[p][1] for p in preds),
                min(shapes[p][2] for p in preds),
            )
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
            self.ops[key] = spec.factory(merged[0], node.settings)
            stride = spec.stride(node.settings)
            shapes[node_id] = (
                spec.out_channels(merged[0], node.settings),
                math.ceil(merged[1] / stride),
                math.ceil(merged[2] / stride),
            )
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

    def __init__(self, channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        super().__init__()
        shape = (1, channels, 1, 1)
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
        in_channels, h, w = (int(v) for v in input_shape)
        super().__init__(genome, (stem_channels, h, w))
        self.normalize = Normalize(in_channels, mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(self.output_shape[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(super().forward(self.stem(self.normalize(x))).mean(dim=(2, 3)))


def build_model(
    genome: Genome,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    stem_channels: int = DEFAULT_STEM_CHANNELS,
) -> GenomeNet:
    """Build the ``nn.Module`` of a valid genome for inputs of shape (C, H, W)."""
    return GenomeNet(genome, input_shape, num_classes, mean, std, stem_channels)
