"""Quality metrics on hand-computed cases, plus invariants checked with hypothesis."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.analysis.metrics import cosine_stats, output_mse, row_cosine, sqnr_db, topk_overlap
from bitsfusion.errors import ConfigError


def _on_circle(degrees: list[float]) -> torch.Tensor:
    rad = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=1)


def test_cosine_stats_hand_computed() -> None:
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    s = cosine_stats(ref, cand)
    c = 1 / math.sqrt(2)
    assert s["mean"] == pytest.approx((c + 1) / 2)
    assert s["p5"] == pytest.approx(c + 0.05 * (1 - c))  # linear interpolation between the two sorted cosines


def test_row_cosine_flattens_trailing_dims_and_handles_zero_rows() -> None:
    ref = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]], [[0.0, 0.0]], [[2.0, 0.0]]])  # [4, 1, 2]
    cand = torch.tensor([[[-3.0, 0.0]], [[0.0, 0.0]], [[1.0, 0.0]], [[5.0, 0.0]]])
    assert row_cosine(ref, cand).tolist() == [-1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize(
    ("cand_degrees", "k", "expected"),
    [
        ([0, 10, 30, 100], 1, 1.0),  # unchanged
        ([0, 10, 30, 35], 1, 0.75),  # only c's nearest neighbour changes (b -> d)
        ([0, 10, 30, 35], 2, 0.875),  # a {b,c}, b {a,c}, d {c,b} kept; c {b,a} -> {d,b}: half
    ],
    ids=["same", "one-moved-k1", "one-moved-k2"],
)
def test_topk_overlap_hand_computed(cand_degrees: list[float], k: int, expected: float) -> None:
    ref = _on_circle([0, 10, 30, 100])
    assert topk_overlap(ref, _on_circle(cand_degrees), k=k) == pytest.approx(expected)


def test_topk_overlap_ignores_row_scale() -> None:
    x = torch.randn(50, 8)
    assert topk_overlap(x, x * torch.rand(50, 1).add(0.1), k=10) == 1.0


def test_output_mse_and_sqnr_hand_computed() -> None:
    ref = torch.tensor([1.0, 2.0, 3.0])
    assert output_mse(ref, torch.tensor([1.0, 2.0, 5.0])) == pytest.approx(4 / 3)
    assert sqnr_db(ref, 1.1 * ref) == pytest.approx(20.0, abs=1e-5)
    assert sqnr_db(ref, ref.clone()) == math.inf
    assert sqnr_db(torch.zeros(3), ref) == -math.inf


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cosine_stats(torch.ones(3, 2), torch.ones(2, 3)), "shape"),
        (lambda: output_mse(torch.ones(0), torch.ones(0)), "at least one"),
        (lambda: topk_overlap(torch.randn(5, 3), torch.randn(5, 3), k=5), "more than k=5"),
        (lambda: topk_overlap(torch.randn(5, 3), torch.randn(5, 3), k=0), "positive int"),
        (lambda: sqnr_db([1.0], [1.0]), "tensors"),
    ],
    ids=["shape-mismatch", "empty", "k-too-large", "k-zero", "not-tensors"],
)
def test_bad_inputs_raise_config_error(call, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(12, 40), d=st.integers(1, 16), noise=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_metric_ranges(n: int, d: int, noise: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, d, generator=g)
    cand = ref + noise * torch.randn(n, d, generator=g)
    s = cosine_stats(ref, cand)
    cos = torch.nn.functional.cosine_similarity(ref.double(), cand.double(), dim=-1)
    # p5 is the 5th percentile of the per-row cosines (not below the mean necessarily: one -1 among 27 ones
    # has p5 = 1 > mean)
    assert float(cos.min()) - 1e-6 <= s["p5"] <= float(cos.max()) + 1e-6
    assert -1.0 - 1e-6 <= s["mean"] <= 1.0 + 1e-6
    assert s["p5"] == pytest.approx(float(torch.quantile(cos, 0.05)), abs=1e-5)
    assert 0.0 <= topk_overlap(ref, cand, k=10) <= 1.0
    assert output_mse(ref, cand) >= 0.0
    if noise == 0.0:
        assert s["mean"] == pytest.approx(1.0) and topk_overlap(ref, cand, k=10) == 1.0
