"""Every native kernel and ISA path against its oracle in ``kernels.reference`` on random, odd-shaped weights.

Oracles and bounds, per kernel path (every ISA path the machine runs: scalar, avx2, avx512):

- ``lut32``, ``dequant`` (fp32 throughout): ``reference.linear``, within ``REL_TOL * |x| @ mag^T``
  (``native_helpers.error_bound``): fp32 summation order only.
- ``lut`` (uint8 tables): ``reference.linear``, within ``reference.lut8_error_bound`` (the worst case of the
  table rounding, half a table step per lookup) plus the fp32 bound.
- ``int8`` (int8 activations): ``reference.linear_int8_activations`` (activations quantised the same way),
  within the fp32 bound of the quantised activations: integer sums are exact, only fp32 epilogues round.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bitsfusion.kernels import dispatch, native, reference
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.types import Grid, QScheme
from tests.kernels.native_helpers import (ISAS, assert_close, error_bound, magnitude_weight, needs_awq,
                                         needs_native, one_torch_thread, random_packed)

pytestmark = needs_native
N, K = 37, 203  # neither a multiple of 8, 16, 32 nor of any group size
ROWS = (1, 3, 8, 9, 14, 64)  # every remainder of the 4-row (AVX2) and 6-row (AVX-512) GEMM tiles
GROUPS = [pytest.param(g, id=f"g{g}" if g else "per-channel") for g in (16, 32, 64, 128, None)]
GRIDS = [pytest.param(g, id=g.value) for g in (Grid.SYMMETRIC, Grid.ASYMMETRIC)]
BITS = [pytest.param(b, id=f"b{b}") for b in range(1, 9)]


def check_kernel(kernel: str, isa: str, x: torch.Tensor, packed, bias, active: int, ref: torch.Tensor,
                 bound: torch.Tensor) -> None:
    """One kernel on one ISA path against its oracle (see the module docstring)."""
    what = f"{kernel}/{isa} b'={active} M={x.shape[0]}"
    y = native.linear(x, packed, bias, active, kernel=kernel, isa=isa)
    if kernel == "int8":
        xq, sx = reference.quantize_activations(x)
        want = reference.linear_int8_activations(x, packed, bias, active)
        assert_close(y, want, error_bound(xq * sx, magnitude_weight(packed, active)), what)
    elif kernel == "lut":
        assert_close(y, ref, bound + reference.lut8_error_bound(x, packed, active).float(), what)
    else:
        assert_close(y, ref, bound, what)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("grid", GRIDS)
def test_every_precision_kernel_and_isa_matches_reference(grid: Grid, bits: int, group: int | None) -> None:
    packed = random_packed(QScheme(bits, group_size=group, grid=grid, nested=tuple(range(1, bits))), N, K,
                           seed=bits)
    kernels = ["lut32", "dequant", "int8"] + (["lut"] if group is None or group % 32 == 0 else [])
    bias = torch.randn(N)
    for active in range(1, bits + 1):
        xs = torch.randn(sum(ROWS), K).split(ROWS)  # one reference product for every M
        x_all = torch.cat(xs)
        refs = F.linear(x_all, reference.dequantized_weight(packed, active, torch.float32), bias).split(ROWS)
        bounds = error_bound(x_all, magnitude_weight(packed, active)).split(ROWS)
        for x, ref, bound in zip(xs, refs, bounds):
            for isa in ISAS:
                for kernel in kernels:
                    check_kernel(kernel, isa, x, packed, bias, active, ref, bound)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("bits", BITS)
def test_int8_gemm_is_exact_at_the_largest_codes_and_activations(bits: int) -> None:
    """Every code at its top value against activations of +-127 after quantisation: the largest integer sums
    the int8 GEMMs form (the AVX2 path sums up to 16 vpmaddubsw steps in int16, sized by the active bits so
    that this case stays below 2^15; its 8-bit path multiplies c - 128). Any saturation shows here as a
    large error; the oracle quantises activations the same way."""
    n, k = 19, 1000
    scheme = QScheme(bits, group_size=None, nested=tuple(range(1, bits)))
    ones = lambda: (torch.full((n, 1), 0.01).half(), None)  # noqa: E731
    codes = torch.full((n, k), scheme.levels - 1, dtype=torch.uint8)
    qw = QuantizedWeight(codes, ones()[0], None, scheme, {b: ones() for b in scheme.nested})
    packed = PackedWeight.from_quantized(qw)
    x = torch.ones(6, k)
    x[1] = -1.0
    x[2, ::2] = -1.0  # alternating signs: pair sums cancel, but the int16 chunks must not wrap either
    x[3, : k // 2] = -1.0
    x[4:] *= 3.0
    for active in range(1, bits + 1):
        for isa in ISAS:
            y = native.linear(x, packed, None, active, kernel="int8", isa=isa)
            want = reference.linear_int8_activations(x, packed, None, active)
            xq, sx = reference.quantize_activations(x)
            assert_close(y, want, error_bound(xq * sx, magnitude_weight(packed, active)),
                         f"int8/{isa} b'={active} at the top code")


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("top", [True, False], ids=["top-codes", "random"])
@pytest.mark.parametrize(("bits", "group"), [(4, None), (4, 64), (5, 32), (3, 128)],
                         ids=["b4-per-channel", "b4-g64", "b5-g32", "b3-g128"])
def test_lut_gemv_at_its_largest_integer_sums(top: bool, bits: int, group: int | None) -> None:
    """The AVX2 LUT8 path sums lookups in u16 (at most 1020 per quartet and lane, two lanes added when widened):
    per plane in chunks of 32 quartets (per channel, K = 4100: 129 quartets, four chunk boundaries), or, when
    (2^b' - 1) x quartets per group <= 32, as the Horner sum over the planes of a group (g64 at 4 bits: 30, g32
    at 5 bits: 31, g128 at 3 bits: 28). With every code at its top and x > 0 every table entry is 255 and the sums
    reach the largest values those bounds allow."""
    n, k = 21, 4100 if group is None else 1000
    scheme = QScheme(bits, group_size=group, nested=tuple(range(1, bits)))
    if top:
        one = lambda: (torch.full((n, scheme.n_groups(k)), 0.01).half(), None)  # noqa: E731
        qw = QuantizedWeight(torch.full((n, k), scheme.levels - 1, dtype=torch.uint8), one()[0], None, scheme,
                             {b: one() for b in scheme.nested})
        packed = PackedWeight.from_quantized(qw)
        x = torch.ones(3, k)
    else:
        packed = random_packed(scheme, n, k, seed=5)
        x = torch.randn(3, k)
    for active in (1, bits):
        ref = reference.linear(x, packed, None, active)
        bound = error_bound(x, magnitude_weight(packed, active))
        for isa in ISAS:
            for m in (1, 2, 3):
                check_kernel("lut", isa, x[:m], packed, None, active, ref[:m], bound[:m])


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("kernel", ["int8", "dequant", "lut"])
def test_many_rows_and_wide_layers(kernel: str) -> None:
    """M = 512 (GEMM tails of the 6-row and 32-column blocks) and K = 1000 with several groups."""
    packed = random_packed(QScheme(4, group_size=64, grid="asymmetric", nested=(2,)), 70, 1000, seed=3)
    m = 8 if kernel == "lut" else 512
    x = torch.randn(m, 1000)
    for active in (2, 4):
        ref = reference.linear(x, packed, None, active)
        bound = error_bound(x, magnitude_weight(packed, active))
        for isa in ISAS:
            check_kernel(kernel, isa, x, packed, None, active, ref, bound)


def test_int8_table_error_is_small_against_the_output() -> None:
    """The fast default GEMV's uint8 tables: typical error ~0.3% of |y| on Gaussian data (docs/KERNELS.md)."""
    packed = random_packed(QScheme(4, group_size=64, nested=(2,)), 256, 1024, seed=5)
    x = torch.randn(4, 1024)
    for active in (2, 4):
        y = native.linear(x, packed, None, active, kernel="lut")
        ref = reference.linear(x, packed, None, active)
        rel = float((y - ref).norm() / ref.norm())
        assert rel < 0.01, rel
        assert float((y - ref).abs().max()) <= float(reference.lut8_error_bound(x, packed, active).max())


