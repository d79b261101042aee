"""A zero-cost proxy over a whole listable space (or a seeded sample of a larger one), computed once, cached as JSON.

Every architecture of a space that can be listed (``space.enumerate()``: one genome per identity; NAS-Bench-201 has
6,466) is built once, seeded, and scored at initialisation by a registered proxy on a data-free batch: a seeded
standard-normal batch of the table's input shape (``batch_size`` samples; synflow uses only its shape, NASWOT its
activation patterns). No dataset is needed, so one table serves a tabular benchmark and real training alike.
A space too large to list (the image and sequence spaces) is scored on a pool instead: ``sample`` distinct
architectures drawn with the key's seed; the table then also holds their genomes, so a strategy can propose them.

A table is keyed by :class:`ProxyTableKey` (space and its options, input shape, classes, proxy, seed, batch size,
pool size, :data:`FORMAT_VERSION`); its file name carries a hash of the key, and the file holds the key, the scores
by identity (and the pool's genomes) and a SHA-256 checksum of all of it. A file whose key or checksum does not
match is computed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nas_core.evaluation.proxies import create_proxy
from nas_core.genome import Genome
from nas_core.seeding import build_seeded
from nas_core.spaces import SearchSpace

FORMAT_VERSION = 1
CHUNK = 32  # identities per task sent to a worker process
Progress = Callable[[int, int], None]  # (scored so far, total)


class ProxyTableError(ValueError):
    """The space cannot be listed, or a table file cannot be used."""


@dataclass(frozen=True)
class ProxyTableKey:
    """What a table's scores depend on; two equal keys give the same scores."""

    space: str
    input_shape: tuple[int, ...]
    num_classes: int
    proxy: str
    seed: int = 0
    batch_size: int = 16
    space_options: dict[str, Any] = field(default_factory=dict)
    version: int = FORMAT_VERSION
    sample: int = 0  # 0: every architecture of a listable space; N: a pool of N distinct architectures drawn with seed

    @classmethod
    def of(cls, space: SearchSpace, input_shape: Sequence[int], num_classes: int, proxy: str, **options: Any) -> ProxyTableKey:
        """The key of ``space`` (its dataclass fields are its options) for these inputs."""
        fields = dataclasses.asdict(space) if dataclasses.is_dataclass(space) else {}  # type: ignore[arg-type]
        fields.pop("name", None)
        create_proxy(proxy)  # an unknown proxy is a ValueError naming the known ones
        return cls(space.name, tuple(int(v) for v in input_shape), int(num_classes), proxy, space_options=fields, **options)

    def to_dict(self) -> dict[str, Any]:
        data = {**dataclasses.asdict(self), "input_shape": list(self.input_shape)}
        if not self.sample:
            del data["sample"]  # a whole-space key reads as before pools existed: cached tables and digests stay valid
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyTableKey:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})

    def digest(self) -> str:
        return hashlib.sha256(_canonical(self.to_dict()).encode()).hexdigest()

    def file_name(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        return f"{self.space}-{self.proxy}-{shape}-c{self.num_classes}-s{self.seed}-{self.digest()[:12]}.json"


@dataclass(frozen=True)
class ProxyTable:
    """Proxy scores by identity (higher is better; ``-inf`` where the proxy gave no finite score); for a pool (a
    sampled key), the genome of each identity as well."""

    key: ProxyTableKey
    scores: dict[str, float]
    seconds: float = 0.0  # how long computing it took
    genomes: dict[str, dict[str, Any]] = field(default_factory=dict)  # identity -> genome JSON (pools only)

    @property
    def checksum(self) -> str:
        """SHA-256 of the key, the scores (non-finite scores as null) and a pool's genomes."""
        return _checksum(self.key.to_dict(), _jsonable(self.scores), self.genomes)

    def pool(self) -> dict[str, Genome]:
        """The genome of each identity of a pool (empty for a whole listable space: the space lists them)."""
        return {identity: Genome.from_dict(genome) for identity, genome in self.genomes.items()}

    def to_dict(self) -> dict[str, Any]:
        scores = _jsonable(self.scores)
        key = self.key.to_dict()
        data = {"key": key, "checksum": _checksum(key, scores, self.genomes), "seconds": self.seconds, "scores": scores}
        return data | ({"genomes": self.genomes} if self.genomes else {})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProxyTable:
        """A table from its JSON form; a ProxyTableError when the checksum does not match the content."""
        try:
            key, scores, genomes = data["key"], data["scores"], dict(data.get("genomes") or {})
            if _checksum(key, scores, genomes) != data["checksum"]:
                raise ProxyTableError("its checksum does not match its content")
            values = {h: -math.inf if s is None else float(s) for h, s in scores.items()}
            return cls(ProxyTableKey.from_dict(key), values, float(data.get("seconds", 0.0)), genomes)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ProxyTableError(f"it is not a proxy table ({type(exc).__name__}: {exc})") from None

    def write(self, path: Path) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=0, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: Path) -> ProxyTable:
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProxyTableError(f"cannot read proxy table {path}: {exc}") from None
        except ProxyTableError as exc:
            raise ProxyTableError(f"proxy table {path}: {exc}") from None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _jsonable(scores: Mapping[str, float]) -> dict[str, float | None]:
    return {h: (float(s) if math.isfinite(s) else None) for h, s in sorted(scores.items())}


