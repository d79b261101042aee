"""Zero-cost proxies: training-free scores of an architecture at initialisation (higher is better).

- ``synflow``: synaptic flow (Tanaka et al. 2020), used as a NAS proxy by Abdelfattah et al. 2021.
- ``naswot``: log-determinant of the ReLU-code kernel of a mini-batch (Mellor et al. 2021).

Both work on a deep copy, so the caller's model (weights, buffers, mode, gradients) is left untouched. Proxies are
registered by name (``@register_proxy``), the string a search's ``proxy`` setting uses.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from nas_core.builder import Normalize
from nas_core.data.preparation import PreparedData
from nas_core.genome import Genome
from nas_core.registry import Registry
from nas_core.seeding import build_seeded

Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]

# name -> score(model, x, y), higher is better
PROXIES: Registry[Proxy] = Registry("proxy")


def register_proxy(name: str) -> Callable[[Proxy], Proxy]:
    """Decorator: register a proxy ``(model, x, y) -> float`` (higher is better) under ``name``."""
    return PROXIES.register(name)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Activations whose "on" state is the sign of their input, as for ReLU (NASWOT's binary code).
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish)


def _bypass(model: nn.Module, types: tuple[type[nn.Module], ...]) -> None:
    """Replace every submodule of one of ``types`` by ``nn.Identity`` (in place)."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, types):
                setattr(module, child_name, nn.Identity())


@register_proxy("synflow")
def synflow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Natural log of the synaptic flow ``sum(theta * dR/dtheta)``, ``R = sum(f_|theta|(1))``, in float64.

    As the zero-cost-proxies reference's default ``synflow`` (``bn=False``): BatchNorm layers are bypassed,
    and so is the model's input :class:`~nas_core.builder.Normalize` (its data statistics could make the
    all-ones input negative, breaking the all-positive linearised network). Only the shape of ``x`` is used;
    ``y`` is ignored. A zero score gives ``-inf``; ``inf`` only if the flow overflows float64 (~1e308).
    """
    net = copy.deepcopy(model)
    _bypass(net, (*_BATCH_NORMS, Normalize))
    net.eval().double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    net.zero_grad(set_to_none=True)
    ones = torch.ones((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
    with torch.enable_grad():
        net(ones).sum().backward()
    with torch.no_grad():
        score = sum(float((p * p.grad).sum()) for p in net.parameters() if p.grad is not None)
    return math.log(score) if score > 0 else -math.inf


@register_proxy("naswot")
def naswot(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """``log|det K|`` of the Hamming kernel of the inputs' binary activation codes (1 where the input of a
    ReLU-like module is > 0), ``K = c c^T + (1 - c)(1 - c)^T`` summed over layers, in float64.

    BatchNorm runs in train mode (batch statistics), as a freshly built network does in the reference;
    everything else (e.g. dropout) in eval mode, so the score is deterministic. ``y`` is ignored.
    Identical codes for two inputs make K singular: ``-inf``.
    """
    net = copy.deepcopy(model).eval()
    for module in net.modules():
        if isinstance(module, _BATCH_NORMS):
            module.train()
    kernel = torch.zeros((len(x), len(x)), dtype=torch.float64, device=x.device)

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        codes = (inputs[0].reshape(len(x), -1) > 0).double()
        kernel.add_(codes @ codes.T).add_((1 - codes) @ (1 - codes).T)

    hooked = [m for m in net.modules() if isinstance(m, ACTIVATIONS)]
    if not hooked:
        raise ValueError(f"naswot needs activation modules ({', '.join(t.__name__ for t in ACTIVATIONS)}); the model has none")
    for module in hooked:  # on the copy: nothing to remove afterwards
        module.register_forward_pre_hook(record)
    with torch.no_grad():
        net(x)
    return float(torch.linalg.slogdet(kernel).logabsdet)


def create_proxy(name: str) -> Proxy:
    """The proxy registered as ``name`` (a ValueError lists the known ones)."""
    return PROXIES.lookup(name)


def list_proxies() -> list[str]:
    """The registered proxy names, in registration order."""
    return PROXIES.names()


def proxy_score(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The proxy ``name`` of ``model`` on the batch ``(x, y)``; higher is better."""
    return PROXIES.create(name, model, x, y)


def score_genome(
    build: Callable[..., nn.Module], genome: Genome, data: PreparedData, name: str, seed: int = 0, batch_size: int = 64
) -> float:
    """Build ``genome`` seeded by ``seed`` (as :func:`~nas_core.evaluation.training.train_genome` does) and score it
    with proxy ``name`` on the first ``batch_size`` training samples, on the CPU."""
    proxy = create_proxy(name)
    model = build_seeded(build, seed, genome, data.input_shape, data.num_classes, data.mean, data.std)
    x = torch.from_numpy(data.x["train"][:batch_size])
    y = torch.from_numpy(data.y["train"][:batch_size])
    return proxy(model, x, y)


def rank_correlation(scores: Sequence[float], accuracies: Sequence[float]) -> float | None:
    """Spearman's rho between proxy scores and accuracies over the finite pairs; None when fewer than 3
    finite pairs remain or either side is constant."""
    pairs = [(s, a) for s, a in zip(scores, accuracies, strict=True) if math.isfinite(s) and math.isfinite(a)]
    if len(pairs) < 3 or len({s for s, _ in pairs}) < 2 or len({a for _, a in pairs}) < 2:
        return None
    from scipy.stats import spearmanr  # here: scipy takes most of a second to import, and searches rarely need it

    rho = spearmanr([s for s, _ in pairs], [a for _, a in pairs]).statistic
    return float(rho)
