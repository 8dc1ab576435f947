"""Proxies: exact on hand cases, input moments as im2col rows, Spearman in [-1, 1] and positive on tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr
from torch import nn

from bitsfusion.analysis import InputMoments, hawq_error, input_weighted_error, proxy_correlation, spearman


def test_identity_hessian_reduces_to_weight_error() -> None:
    g = torch.Generator().manual_seed(0)
    w, w_hat = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    rel = float((w - w_hat).square().sum() / w.square().sum())
    assert input_weighted_error(w, w_hat, torch.eye(5)) == pytest.approx(rel, rel=1e-6)
    assert hawq_error(w, w_hat, torch.eye(5)) == pytest.approx(float((w - w_hat).square().sum()), rel=1e-6)


def test_input_weighted_error_is_the_relative_output_error() -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(200, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
    w_hat = w + 0.1 * torch.randn(3, 7, generator=g, dtype=torch.float64)
    h = x.T @ x / x.shape[0]
    expected = float((x @ (w_hat - w).T).square().sum() / (x @ w.T).square().sum())
    assert input_weighted_error(w, w_hat, h) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_input_moments_match_manual_rows(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = nn.Linear(5, 3), torch.randn(2, 4, 5)
        rows = x.reshape(-1, 5)
    else:
        layer, x = nn.Conv2d(2, 3, 3, padding=1, stride=2), torch.randn(2, 2, 6, 6)
        cols = torch.nn.functional.unfold(x, 3, padding=1, stride=2)
        rows = cols.transpose(1, 2).reshape(-1, 18)
    model = nn.Sequential(layer)
    moments = InputMoments(model, ["0"])
    handle = layer.register_forward_pre_hook(moments.hooks()["0"])
    model(x)
    model(x)
    handle.remove()
    torch.testing.assert_close(moments.get("0"), rows.T @ rows / rows.shape[0])
    # and H is the right one: the proxy equals the measured relative output error of the layer
    w = layer.weight.detach().reshape(3, -1)
    w_hat = w + 0.05 * torch.randn_like(w)
    out = rows @ w.T
    expected = float((rows @ (w_hat - w).T).square().sum() / out.square().sum())
    assert input_weighted_error(w, w_hat, moments.get("0")) == pytest.approx(expected, rel=1e-4)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(-1e3, 1e3)), min_size=3, max_size=40))
def test_spearman_matches_scipy_and_is_bounded(pairs) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    rho = spearman(a, b)
    ref = spearmanr(a, b).statistic
    if np.isnan(ref):
        assert np.isnan(rho)
    else:
        assert -1.0 - 1e-12 <= rho <= 1.0 + 1e-12
        assert rho == pytest.approx(ref, abs=1e-9)


def test_proxies_rank_the_tiny_table_positively(tiny_table) -> None:
    rho = proxy_correlation(tiny_table.loss, tiny_table.proxies)
    assert set(rho) == {"input_weighted", "hawq"}
    for value in rho.values():
        assert -1.0 <= value <= 1.0
    assert rho["input_weighted"] > 0.5 and rho["hawq"] > 0.0
    assert tiny_table.meta["proxy_spearman"] == rho
