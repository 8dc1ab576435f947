"""Every native kernel and ISA path against ``kernels.reference`` on random, odd-shaped weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitsfusion.kernels import dispatch, native, reference
from bitsfusion.types import Grid, QScheme
from tests.kernels.native_helpers import (ISAS, assert_close, error_bound, magnitude_weight, needs_awq,
                                         needs_native, one_torch_thread, random_packed)

pytestmark = needs_native
N, K = 37, 203  # neither a multiple of 8, 16, 32 nor of any group size
ROWS = (1, 3, 8, 9, 64)
GROUPS = [pytest.param(g, id=f"g{g}" if g else "per-channel") for g in (32, 64, 128, None)]
GRIDS = [pytest.param(g, id=g.value) for g in (Grid.SYMMETRIC, Grid.ASYMMETRIC)]
BITS = [pytest.param(b, id=f"b{b}") for b in range(1, 9)]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS)
def test_every_precision_kernel_and_isa_matches_reference(grid: Grid, bits: int, group: int | None) -> None:
    packed = random_packed(QScheme(bits, group_size=group, grid=grid, nested=tuple(range(1, bits))), N, K,
                           seed=bits)
    bias = torch.randn(N)
    for active in range(1, bits + 1):
        xs = torch.randn(sum(ROWS), K).split(ROWS)  # one reference product for every M
        x_all = torch.cat(xs)
        refs = F.linear(x_all, reference.dequantized_weight(packed, active, torch.float32), bias).split(ROWS)
        bounds = error_bound(x_all, magnitude_weight(packed, active)).split(ROWS)
        for x, ref, bound in zip(xs, refs, bounds):
            for isa in ISAS:
                for kernel in ("lut", "dequant"):
                    y = native.linear(x, packed, bias, active, kernel=kernel, isa=isa)
                    assert_close(y, ref, bound, f"{kernel}/{isa} b'={active} M={x.shape[0]}")


@needs_awq
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 9], ids=["gemv", "gemm"])
def test_awq_input_scale_is_applied_to_activations(isa: str, m: int) -> None:
    packed = random_packed(QScheme(4, group_size=64, grid="asymmetric", nested=(2,)), 45, 131, input_scale=True)
    assert packed.input_scale is not None
    x = torch.randn(2, m, 131)
    for active in (2, 4):
        y = native.linear(x, packed, None, active, isa=isa)
        assert y.shape == (2, m, 45)
        ref = reference.linear(x, packed, None, active)
        assert_close(y, ref, error_bound(x, magnitude_weight(packed, active)), f"awq {isa}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_are_computed_in_fp32_and_cast_back(dtype: torch.dtype) -> None:
    packed = random_packed(QScheme(3, group_size=32), 20, 70)
    x = torch.randn(5, 70).to(dtype)
    y = dispatch.linear(x, packed)
    assert y.dtype == dtype
    exact = reference.linear(x.float(), packed)
    assert torch.allclose(y.float(), exact, rtol=1e-2, atol=1e-2 * float(exact.abs().max()))


def test_dispatch_picks_lut_for_few_rows_and_dequant_for_many() -> None:
    packed = random_packed(QScheme(2, group_size=64), 16, 64)
    assert dispatch.choose_kernel(torch.randn(2, 4, 64), packed)[0] == "lut"
    assert dispatch.choose_kernel(torch.randn(3, 3, 64), packed)[0] == "dequant"
    assert dispatch.choose_kernel(torch.randn(1, 64), packed, kernel="dequant") == ("dequant", "requested")


def test_isa_env_var_forces_each_path(monkeypatch: pytest.MonkeyPatch) -> None:
    packed = random_packed(QScheme(4, group_size=32, nested=(1, 2)), 33, 99)
    x = torch.randn(3, 99)
    ref = reference.linear(x, packed, None, 2)
    for isa in ISAS:
        monkeypatch.setenv("BITSFUSION_ISA", isa)
        assert dispatch.describe()["isa"] == isa
        assert_close(dispatch.linear(x, packed, None, 2), ref, error_bound(x, magnitude_weight(packed, 2)), isa)


def test_thread_count_does_not_change_results() -> None:
    packed = random_packed(QScheme(4, group_size=64), 512, 1000)  # large enough to run on several threads
    x = torch.randn(4, 1000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.linear(x, packed)
        torch.set_num_threads(3)
        three = native.linear(x, packed)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)
