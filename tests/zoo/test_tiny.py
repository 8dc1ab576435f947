"""The tiny seeded model: determinism, shapes and its evaluator."""

from __future__ import annotations

import math

import pytest
import torch

from bitsfusion.zoo import get_model_spec
from bitsfusion.zoo.tiny import build_tiny


def test_builds_are_identical_and_leave_the_global_rng_alone() -> None:
    before = torch.get_rng_state()
    a, b = build_tiny(), build_tiny()
    assert torch.equal(torch.get_rng_state(), before)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    assert not torch.equal(build_tiny(seed=1).fc1.weight, a.fc1.weight)
    assert not a.training


def test_forward_and_calibration_shapes() -> None:
    spec = get_model_spec("tiny")
    batches = spec.calibration(3)
    assert [tuple(b.shape) for b in batches] == [(8, 3, 16, 16)] * 3
    assert spec.run(spec.build(), batches[0]).shape == (8, 10)


def test_evaluate_is_perfect_against_itself_and_drops_with_noise() -> None:
    spec = get_model_spec("tiny")
    ref, cand = spec.build(), spec.build()
    same = spec.evaluate(ref, cand)
    assert same["mean_cos"] == pytest.approx(1.0) and same["mse"] == 0.0 and same["sqnr_db"] == math.inf
    with torch.no_grad():
        cand.fc1.weight.add_(0.05 * torch.randn_like(cand.fc1.weight))
    noisy = spec.evaluate(ref, cand)
    assert noisy["p5_cos"] <= noisy["mean_cos"] < 1.0
    assert 0.0 < noisy["mse"] and noisy["sqnr_db"] < math.inf
