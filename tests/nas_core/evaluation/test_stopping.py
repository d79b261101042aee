"""A stop request (Ctrl-C, SIGTERM) ends a training at its next batch, as an infrastructure error (not the candidate's)."""

from __future__ import annotations

import threading

import pytest

from nas_core.evaluation.stopping import SearchStopped, clear_stop, request_stop, stop_requested
from nas_core.evaluation.training import EpochMetrics, TrainConfig, train_genome
from nas_core.search.ports import InfrastructureError
from tests.nas_core.evaluation.test_training import good_genome


@pytest.fixture(autouse=True)
def no_stop_left():
    clear_stop()
    yield
    clear_stop()


def test_a_stop_request_ends_a_training_in_another_thread_within_a_batch(digits, single_torch_thread):
    epochs: list[EpochMetrics] = []
    outcome: list[BaseException] = []

    def first_epoch_done(metrics: EpochMetrics) -> None:
        epochs.append(metrics)
        request_stop()  # as the signal handler does, while the training goes on

    def train() -> None:
        try:
            train_genome(good_genome(), digits, TrainConfig(epochs=500, seed=0), on_epoch=first_epoch_done)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=train)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "500 epochs were not trained to the end"
    assert len(epochs) == 1, "stopped in the epoch after the request"
    assert len(outcome) == 1 and isinstance(outcome[0], SearchStopped)
    assert isinstance(outcome[0], InfrastructureError), "the worker re-raises it: the candidate is not marked failed"
    assert stop_requested()
    clear_stop()
    assert not stop_requested()
