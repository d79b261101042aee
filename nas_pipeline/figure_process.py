"""Figures drawn in a process of their own, so that the search's thread goes on meanwhile.

Drawing (matplotlib) is CPU-bound Python: in a thread of the search's process it would only take turns on the GIL
with the export of the best model, which runs at the same time. In another process it uses a core the export leaves
idle. One process, started on first use (``spawn``: the search's process runs threads, which ``fork`` does not
copy safely) and kept for the life of the search's process, so the search worker of ``nas up`` starts it once.
With a single core, or when the process cannot start or dies, the figures are drawn in the caller's process.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _ready() -> bool:
    """Load what drawing needs: modules and fonts (run in the figure process when it starts)."""
    from nas_pipeline.plots import warm_up

    warm_up()
    return True


def _process() -> ProcessPoolExecutor | None:
    global _pool
    if (os.cpu_count() or 1) < 2:
        return None
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _pool


def _forget(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _result(function: Callable[..., T], *args: object) -> tuple[bool, T | None]:
    """(True, ``function(*args)`` run in the figure process), its own errors raised here as they are; (False, None)
    when there is no figure process: one core, or it cannot start (anymore), or it died."""
    pool = _process()
    if pool is None:
        return False, None
    try:
        future = pool.submit(function, *args)
    except (BrokenProcessPool, OSError, RuntimeError):  # dead, cannot start, or shut down with the interpreter
        _forget(pool)
        return False, None
    try:
        return True, future.result()
    except BrokenProcessPool:
        _forget(pool)
        return False, None


def draw(function: Callable[..., T], *args: object) -> T:
    """``function(*args)`` in the figure process (its result, or its exception raised here); in this process when
    there is no figure process. ``function`` and ``args`` must pickle."""
    ran, result = _result(function, *args)
    return result if ran else function(*args)  # type: ignore[return-value]


def start() -> bool:
    """Start the figure process now (and import matplotlib there) rather than at the first figure; whether it runs."""
    return _result(_ready)[0]
