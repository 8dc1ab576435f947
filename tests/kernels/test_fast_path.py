"""The per-call fast path of ``dispatch.linear`` (``native.fast_linear``): its per-weight cache must follow
in-place writes to the weight's tensors, and it must hand every other call to the checked path."""

from __future__ import annotations

import pytest
import torch

from bitsfusion.kernels import dispatch, native, reference
from bitsfusion.types import QScheme
from tests.kernels.native_helpers import random_packed

pytestmark = pytest.mark.skipif(not native.available(), reason="bitsfusion._C not built")


@pytest.mark.parametrize("rows", [1, 16])
def test_in_place_writes_to_scales_and_codes_are_seen(rows):
    scheme = QScheme(4, group_size=64, nested=(2,))
    p = random_packed(scheme, 40, 128, seed=3)
    x = torch.randn(rows, 128)
    y0 = dispatch.linear(x, p, None, 4)
    assert native.fast_linear(x, p, None, 4, "auto", False, dispatch.LUT_MAX_ROWS) is not None
    p.scale_zero(4)[0].mul_(2)  # bumps the version counter: new fp32 scales
    y1 = dispatch.linear(x, p, None, 4)
    torch.testing.assert_close(y1, 2 * y0, rtol=1e-4, atol=1e-4)
    p.qweight.zero_()  # every code 0: the output is the zero-point term alone
    y2 = dispatch.linear(x, p, None, 4, kernel="lut32" if rows == 1 else "dequant")
    torch.testing.assert_close(y2, reference.linear(x, p, None, 4), rtol=1e-4, atol=1e-4)
    # the other precision has its own entry
    torch.testing.assert_close(dispatch.linear(x, p, None, 2, kernel="dequant"), reference.linear(x, p, None, 2),
                               rtol=1e-4, atol=1e-4)


def test_other_calls_take_the_checked_path():
    p = random_packed(QScheme(4, group_size=64), 32, 64)
    x = torch.randn(3, 64)
    fast = lambda *a: native.fast_linear(*a, "auto", False, dispatch.LUT_MAX_ROWS)  # noqa: E731
    assert fast(x, p, None, 4) is not None
    assert fast(x.half(), p, None, 4) is None
    assert fast(torch.randn(64, 3).t(), p, None, 4) is None  # not contiguous
    assert fast(x, p, torch.randn(32).half(), 4) is None
    assert fast(x, p, torch.randn(31), 4) is None
    assert fast(x, p, None, 3) is None  # a precision it does not store: the checked path raises
    with pytest.raises(Exception):
        dispatch.linear(x, p, None, 3)
    xg = x.clone().requires_grad_()
    assert fast(xg, p, None, 4) is None
    y = dispatch.linear(xg, p, None, 4)
    assert y.requires_grad  # the reference, with autograd
    bias = torch.nn.Parameter(torch.randn(32))
    with torch.no_grad():
        torch.testing.assert_close(fast(x, p, bias, 4), dispatch.linear(x, p, bias, 4, kernel="lut"))


def test_storage_swapped_under_the_same_tensor_is_seen():
    """``t.data = u`` changes a tensor's storage without bumping its version: the entry checks the address."""
    p = random_packed(QScheme(4, group_size=64), 24, 64, seed=5)
    q = random_packed(QScheme(4, group_size=64), 24, 64, seed=6)
    x = torch.randn(8, 64)
    dispatch.linear(x, p, None, 4)
    p.qweight.data = q.qweight.clone()
    p.scales.data = q.scales.clone()
    if p.zeros is not None:
        p.zeros.data = q.zeros.clone()
    torch.testing.assert_close(dispatch.linear(x, p, None, 4, kernel="dequant"), reference.linear(x, p, None, 4),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [1, 16])
def test_a_bias_that_needs_a_gradient_stays_native(rows, monkeypatch):
    """Outside ``no_grad`` (a trainable bias): the product runs natively and autograd adds the bias."""
    p = random_packed(QScheme(3, group_size=32), 48, 96, seed=7)
    bias = torch.nn.Parameter(torch.randn(48))
    x = torch.randn(rows, 96)
    with torch.no_grad():
        want = dispatch.linear(x, p, bias, 3)

    def no_reference(*a, **k):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(reference, "linear", no_reference)
    y = dispatch.linear(x, p, bias, 3)
    assert y.requires_grad
    torch.testing.assert_close(y.detach(), want)
    y.sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((48,), float(rows)))
    assert dispatch.choose_kernel(x, p, bias=bias)[0] != "reference"
