"""The network of a NAS-Bench-201 cell (the benchmark's macro skeleton); kept apart so that the space imports no torch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nas_core.builder import GenomeCell, Normalize
from nas_core.genome import Genome


class ResidualReduction(nn.Module):
    """NAS-Bench-201's reduction block: a basic ResNet block with stride 2 and a pooled 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv_a = nn.Sequential(nn.ReLU(), nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out))
        self.conv_b = nn.Sequential(nn.ReLU(), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        # ceil_mode: odd sizes round up like the stride-2 conv (identical to the benchmark on even sizes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201Net(nn.Module):
    """Stem, three stages of ``cells_per_stage`` cells (C, 2C, 4C channels) with reductions, classifier."""

    def __init__(
        self,
        genome: Genome,
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: int = 16,
        cells_per_stage: int = 5,
    ) -> None:
        super().__init__()
        in_channels, h, w = (int(v) for v in input_shape)
        self.normalize = Normalize(in_channels, mean, std)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))
        layers: list[nn.Module] = []
        c = channels
        for stage in range(3):
            if stage:
                layers.append(ResidualReduction(c, 2 * c))
                c, h, w = 2 * c, (h + 1) // 2, (w + 1) // 2
            layers += [GenomeCell(genome, (c, h, w)) for _ in range(cells_per_stage)]
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.head(self.cells(self.stem(self.normalize(x))))
        return self.classifier(features.mean(dim=(2, 3)))
