"""GELU fused into the native kernels' stores (``activation="gelu"``), every kernel and ISA path.

Oracle: ``F.gelu`` of each kernel's own oracle (``test_native.check_kernel``), within GELU's Lipschitz
constant (1.13) times that kernel's bound plus the erf approximation's error (3.6e-7, times |y| / 2).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitsfusion.errors import ConfigError
from bitsfusion.kernels import dispatch, isa, native, reference
from bitsfusion.types import QScheme
from tests.kernels.native_helpers import (ISAS, assert_close, error_bound, magnitude_weight, needs_native,
                                         one_torch_thread, random_packed)

pytestmark = needs_native
LIPSCHITZ = 1.13  # max |d gelu / dx|


def approx_bound(y: torch.Tensor) -> torch.Tensor:
    """The fused GELU's own error on top of the pre-activation's: 0.5 |y| * 3.6e-7 erf error, fp32 rounding."""
    return 4e-7 * y.abs() + 1e-6


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kernel", ["lut", "lut32", "int8", "dequant"])
@pytest.mark.parametrize(("n", "k", "rows"), [(37, 203, (1, 3)), (37, 203, (9, 64)), (70, 1000, (4, 130))],
                         ids=["odd-gemv", "odd-gemm", "wide"])
def test_gelu_is_applied_by_every_kernel_and_isa(kernel: str, n: int, k: int, rows: tuple[int, ...]) -> None:
    group = None if kernel == "lut" and k % 32 else 64
    packed = random_packed(QScheme(4, group_size=group, grid="asymmetric", nested=(2,)), n, k, seed=k)
    bias = torch.randn(n)
    for m in rows:
        if kernel in ("lut", "lut32") and m > 8:
            continue
        x = torch.randn(m, k) * 3  # pre-activations of both signs, well past the erf clamp at |y| = 4 sqrt 2
        for active in (4, 2):
            if kernel == "int8":
                xq, sx = reference.quantize_activations(x)
                pre = reference.linear_int8_activations(x, packed, bias, active)
                bound = error_bound(xq * sx, magnitude_weight(packed, active))
            else:
                pre = reference.linear(x, packed, bias, active)
                bound = error_bound(x, magnitude_weight(packed, active))
                if kernel == "lut":
                    bound = bound + reference.lut8_error_bound(x, packed, active).float()
            for path in ISAS:
                y = native.linear(x, packed, bias, active, kernel=kernel, isa=path, activation="gelu")
                assert_close(y, F.gelu(pre), LIPSCHITZ * bound + approx_bound(pre),
                             f"gelu {kernel}/{path} b'={active} M={m}")


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("path", ISAS)
def test_fused_gelu_matches_torch_on_the_kernels_own_output(path: str) -> None:
    """Same kernel with and without the activation: only the erf approximation differs, over |y| up to ~40."""
    packed = random_packed(QScheme(4, group_size=64), 96, 256, seed=5)
    x = torch.randn(64, 256) * torch.logspace(-2, 1, 64)[:, None]  # rows of small to large pre-activations
    for kernel in ("int8", "dequant"):
        pre = native.linear(x, packed, None, 4, kernel=kernel, isa=path)
        y = native.linear(x, packed, None, 4, kernel=kernel, isa=path, activation="gelu")
        assert float(pre.abs().max()) > 8
        assert_close(y, F.gelu(pre), approx_bound(pre), f"gelu approximation {kernel}/{path}")


def test_dispatch_applies_the_activation_on_every_route() -> None:
    packed = random_packed(QScheme(4, group_size=64), 48, 128, seed=2)
    bias = torch.randn(48)
    x = torch.randn(5, 128)
    want = F.gelu(reference.linear(x, packed, bias, 4))
    tol = dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dispatch.linear(x, packed, bias, 4, kernel="dequant", activation="gelu"), want, **tol)
    torch.testing.assert_close(dispatch.linear(x, packed, bias, 4, kernel="reference", activation="gelu"), want,
                               **tol)
    xg = x.clone().requires_grad_(True)  # autograd: the reference path
    yg = dispatch.linear(xg, packed, bias, 4, activation="gelu")
    torch.testing.assert_close(yg.detach(), want, **tol)
    yg.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    b = torch.nn.Parameter(bias.clone())  # a bias that wants a gradient: native product, autograd adds the bias
    torch.testing.assert_close(dispatch.linear(x, packed, b, 4, kernel="dequant", activation="gelu").detach(),
                               want, **tol)
    half = dispatch.linear(x.half(), packed, bias, 4, kernel="dequant", activation="gelu")  # the checked path
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), want, rtol=1e-2, atol=1e-2)


def test_an_unknown_activation_is_refused_with_the_choices() -> None:
    packed = random_packed(QScheme(4, group_size=64), 16, 64)
    x = torch.randn(2, 64)
    for kernel in (None, "reference", "int8"):
        with pytest.raises(ConfigError, match="'relu6'.*gelu"):
            dispatch.linear(x, packed, None, 4, kernel=kernel, activation="relu6")
    with pytest.raises(ConfigError, match="'tanh'"):
        native.linear(x, packed, None, 4, activation="tanh")


def test_the_extension_refuses_an_act_code_it_does_not_know() -> None:
    packed = random_packed(QScheme(4, group_size=64), 16, 64)
    from bitsfusion.kernels.repack import kernel_weight

    kw = kernel_weight(packed)
    sp, szp, *_ = kw.pointers(packed, 4)
    x, y = torch.randn(2, 64), torch.empty(2, 16)
    with pytest.raises(ValueError, match="act must be"):
        isa.NATIVE.linear_raw(x.data_ptr(), 2, 64, kw.planes.data_ptr(), kw.bits, sp, szp, kw.n_groups, 0, 0,
                              y.data_ptr(), 16, 4, kw.group_kb, 1, 0, 1, 0, 0, 7)
