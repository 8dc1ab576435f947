"""Distillation losses: scale-free, masked, and matching torch's own definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitsfusion.train.losses import cosine_distance, feature_loss, kl_divergence, relative_mse


def test_relative_mse_is_zero_for_the_teacher_and_one_for_zero() -> None:
    t = torch.randn(4, 7, 5)
    assert float(relative_mse(t, t)) == 0.0
    assert float(relative_mse(torch.zeros_like(t), t)) == pytest.approx(1.0)
    assert float(relative_mse(3 * t, 3 * t + 0.3 * torch.ones_like(t))) == pytest.approx(
        float(relative_mse(t, t + 0.1 * torch.ones_like(t))), rel=1e-5)  # scale-free


def test_relative_mse_mask_drops_positions() -> None:
    t, s = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    mask = torch.ones(2, 6, 1)
    mask[:, 4:] = 0
    s_bad = s.clone()
    s_bad[:, 4:] = 1e6  # padding positions may be anything
    assert float(relative_mse(s_bad, t, mask)) == pytest.approx(float(relative_mse(s[:, :4], t[:, :4])), rel=1e-6)


def test_cosine_distance_and_kl_match_torch() -> None:
    a, b = torch.randn(9, 16), torch.randn(9, 16)
    assert float(cosine_distance(a, b)) == pytest.approx(float((1 - F.cosine_similarity(a, b)).mean()), rel=1e-6)
    assert float(cosine_distance(a, 2 * a)) == pytest.approx(0.0, abs=1e-6)
    for temperature in (1.0, 2.5):
        ref = F.kl_div(F.log_softmax(a / temperature, -1), F.log_softmax(b / temperature, -1), log_target=True,
                       reduction="batchmean") * temperature**2
        assert float(kl_divergence(a, b, temperature)) == pytest.approx(float(ref), rel=1e-5)
    assert float(kl_divergence(a, a)) == pytest.approx(0.0, abs=1e-6)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        relative_mse(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="temperature"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3), 0.0)
    with pytest.raises(ValueError, match="no feature pairs"):
        feature_loss([])


def test_feature_loss_is_the_mean_over_pairs() -> None:
    t1, t2 = torch.randn(3, 4), torch.randn(3, 4)
    got = feature_loss([(torch.zeros_like(t1), t1), (t2, t2)])
    assert float(got) == pytest.approx(0.5)
