"""The reference kernels against the maths written out by hand (codes built directly, no quantizer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.errors import ConfigError
from bitsfusion.kernels import reference
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.types import Grid, QScheme
from tests.conftest import GRID_BITS
from tests.kernels import native_helpers


def random_packed(scheme: QScheme, n: int, k: int, seed: int = 0) -> tuple[PackedWeight, torch.Tensor]:
    """``native_helpers.random_packed``'s weight, and its codes ``[N, K]`` (int64) for hand maths."""
    packed = native_helpers.random_packed(scheme, n, k, seed)
    return packed, packed.codes().to(torch.int64)


def hand_weight(packed: PackedWeight, codes: torch.Tensor, bits: int) -> torch.Tensor:
    """``scale_b[n, k // G] * ((codes >> (B - b)) - zero_b[n, k // G])`` in float64, written out."""
    scheme = packed.scheme
    n, k = packed.shape
    scales, zeros = (packed.scales, packed.zeros) if bits == scheme.bits else packed.nested[bits]
    group = torch.arange(k) // (scheme.group_size or k)
    s = scales.to(torch.float64)[:, group]
    if zeros is not None:
        z = zeros.to(torch.float64)[:, group]
    elif scheme.grid is Grid.SYMMETRIC:
        z = torch.full((n, k), 2.0 ** (bits - 1) - 0.5, dtype=torch.float64)
    else:
        z = torch.full((n, k), 2.0 ** (bits - 1), dtype=torch.float64)
    c = codes >> (scheme.bits - bits) if scheme.grid.nests else codes
    return s * (c.to(torch.float64) - z)


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_linear_is_the_hand_written_maths_on_every_grid(grid: Grid, bits: int) -> None:
    scheme = QScheme(bits, group_size=16, grid=grid)
    packed, codes = random_packed(scheme, 5, 37)  # K = 37: the last group holds 5 weights
    x = torch.randn(3, 4, 37, dtype=torch.float64)
    bias = torch.randn(5)
    want = x @ hand_weight(packed, codes, bits).T + bias.to(torch.float64)
    got = reference.linear(x, packed, bias)
    assert got.dtype == torch.float64 and got.shape == (3, 4, 5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grid", [Grid.SYMMETRIC, Grid.ASYMMETRIC], ids=lambda g: g.value)
@pytest.mark.parametrize("active", [1, 2, 3, 5], ids=lambda b: f"active{b}")
def test_linear_at_a_nested_precision_reads_only_the_top_planes(grid: Grid, active: int) -> None:
    scheme = QScheme(6, group_size=8, grid=grid, nested=(1, 2, 3, 5))
    packed, codes = random_packed(scheme, 7, 20, seed=active)
    x = torch.randn(2, 20, dtype=torch.float64)
    want = x @ hand_weight(packed, codes, active).T
    torch.testing.assert_close(reference.linear(x, packed, None, active), want, rtol=1e-6, atol=1e-6)


def test_docstring_worked_example() -> None:
    """A 4-bit symmetric code 11 run at 2 bits keeps 0b10 = 2; scale 0.5, zero 1.5 -> 0.25."""
    scheme = QScheme(4, group_size=None, nested=(2,))
    qw = QuantizedWeight(
        torch.tensor([[11]], dtype=torch.uint8), torch.tensor([[1.0]], dtype=torch.float16), None, scheme,
        {2: (torch.tensor([[0.5]], dtype=torch.float16), None)},
    )
    y = reference.linear(torch.ones(1, 1), PackedWeight.from_quantized(qw), None, 2)
    assert y.item() == 0.25


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_linear_runs_in_the_input_dtype(dtype: torch.dtype) -> None:
    """The weight is dequantised in float32 and cast once to x's dtype; bias follows x's dtype."""
    packed, _ = random_packed(QScheme(4, group_size=32), 6, 64)
    x = torch.randn(3, 64).to(dtype)
    bias = torch.randn(6)
    y = reference.linear(x, packed, bias)
    assert y.dtype == dtype
    want = F.linear(x, packed.dequantize(dtype=torch.float32).to(dtype), bias.to(dtype))
    torch.testing.assert_close(y, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "cin, cout, kernel, stride, padding, dilation, groups",
    [
        pytest.param(3, 8, (3, 3), 1, 1, 1, 1, id="3x3-pad1"),
        pytest.param(4, 6, (2, 3), 2, 0, 1, 2, id="2x3-stride2-groups2"),
        pytest.param(6, 6, (3, 3), 1, "same", 2, 6, id="depthwise-same-dilation2"),
        pytest.param(5, 4, (1, 1), 1, "valid", 1, 1, id="1x1-valid"),
        pytest.param(4, 4, (4, 4), 1, "same", 1, 1, id="even-kernel-same"),
    ],
)
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_conv2d_is_f_conv2d_of_the_hand_weight(cin, cout, kernel, stride, padding, dilation, groups) -> None:
    k = cin // groups * kernel[0] * kernel[1]
    packed, codes = random_packed(QScheme(3, group_size=8, grid=Grid.ASYMMETRIC), cout, k)
    shape = (cout, cin // groups, *kernel)
    x = torch.randn(2, cin, 9, 11, dtype=torch.float64)
    bias = torch.randn(cout)
    want = F.conv2d(x, hand_weight(packed, codes, 3).view(shape), bias.double(), stride, padding, dilation, groups)
    got = reference.conv2d(x, packed, bias, None, shape, stride, padding, dilation, groups)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_shape_errors_name_the_fix() -> None:
    packed, _ = random_packed(QScheme(2), 4, 12)
    with pytest.raises(ConfigError, match="takes 12"):
        reference.linear(torch.randn(2, 13), packed)
    with pytest.raises(ConfigError, match=r"in/groups \* kh \* kw = 12"):
        reference.conv2d(torch.randn(1, 3, 5, 5), packed, None, None, (4, 3, 3, 3))
    with pytest.raises(ConfigError, match=r"can run at \[2\] bits"):
        reference.linear(torch.randn(2, 12), packed, None, 1)


@settings(max_examples=25, deadline=None)
@given(
    bits=st.integers(1, 8),
    n=st.integers(1, 9),
    k=st.integers(1, 70),
    group=st.sampled_from([None, 1, 7, 32]),
    seed=st.integers(0, 2**16),
)
def test_linear_matches_hand_maths_on_random_shapes(bits: int, n: int, k: int, group: int | None, seed: int) -> None:
    scheme = QScheme(bits, group_size=group, nested=tuple(range(1, bits)))
    packed, codes = random_packed(scheme, n, k, seed)
    x = torch.randn(3, k, dtype=torch.float64)
    for active in scheme.precisions:
        want = x @ hand_weight(packed, codes, active).T
        torch.testing.assert_close(reference.linear(x, packed, None, active), want, rtol=1e-6, atol=1e-6)


def with_input_scale(packed: PackedWeight, seed: int = 0) -> tuple[PackedWeight, torch.Tensor]:
    """The same codes and scales under the scheme's AWQ twin, with random factors ``[K]`` (float16)."""
    k = packed.shape[1]
    factors = (torch.rand(k, generator=torch.Generator().manual_seed(seed)) * 3 + 0.1).half()
    qw = packed.to_quantized()
    scheme = packed.scheme.replace(calibration="awq")
    awq = QuantizedWeight(qw.codes, qw.scales, qw.zeros, scheme, qw.nested, input_scale=factors)
    return PackedWeight.from_quantized(awq), factors.to(torch.float64)


@pytest.mark.parametrize("active", [2, 4], ids=lambda b: f"active{b}")
@pytest.mark.parametrize("grid", [Grid.SYMMETRIC, Grid.ASYMMETRIC], ids=lambda g: g.value)
def test_linear_with_input_scale_scales_the_input(grid: Grid, active: int) -> None:
    """``x @ W'^T == (x * input_scale) @ (scale * (code - zero))^T`` at every stored precision."""
    packed, codes = random_packed(QScheme(4, group_size=8, grid=grid, nested=(2,)), 6, 30)
    awq, factors = with_input_scale(packed)
    x = torch.randn(3, 30, dtype=torch.float64)
    want = (x * factors) @ hand_weight(packed, codes, active).T
    torch.testing.assert_close(reference.linear(x, awq, None, active), want, rtol=1e-6, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
def test_conv2d_with_input_scale_scales_the_im2col_columns() -> None:
    """One factor per (channel, kh, kw) column: scale the unfolded patches, then multiply."""
    cin, cout, kernel = 3, 5, (2, 3)
    k = cin * kernel[0] * kernel[1]
    packed, codes = random_packed(QScheme(3, group_size=4, grid=Grid.ASYMMETRIC), cout, k)
    awq, factors = with_input_scale(packed, seed=1)
    x = torch.randn(2, cin, 7, 8, dtype=torch.float64)
    patches = F.unfold(x, kernel, padding=(1, 0), stride=(2, 1))  # [B, K, L]
    out = (hand_weight(packed, codes, 3) @ (patches * factors[:, None])).view(2, cout, 4, 6)
    got = reference.conv2d(x, awq, None, None, (cout, cin, *kernel), (2, 1), (1, 0))
    torch.testing.assert_close(got, out, rtol=1e-6, atol=1e-6)
