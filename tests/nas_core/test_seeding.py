"""Weights drawn from torch's global generator depend on the seed alone, whatever other threads build meanwhile."""

from __future__ import annotations

import random
import threading

import torch

from nas_core.seeding import build_seeded
from nas_core.spaces import create_space
from tests.nas_core.test_latency import SHAPES, FakeTimer, predictor

SHAPE = SHAPES["image"]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_a_seeded_build_does_not_depend_on_earlier_draws():
    space = create_space("image")
    genome = space.sample(random.Random(1))
    first = _weights(build_seeded(space.build, 7, genome, SHAPE, 10))
    torch.rand(1000)  # someone drew from the global generator in between
    again = _weights(build_seeded(space.build, 7, genome, SHAPE, 10))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    other = _weights(build_seeded(space.build, 8, genome, SHAPE, 10))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True)), "the seed decides the weights"


def test_a_latency_prediction_waits_for_a_candidate_between_its_seeding_and_its_build():
    space = create_space("image")
    candidate, proposal = space.sample(random.Random(1)), space.sample(random.Random(2))
    reference = _weights(build_seeded(space.build, 7, candidate, SHAPE, 10))
    seeded, go, built = threading.Event(), threading.Event(), {}

    def build_after_a_pause(*args):  # the candidate has seeded the generator and not yet built
        seeded.set()
        go.wait(timeout=30)
        return space.build(*args)

    training = threading.Thread(target=lambda: built.update(model=build_seeded(build_after_a_pause, 7, candidate, SHAPE, 10)))
    training.start()
    assert seeded.wait(timeout=30)
    predicting = threading.Thread(target=lambda: predictor("image", FakeTimer()).latency_ms(proposal))  # builds too
    predicting.start()
    predicting.join(timeout=0.5)
    waited = predicting.is_alive()
    go.set()
    training.join(timeout=30)
    predicting.join(timeout=30)
    assert waited, "the prediction built its network while the candidate was between seeding and building"
    assert all(torch.equal(a, b) for a, b in zip(reference, _weights(built["model"]), strict=True))
