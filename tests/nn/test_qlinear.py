"""QLinear: accuracy against nn.Linear per grid and bit width, exact nested switching, odd shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitsfusion.kernels import reference
from bitsfusion.nn import QLinear
from bitsfusion.types import Grid, QScheme
from tests.conftest import GRID_BITS
from tests.nn.conftest import rel_err

# Upper bounds on the squared relative output error ||y_q - y||^2 / ||y||^2 of a [96, 100] Linear
# (N(0,1) weights, group 64 so each row has a 36-weight tail group, N(0,1) inputs), per bit width.
# Each is about 2-3x the worst grid measured at that width (see the final report for the numbers).
MAX_REL_ERR = {1: 0.75, 2: 0.25, 3: 0.06, 4: 0.015, 5: 4e-3, 6: 1e-3, 7: 2.5e-4, 8: 6e-5}


@pytest.fixture(autouse=True)
def _reference_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check the module's arithmetic against the exactly dequantised weight, so they run the
    reference kernel (the native kernels are checked against it in tests/kernels)."""
    monkeypatch.setenv("BITSFUSION_KERNEL", "reference")


def _linear(n: int = 96, k: int = 100, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.normal_()
        if bias:
            layer.bias.normal_()
    return layer


def _err_without_bias(q: QLinear, layer: nn.Linear, x: torch.Tensor) -> float:
    return rel_err(q(x) - q.bias, layer(x) - layer.bias)


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_output_error_is_bounded_per_bit_width(grid: Grid, bits: int) -> None:
    layer = _linear()
    q = QLinear.from_float(layer, QScheme(bits, group_size=64, grid=grid))
    x = torch.randn(32, 100)
    assert _err_without_bias(q, layer, x) < MAX_REL_ERR[bits]
    assert q.weight_error is not None and 0 < q.weight_error < MAX_REL_ERR[bits]
    torch.testing.assert_close(q.bias, layer.bias, rtol=0, atol=0)


@pytest.mark.parametrize("grid", [Grid.SYMMETRIC, Grid.ASYMMETRIC, Grid.BALANCED], ids=lambda g: g.value)
def test_error_grows_as_bits_shrink(grid: Grid) -> None:
    layer = _linear()
    x = torch.randn(32, 100)
    errs = [_err_without_bias(QLinear.from_float(layer, QScheme(b, grid=grid)), layer, x) for b in (2, 4, 6)]
    assert errs[0] > errs[1] > errs[2], errs


def test_eight_bits_matches_float_closely() -> None:
    """At 8 bits (symmetric, group 64) the output is within 40 dB of the float layer's."""
    layer = _linear()
    x = torch.randn(16, 100)
    q = QLinear.from_float(layer, QScheme(8))
    assert rel_err(q(x), layer(x)) < 1e-4


@pytest.mark.parametrize(
    "n, k, group",
    [
        pytest.param(1, 1, 64, id="1x1"),
        pytest.param(3, 7, 64, id="K<group"),
        pytest.param(5, 65, 64, id="K=group+1"),
        pytest.param(4, 130, 32, id="tail2"),
        pytest.param(6, 50, None, id="per-channel"),
        pytest.param(2, 9, 1, id="group1"),
    ],
)
def test_odd_shapes_run_the_reference_kernel(n: int, k: int, group: int | None) -> None:
    layer = _linear(n, k)
    q = QLinear.from_float(layer, QScheme(4, group_size=group))
    x = torch.randn(2, 3, k)
    y = q(x)
    assert y.shape == (2, 3, n)
    torch.testing.assert_close(y, F.linear(x, q.packed.dequantize(), q.bias), rtol=0, atol=0)


@pytest.mark.parametrize("grid", [Grid.SYMMETRIC, Grid.ASYMMETRIC], ids=lambda g: g.value)
def test_switching_active_bits_gives_the_truncated_reference_and_touches_no_buffer(grid: Grid) -> None:
    layer = _linear(24, 80)
    q = QLinear.from_float(layer, QScheme(6, group_size=32, grid=grid, nested=(2, 3, 4)))
    before = {name: (b.data_ptr(), b.clone()) for name, b in q.named_buffers()}
    x = torch.randn(5, 80)
    outputs = {}
    for bits in (2, 6, 3, 4, 2):
        q.set_active_bits(bits)
        assert q.active_bits == bits
        outputs[bits] = q(x)
        want = F.linear(x, q.packed.dequantize(bits), q.bias)
        torch.testing.assert_close(outputs[bits], want, rtol=0, atol=0)
        torch.testing.assert_close(outputs[bits], reference.linear(x, q.packed, q.bias, bits), rtol=0, atol=0)
    for name, b in q.named_buffers():
        assert b.data_ptr() == before[name][0]
        assert torch.equal(b, before[name][1])
    errs = [_err_without_bias_at(q, layer, x, b) for b in (2, 3, 4, 6)]
    assert errs == sorted(errs, reverse=True), errs


def _err_without_bias_at(q: QLinear, layer: nn.Linear, x: torch.Tensor, bits: int) -> float:
    q.set_active_bits(bits)
    return _err_without_bias(q, layer, x)


def test_no_bias_and_low_precision_inputs() -> None:
    layer = _linear(8, 40, bias=False)
    q = QLinear.from_float(layer, QScheme(4, group_size=16))
    assert q.bias is None and "bias" not in dict(q.named_parameters())
    x = torch.randn(3, 40)
    y16 = q(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    assert rel_err(y16, q(x)) < 1e-3


def test_extra_repr_shows_scheme_and_active_bits() -> None:
    q = QLinear.from_float(_linear(4, 16), QScheme(4, group_size=16, nested=(2,)))
    q.set_active_bits(2)
    text = repr(q)
    assert "in_features=16, out_features=4" in text
    assert f"scheme={q.scheme}" in text and "active_bits=2" in text
