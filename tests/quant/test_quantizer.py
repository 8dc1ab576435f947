"""quantize(): code ranges, groups without padding effects, float16 consistency, error ordering, validation."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.errors import ConfigError
from bitsfusion.quant import quantize, relative_error
from bitsfusion.quant.codes import expand_groups
from bitsfusion.quant.grids import GridSpec
from bitsfusion.quant.scales import als
from bitsfusion.types import MAX_BALANCED_BITS, Grid, QScheme, ScaleMethod
from tests.conftest import GRID_BITS
from tests.quant.conftest import DISTRIBUTIONS, random_weight

GROUPS = {"g64": 64, "g8": 8, "g1": 1, "g200": 200, "ch": None}


@st.composite
def schemes(draw: st.DrawFn) -> QScheme:
    grid = draw(st.sampled_from(list(Grid)))
    bits = draw(st.integers(1, MAX_BALANCED_BITS if grid is Grid.BALANCED else 8))
    nested: tuple[int, ...] = ()
    if grid is not Grid.BALANCED and bits > 1 and draw(st.booleans()):
        nested = tuple(draw(st.sets(st.integers(1, bits - 1), min_size=1, max_size=2)))
    return QScheme(bits=bits, group_size=draw(st.sampled_from(list(GROUPS.values()))), grid=grid,
                   method=draw(st.sampled_from(list(ScaleMethod))), nested=nested)


@settings(max_examples=60, deadline=None)
@given(scheme=schemes(), n=st.integers(1, 4), k=st.integers(1, 150), seed=st.integers(0, 2**16))
def test_codes_scales_and_zeros_are_in_range_for_any_shape(scheme: QScheme, n: int, k: int, seed: int) -> None:
    w = random_weight(n, k, seed=seed, dist="student_t")
    qw = quantize(w, scheme)
    assert qw.codes.dtype == torch.uint8 and qw.shape == (n, k)
    assert int(qw.codes.max()) <= scheme.levels - 1
    groups = scheme.n_groups(k)
    for b in scheme.precisions:
        scales, zeros = qw.scale_zero(b)
        assert scales.dtype == torch.float16 and scales.shape == (n, groups)
        assert torch.all(torch.isfinite(scales)) and torch.all(scales > 0)
        assert (zeros is not None) == scheme.has_zeros
        if zeros is not None:
            assert zeros.dtype == torch.float16 and zeros.shape == (n, groups) and torch.all(torch.isfinite(zeros))
        assert torch.all(torch.isfinite(qw.dequantize(b)))
    assert set(qw.nested) == set(scheme.nested)


@pytest.mark.parametrize("method", list(ScaleMethod), ids=lambda m: m.value)
@pytest.mark.parametrize("grid", list(Grid), ids=lambda g: g.value)
def test_error_strictly_falls_as_bits_rise(grid: Grid, method: ScaleMethod) -> None:
    w = random_weight(32, 256, seed=1)
    top = MAX_BALANCED_BITS if grid is Grid.BALANCED else 8
    errors = [relative_error(w, quantize(w, QScheme(bits=b, grid=grid, method=method)).dequantize())
              for b in range(1, top + 1)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_als_and_mse_never_worse_than_minmax_on_many_weights(grid: Grid, bits: int) -> None:
    for dist in DISTRIBUTIONS:
        for seed in range(3):
            w = random_weight(16, 100, seed=seed, dist=dist)
            err = {m: relative_error(w, quantize(w, QScheme(bits=bits, grid=grid, method=m)).dequantize())
                   for m in ScaleMethod}
            assert err[ScaleMethod.ALS] <= err[ScaleMethod.MINMAX] * (1 + 1e-6), (dist, seed, err)
            assert err[ScaleMethod.MSE] <= err[ScaleMethod.MINMAX] * (1 + 1e-6), (dist, seed, err)


@pytest.mark.parametrize("nested", [(), (2,)], ids=["plain", "nested2"])
@pytest.mark.parametrize("grid", [Grid.SYMMETRIC, Grid.ASYMMETRIC], ids=lambda g: g.value)
def test_short_last_group_is_quantized_as_if_alone(grid: Grid, nested: tuple[int, ...]) -> None:
    """K = 150, G = 64: groups [0,64), [64,128) and the tail [128,150) see only their own weights."""
    w = random_weight(5, 150, seed=2, dist="student_t")
    scheme = QScheme(bits=4, group_size=64, grid=grid, nested=nested)
    whole = quantize(w, scheme)
    head = quantize(w[:, :128].contiguous(), scheme)
    tail = quantize(w[:, 128:].contiguous(), scheme.replace(group_size=None))
    assert torch.equal(whole.codes, torch.cat([head.codes, tail.codes], dim=1))
    for b in scheme.precisions:
        for got, a, c in zip(whole.scale_zero(b), head.scale_zero(b), tail.scale_zero(b)):
            assert (got is None) == (a is None)
            if got is not None:
                assert torch.equal(got, torch.cat([a, c], dim=1))


def test_group_larger_than_k_is_per_channel() -> None:
    w = random_weight(3, 30, seed=4)
    a, b = quantize(w, QScheme(bits=3, group_size=64)), quantize(w, QScheme(bits=3, group_size=None))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales) and a.scales.shape == (3, 1)


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_codes_are_nearest_to_the_stored_float16_scales(grid: Grid, bits: int) -> None:
    w = random_weight(8, 100, seed=bits, dist="laplace")
    scheme = QScheme(bits=bits, group_size=32, grid=grid)
    qw = quantize(w, scheme)
    s = expand_groups(qw.scales.float(), 100, 32)
    z = None if qw.zeros is None else expand_groups(qw.zeros.float(), 100, 32)
    assert torch.equal(GridSpec(grid, bits).nearest(w, s, z).to(torch.uint8), qw.codes)


@pytest.mark.parametrize("grid", list(Grid), ids=lambda g: g.value)
def test_dequantize_reproduces_the_error_the_search_optimised(grid: Grid) -> None:
    w = random_weight(16, 128, seed=5, dist="student_t")
    _, _, err = als(w.reshape(-1, 64), GridSpec(grid, 3))
    got = (w - quantize(w, QScheme(bits=3, grid=grid)).dequantize()).square().sum()
    torch.testing.assert_close(got, err.sum(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_any_float_dtype_is_quantized_in_float32(dtype: torch.dtype) -> None:
    w = random_weight(4, 96, seed=6).to(dtype)
    a, b = quantize(w, QScheme(bits=4)), quantize(w.float(), QScheme(bits=4))
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scales, b.scales)


@pytest.mark.parametrize(
    "w, error, match",
    [
        pytest.param(torch.ones(8), ValueError, r"2-D weight \[N, K\].*got shape \(8,\)", id="1d"),
        pytest.param(torch.ones(2, 3, 4), ValueError, r"2-D weight.*\(2, 3, 4\)", id="3d"),
        pytest.param(torch.ones(0, 4), ValueError, r"empty weight of shape \(0, 4\)", id="empty"),
        pytest.param(torch.ones(2, 4, dtype=torch.int32), ValueError, r"floating-point weight, got torch.int32",
                     id="int"),
        pytest.param(torch.tensor([[1.0, float("nan")]]), ValueError, r"1 NaN/inf values of 2", id="nan"),
        pytest.param(torch.tensor([[float("inf"), 1.0]]), ValueError, r"NaN/inf", id="inf"),
        pytest.param(torch.tensor([[1e5, 1.0]]), ValueError, r"\|w\| up to 100000.*rescale", id="huge"),
        pytest.param([[1.0, 2.0]], ValueError, r"torch.Tensor weight, got list", id="list"),
    ],
)
def test_bad_weights_are_refused_with_a_reason(w: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        quantize(w, QScheme(bits=4))  # type: ignore[arg-type]


def test_a_scheme_is_required() -> None:
    with pytest.raises(ConfigError, match="needs a QScheme, got dict"):
        quantize(torch.ones(2, 2), {"bits": 4})  # type: ignore[arg-type]


def test_relative_error() -> None:
    w = torch.tensor([[3.0, 4.0]])
    assert relative_error(w, torch.tensor([[3.0, 3.0]])) == pytest.approx(1 / 25)
    assert relative_error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0
    assert relative_error(torch.zeros(2, 2), torch.ones(2, 2)) == float("inf")
    with pytest.raises(ValueError, match=r"equal shapes, got \(1, 2\) and \(2, 1\)"):
        relative_error(w, w.T)