def _checksum(key: Mapping[str, Any], scores: Mapping[str, Any], genomes: Mapping[str, Any] | None = None) -> str:
    content = {"key": key, "scores": scores} | ({"genomes": genomes} if genomes else {})
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


# ---- scoring -----------------------------------------------------------------------------------


def data_free_batch(key: ProxyTableKey) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded standard-normal batch of the key's input shape, and seeded labels."""
    generator = torch.Generator().manual_seed(key.seed)
    x = torch.randn((key.batch_size, *key.input_shape), generator=generator)
    y = torch.randint(0, key.num_classes, (key.batch_size,), generator=generator)
    return x, y


def score_one(space: SearchSpace, genome: Genome, key: ProxyTableKey, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Build ``genome`` seeded by the key's seed (one build) and score it with the key's proxy."""
    model = build_seeded(space.build, key.seed, genome, key.input_shape, key.num_classes)
    return float(create_proxy(key.proxy)(model, *batch))


_WORKER: tuple[SearchSpace, ProxyTableKey, tuple[torch.Tensor, torch.Tensor]] | None = None


def _init_worker(space: SearchSpace, key: ProxyTableKey) -> None:
    global _WORKER
    torch.set_num_threads(1)  # processes share the cores; one thread each is fastest for these small networks
    _WORKER = (space, key, data_free_batch(key))


def _score_chunk(genomes: list[dict[str, Any]]) -> list[float]:
    assert _WORKER is not None
    space, key, batch = _WORKER
    return [score_one(space, Genome.from_dict(g), key, batch) for g in genomes]


def compute_table(space: SearchSpace, key: ProxyTableKey, processes: int = 1, progress: Progress | None = None) -> ProxyTable:
    """Score every architecture of ``space``, or the key's pool of it (``processes`` > 1: a pool of spawned processes,
    one thread each)."""
    genomes = sampled_pool(space, key.sample, key.seed) if key.sample else listing(space)
    identities = [space.identity(g) for g in genomes]
    start = time.perf_counter()
    scores: list[float] = []
    chunks = [[g.to_dict() for g in genomes[i : i + CHUNK]] for i in range(0, len(genomes), CHUNK)]
    if processes <= 1:
        _init_worker(space, key)
        results = map(_score_chunk, chunks)
        for chunk in results:
            scores += chunk
            if progress is not None:
                progress(len(scores), len(genomes))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker, initargs=(space, key)) as pool:
            for chunk in pool.map(_score_chunk, chunks):
                scores += chunk
                if progress is not None:
                    progress(len(scores), len(genomes))
    pool = {h: g.to_dict() for h, g in zip(identities, genomes, strict=True)} if key.sample else {}
    return ProxyTable(key, dict(zip(identities, scores, strict=True)), time.perf_counter() - start, pool)


def listing(space: SearchSpace) -> list[Genome]:
    """Every architecture of ``space``, one per identity; a ProxyTableError when the space cannot be listed."""
    everything = getattr(space, "enumerate", lambda: None)()
    if not everything:
        raise ProxyTableError(f"space '{space.name}' cannot be listed: a proxy table needs a listable space (e.g. nb201)")
    return list(everything)


def sampled_pool(space: SearchSpace, size: int, seed: int) -> list[Genome]:
    """Up to ``size`` architectures of distinct identities, drawn from ``space`` with ``seed`` (the same ones every time)."""
    rng, found = random.Random(seed), {}
    for _ in range(size * 20):  # a small space runs out of new identities: stop drawing eventually
        if len(found) >= size:
            break
        genome = space.sample(rng)
        found.setdefault(space.identity(genome), genome)
    return list(found.values())


def load_or_compute(
    space: SearchSpace, key: ProxyTableKey, folder: Path, processes: int = 1, progress: Progress | None = None
) -> tuple[ProxyTable, Path]:
    """The table of ``key`` from ``folder`` if a valid one is there, else computed and written there."""
    path = Path(folder) / key.file_name()
    if path.is_file():
        try:
            table = ProxyTable.read(path)
        except ProxyTableError:
            table = None  # corrupt or tampered with: compute it again
        if table is not None and table.key == key:
            return table, path
    table = compute_table(space, key, processes, progress)
    return table, table.write(path)
