"""SIGTERM and SIGINT inside a search become one ``Interrupted`` in the main thread, with the shell's exit code."""

from __future__ import annotations

import os
import signal

import pytest

from flows.signals import Interrupted, stop_on_signals
from nas_core.evaluation.stopping import stop_requested


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_raises_interrupted_once_and_asks_trainings_to_stop(signum, code):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as raised, stop_on_signals():
        try:
            os.kill(os.getpid(), signum)  # the handler runs as soon as os.kill returns
        finally:
            assert stop_requested(), "worker threads are told to stop"
            os.kill(os.getpid(), signum)  # a second one while the search closes its runs: ignored
    assert isinstance(raised.value, KeyboardInterrupt), "the same path as Ctrl-C"
    assert raised.value.exit_code == code and raised.value.signum == signum
    assert signal.getsignal(signum) == before, "the previous handler is back"
    assert not stop_requested(), "a later search in this process trains normally"
