"""Device-side batches: every split moved to the device once, and augmented batches gathered by index.

A batch is an index slice of a seeded permutation; shift/flip augmentation is folded into the same gather.
"""

from __future__ import annotations

import torch

from nas_core.data.preparation import PreparedData


def _shift_flip_indices(
    n: int, height: int, width: int, flip: bool, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows (n, H) and columns (n, W) of ``n`` images shifted by -1..1 pixel each way (edges repeated).

    With ``flip`` about half of them are also mirrored left to right.
    """
    shift = torch.randint(-1, 2, (2, n, 1), generator=generator, device=device)
    rows = (torch.arange(height, device=device) + shift[0]).clamp_(0, height - 1)
    cols = torch.arange(width, device=device).expand(n, width)
    if flip:
        mirrored = torch.rand(n, 1, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored, width - 1 - cols, cols)
    return rows, (cols + shift[1]).clamp_(0, width - 1)


def _gather(x: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Images ``idx`` of ``x`` (N, C, H, W) read at ``rows``/``cols``: one indexing kernel, keeping ``x``'s layout."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        # indexing the (N, H, W, C) view gives a channels-last batch without another copy
        return x.permute(0, 2, 3, 1)[idx[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    channel = torch.arange(x.shape[1], device=x.device)
    return x[idx[:, None, None, None], channel[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def _on_device(
    data: PreparedData, device: torch.device, layout: torch.memory_format
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every split's inputs (in ``layout``) and labels, moved to ``device`` once."""
    return {
        s: (torch.from_numpy(data.x[s]).to(device).contiguous(memory_format=layout), torch.from_numpy(data.y[s]).to(device))
        for s in data.x
    }
