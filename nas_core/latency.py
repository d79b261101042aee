"""Latency of a genome's network on the handoff runtime, predicted from a per-machine table of timed parts.

Exporting and timing every candidate the way the handoff does costs about half a candidate's training on the
default search (docs/latency.md), so the search predicts instead, in the spirit of nn-Meter: the network is cut
into its parts (the stem, each op, each aligner, each sum of inputs, the classifier), each distinct part (its
module and input shape) is timed once on this machine by a :class:`ModuleTimer` and cached, and a genome's latency
is the sum of its parts' times beyond the runtime's fixed cost per call, plus that cost once. Only the exported
model is measured as a whole (the model card).

A table is keyed by the machine (CPU, cores, runtime and its version, provider, threads) and the batch size: it is
never read on another machine. The timer is a port: the pipeline times with onnxruntime; tests pass a fake one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nas_core.genome import Genome
from nas_core.search.checkpoint import write_json_atomic
from nas_core.seeding import GLOBAL_RNG

if TYPE_CHECKING:
    from torch import nn

TABLE_FORMAT = 1
LATENCY_FOLDER = "latency"  # under the project folder: one table per machine and batch size
LATENCY_METRIC = "latency_ms"
# A network counts as under a limit X when measured at most (1 - LIMIT_MARGIN) * X: two careful measurements of one
# network on a loaded 2-core machine differed by up to 4 %, and the handed-over model must meet X when measured again.
LIMIT_MARGIN = 0.05
PREDICTED, MEASURED = "predicted", "measured"
LATENCY_SPACES = ("image", "sequence")  # spaces whose networks the predictor cuts into parts (GenomeNet)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Machine:
    """Where latencies are measured; figures from two different machines are never compared."""

    cpu: str
    cores: int
    runtime: str  # e.g. "onnxruntime 1.22.0"
    provider: str
    threads: int

    def key(self) -> str:
        """A short stable id of the machine (the latency table's file name)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.cpu}, {self.cores} cores, {self.runtime}, {self.provider}, {self.threads} thread(s)"

    def params(self) -> dict[str, Any]:
        """The machine as flat run parameters (``latency.cpu``, ``latency.cores``, ...)."""
        return {f"latency.{k}": v for k, v in asdict(self).items()} | {"latency.machine_key": self.key()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Machine:
        return cls(**{k: data[k] for k in ("cpu", "cores", "runtime", "provider", "threads")})


class ModuleTimer(Protocol):
    """Times modules on the handoff runtime: milliseconds per call at one batch size, after warm-up.

    ``time_ms`` times a part of a network (quick: a table holds hundreds); ``time_network_ms`` a whole network whose
    figure decides whether a candidate meets a limit, so it is timed to agree with a later measurement of the
    exported model (slower: about a second)."""

    def machine(self) -> Machine: ...
    def time_ms(self, module: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> float: ...
    def time_network_ms(self, module: nn.Module, input_shape: tuple[int, ...], batch_size: int) -> float: ...


class GenomeLatency(Protocol):
    """Latency of a genome's network, in milliseconds per call at the batch size it was made for."""

    source: str  # PREDICTED or MEASURED
    batch_size: int

    def machine(self) -> Machine: ...
    def latency_ms(self, genome: Genome) -> float: ...


@dataclass(frozen=True)
class Part:
    """One piece of a network, timed on its own: its key (the module and its input shape) and how to build it."""

    key: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] = ()


def _describe(module: nn.Module, shape: tuple[int, ...]) -> str:
    text = re.sub(r"\s+", " ", repr(module))
    return f"{text} @ {tuple(shape)}"


def network_parts(model: nn.Module, genome: Genome) -> list[Part]:
    """The parts of a built network whose times add up to its latency.

    A :class:`~nas_core.builder.GenomeNet` is cut into stem, aligners, sums, ops and classifier (the ``image`` and
    ``sequence`` spaces); other networks (NAS-Bench-201's) are a ValueError.
    """
    from torch import nn

    from nas_core.builder import GenomeNet

    if not isinstance(model, GenomeNet):
        raise ValueError(f"the latency predictor cuts GenomeNet networks into parts, not {type(model).__name__}")
    start = tuple(model.shapes[model.input_id][1:])
    in_shape = (int(model.normalize.mean.shape[1]), *start)
    parts = [_part(nn.Sequential(model.normalize, model.stem), in_shape)]
    for node_id in model.order:
        if node_id == model.input_id:
            continue
        sources = model.inputs[node_id]
        for pred, edge in sources:
            parts += _parts_of(model.edge_modules[edge], model.shapes[pred])
        merged = _merged_shape(model, node_id)
        parts += [_part(_Sum(), merged)] * (len(sources) - 1)
        if node_id != model.output_id:
            parts += _parts_of(model.ops[model.op_keys[node_id]], merged)
    parts.append(_part(_Head(model.classifier, len(model.pool_dims)), model.output_shape))
    return parts


def _merged_shape(model: Any, node_id: str) -> tuple[int, ...]:
    shapes = [model.shapes[p] for p, _ in model.inputs[node_id]]
    return (max(s[0] for s in shapes), *(min(s[d] for s in shapes) for d in range(1, len(shapes[0]))))


def _parts_of(module: nn.Module, shape: tuple[int, ...]) -> list[Part]:
    from torch import nn

    return [] if isinstance(module, nn.Identity) else [_part(module, shape)]


def _part(module: nn.Module, shape: tuple[int, ...]) -> Part:
    import torch

    with torch.no_grad():
        output = tuple(module.eval()(torch.zeros((1, *shape))).shape[1:])
    return Part(_describe(module, shape), lambda: module, tuple(shape), output)


@functools.cache
def _torch_module_classes() -> tuple[type, type]:
    from torch import nn

    class Sum(nn.Module):
        """Two aligned inputs added (a node with k inputs has k - 1 of these)."""

        def forward(self, x):
            return x + x

    class Head(nn.Module):
        """Global average pooling, then the linear classifier."""

        def __init__(self, classifier: nn.Module, dims: int) -> None:
            super().__init__()
            self.classifier, self.dims = classifier, tuple(range(2, 2 + dims))

        def forward(self, x):
            return self.classifier(x.mean(dim=self.dims))

    return Sum, Head


def _Sum() -> nn.Module:  # noqa: N802 - builds the Sum module (defined when torch is imported)
    return _torch_module_classes()[0]()


def _Head(classifier: nn.Module, dims: int) -> nn.Module:  # noqa: N802
    return _torch_module_classes()[1](classifier, dims)


class LatencyTable:
    """Times of network parts on one machine at one batch size, cached in ``<folder>/<machine key>-b<batch>.json``."""

    def __init__(self, timer: ModuleTimer, folder: Path | None, batch_size: int = 1) -> None:
        self.timer, self.batch_size = timer, batch_size
        self.machine = timer.machine()
        self.path = Path(folder) / f"{self.machine.key()}-b{batch_size}.json" if folder is not None else None
        self.times: dict[str, float] = self._load()
        self.timed_now = 0  # parts timed by this process (not found in the cache)

    def _load(self) -> dict[str, float]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text())
            same = data.get("format") == TABLE_FORMAT and Machine.from_dict(data["machine"]) == self.machine
            if same and data.get("batch_size") == self.batch_size:
                return {str(k): float(v) for k, v in data["parts"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log.warning("latency table %s is for another machine or unreadable: timing the parts again", self.path)
        return {}

    def time_of(self, part: Part) -> float:
        """The part's median milliseconds per call (timed now unless the table has it)."""
        if part.key not in self.times:
            with GLOBAL_RNG:  # its weights are drawn while candidates may be seeding theirs
                module = part.build()
            self.times[part.key] = float(self.timer.time_ms(module, part.input_shape, self.batch_size))
            self.timed_now += 1
        return self.times[part.key]

    def save(self) -> None:
        """Write the table (merged with what another search may have added since it was read)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**self._load(), **self.times} if self.path.is_file() else dict(self.times)
        data = {"format": TABLE_FORMAT, "machine": asdict(self.machine), "batch_size": self.batch_size, "parts": merged}
        write_json_atomic(self.path, data)


BASE_KEY = "call overhead (an identity network) @ "
OUTPUT_KEY = "output overhead (a ReLU) @ "


class LatencyPredictor:
    """A genome's latency predicted from its parts' times: ``base + sum(max(part - output(part), 0))``.

    A part timed alone pays what the whole network pays once: the runtime's fixed cost per call and handing its output
    back. ``output(part)`` is that cost for the part's output shape (a lone ReLU on it, the cheapest op there is), and
    ``base`` is the whole network's (an identity network on the input).
    """

    source = PREDICTED

    def __init__(self, build: Callable[[Genome], nn.Module], input_shape: tuple[int, ...], table: LatencyTable) -> None:
        self.build, self.input_shape, self.table = build, tuple(input_shape), table
        self.batch_size = table.batch_size
        self._cache: dict[str, float] = {}

    def machine(self) -> Machine:
        return self.table.machine

    def latency_ms(self, genome: Genome) -> float:
        """The predicted milliseconds per call (parts not in the table are timed now, and the table saved)."""
        key = genome.canonical_hash()
        if key not in self._cache:
            before = self.table.timed_now
            self._cache[key] = self._predict(self.parts(genome))
            if self.table.timed_now > before:
                self.table.save()
        return self._cache[key]

    def _predict(self, parts: list[Part]) -> float:
        from torch import nn

        base = self.table.time_of(Part(BASE_KEY + str(self.input_shape), nn.Identity, self.input_shape))
        total = base
        for part in parts:
            output = self.table.time_of(Part(OUTPUT_KEY + str(part.output_shape), nn.ReLU, part.output_shape))
            total += max(self.table.time_of(part) - output, 0.0)
        return total

    def parts(self, genome: Genome) -> list[Part]:
        with GLOBAL_RNG:  # building draws weights from torch's global generator: not while a candidate seeds it
            model = self.build(genome)
        return network_parts(model, genome)