@needs_awq
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("m", [1, 9], ids=["gemv", "gemm"])
def test_awq_input_scale_is_applied_to_activations(isa: str, m: int) -> None:
    packed = random_packed(QScheme(4, group_size=64, grid="asymmetric", nested=(2,)), 45, 131, input_scale=True)
    assert packed.input_scale is not None
    x = torch.randn(2, m, 131)
    for active in (2, 4):
        for kernel in ("lut32", "dequant"):
            y = native.linear(x, packed, None, active, kernel=kernel, isa=isa)
            assert y.shape == (2, m, 45)
            ref = reference.linear(x, packed, None, active)
            assert_close(y, ref, error_bound(x, magnitude_weight(packed, active)), f"awq {kernel} {isa}")
        y = native.linear(x, packed, None, active, kernel="lut", isa=isa)
        bound = error_bound(x, magnitude_weight(packed, active)) + reference.lut8_error_bound(x, packed, active)
        assert_close(y, reference.linear(x, packed, None, active), bound.float(), f"awq lut {isa}")
        y = native.linear(x, packed, None, active, kernel="int8", isa=isa)
        xq, sx = reference.quantize_activations(x, packed.input_scale)
        bound = error_bound(xq * sx / packed.input_scale.float(), magnitude_weight(packed, active))
        assert_close(y, reference.linear_int8_activations(x, packed, None, active), bound, f"awq int8 {isa}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_are_computed_in_fp32_and_cast_back(dtype: torch.dtype) -> None:
    packed = random_packed(QScheme(3, group_size=32), 20, 70)
    x = torch.randn(5, 70).to(dtype)
    y = dispatch.linear(x, packed)
    assert y.dtype == dtype
    exact = reference.linear(x.float(), packed)
    assert torch.allclose(y.float(), exact, rtol=1e-2, atol=1e-2 * float(exact.abs().max()))


def test_dispatch_picks_by_rows_and_exactness() -> None:
    packed = random_packed(QScheme(2, group_size=64), 16, 64)
    assert dispatch.choose_kernel(torch.randn(2, 2, 64), packed)[0] == "lut"  # 4 rows
    assert dispatch.choose_kernel(torch.randn(5, 64), packed)[0] == "int8"
    assert dispatch.choose_kernel(torch.randn(2, 64), packed, exact=True)[0] == "lut32"
    assert dispatch.choose_kernel(torch.randn(9, 64), packed, exact=True)[0] == "dequant"
    assert dispatch.choose_kernel(torch.randn(1, 64), packed, kernel="dequant") == ("dequant", "requested")
    odd = random_packed(QScheme(2, group_size=16), 16, 64)  # groups of 16: no uint8 tables
    kernel, why = dispatch.choose_kernel(torch.randn(1, 64), odd)
    assert kernel == "lut32" and "multiple of 32" in why


def test_kernel_env_var_overrides_the_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    packed = random_packed(QScheme(3, group_size=32), 20, 70)
    x = torch.randn(2, 70)
    for name in ("lut", "lut32", "int8", "dequant", "reference"):
        monkeypatch.setenv("BITSFUSION_KERNEL", name)
        assert dispatch.choose_kernel(x, packed) == (name, "requested")
    monkeypatch.setenv("BITSFUSION_KERNEL", "reference")
    assert torch.equal(dispatch.linear(x, packed), reference.linear(x, packed))


def test_isa_env_var_forces_each_path(monkeypatch: pytest.MonkeyPatch) -> None:
    packed = random_packed(QScheme(4, group_size=32, nested=(1, 2)), 33, 99)
    x = torch.randn(3, 99)
    ref = reference.linear(x, packed, None, 2)
    for isa in ISAS:
        monkeypatch.setenv("BITSFUSION_ISA", isa)
        assert dispatch.describe()["isa"] == isa
        y = dispatch.linear(x, packed, None, 2, exact=True)
        assert_close(y, ref, error_bound(x, magnitude_weight(packed, 2)), isa)


@pytest.mark.parametrize("kernel", ["lut", "lut32", "int8", "dequant"])
def test_thread_count_does_not_change_results(kernel: str) -> None:
    packed = random_packed(QScheme(4, group_size=64), 512, 1000)  # large enough to run on several threads
    x = torch.randn(4 if kernel.startswith("lut") else 40, 1000)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native.linear(x, packed, kernel=kernel)
        torch.set_num_threads(3)
        three = native.linear(x, packed, kernel=kernel)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kernel", ["lut", "int8"])
def test_scratch_reused_across_calls_carries_nothing_over(kernel: str, isa: str) -> None:
    """The integer kernels keep their scratch block per calling thread between calls (no page faults per call):
    a call after a larger or differently shaped one gives exactly what it gives first in a fresh order."""
    small = random_packed(QScheme(3, group_size=32, grid=Grid.ASYMMETRIC), 45, 203, seed=1)
    big = random_packed(QScheme(4, group_size=64), 300, 1000, seed=2)
    rows = 4 if kernel == "lut" else 40
    xs, xb = torch.randn(rows, 203), torch.randn(3 * rows, 1000)
    run = lambda x, p: native.linear(x, p, kernel=kernel, isa=isa)  # noqa: E731
    first = run(xs, small)
    run(xb, big)  # grows the block and fills it with other data
    run(xs[:1], small)
    assert torch.equal(run(xs, small), first)
    assert torch.equal(run(xb, big), run(xb, big))
