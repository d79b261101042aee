"""A process-wide request to stop the search now (Ctrl-C, SIGTERM): training checks it between batches, so a
candidate training in a worker thread ends within a batch instead of running its epochs to the end."""

from __future__ import annotations

import threading

from nas_core.search.ports import InfrastructureError

_STOP = threading.Event()


class SearchStopped(InfrastructureError):
    """The search was asked to stop while this candidate trained; it is not the candidate's fault (queued on resume)."""


def request_stop() -> None:
    """Ask every training in this process to stop at its next batch."""
    _STOP.set()


def clear_stop() -> None:
    """Forget a stop request (a new search starts in this process)."""
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def check_stop() -> None:
    """Raise :class:`SearchStopped` when a stop was requested."""
    if _STOP.is_set():
        raise SearchStopped("the search was asked to stop (interrupted)")
