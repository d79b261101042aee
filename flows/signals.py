"""Ctrl-C and SIGTERM stop a search promptly and resumably: both become ``KeyboardInterrupt`` in the main thread
(the search then marks its candidates' runs KILLED and keeps its checkpoint), and trainings in worker threads or
processes are told to stop at their next batch instead of running their epochs to the end."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from nas_core.evaluation.stopping import clear_stop, request_stop

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


class Interrupted(KeyboardInterrupt):
    """The search was stopped by a signal; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(signal.Signals(self.signum), 128 + self.signum)


def _stop_children(signum: int) -> None:
    """Pass the signal on to this process's worker processes (a SIGTERM sent to the search alone never reaches them)."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child.pid, signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread, once; a second signal
    while the search closes its runs is ignored (a third one, SIGKILL, always works). Outside the main thread: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        request_stop()
        if not received:
            received.append(signum)
            if signum == signal.SIGTERM:
                _stop_children(signum)
            raise Interrupted(signum)

    clear_stop()
    before = {sig: signal.signal(sig, handler) for sig in EXIT_CODES}
    try:
        yield
    finally:
        for sig, previous in before.items():
            signal.signal(sig, previous)
        clear_stop()
