"""Shared helpers of the native-kernel tests: random packed weights and the fp32 error bound."""

from __future__ import annotations

import pytest
import torch

from bitsfusion.kernels import isa, native
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight, expand_groups
from bitsfusion.types import QScheme

needs_native = pytest.mark.skipif(not native.available(),
                                  reason=f"bitsfusion._C not built: {native.unavailable_reason()}")
ISAS = list(isa.supported_isas())
needs_awq = pytest.mark.skipif("input_scale" not in QuantizedWeight.__dataclass_fields__,
                               reason="this PackedWeight has no AWQ input_scale")
# Error of an fp32 kernel against the fp32 reference: both sum K products in different orders, and the
# kernels compute s*sum(x*c) - s*z*sum(x) (two large terms that cancel), so the bound is relative to
# mag = sum_k |x_k| * s * (c + |z|), not to |y|. Random rounding gives ~sqrt(K) * 6e-8 * mag.
REL_TOL = 1e-5


def random_packed(scheme: QScheme, n: int, k: int, seed: int = 0, input_scale: bool = False) -> PackedWeight:
    """Random codes, scales (and zeros) at every precision of ``scheme``; AWQ input_scale when asked."""
    g = torch.Generator().manual_seed(seed)
    groups = scheme.n_groups(k)
    codes = torch.randint(0, scheme.levels, (n, k), generator=g).to(torch.uint8)

    def scale_zero(bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = (torch.rand(n, groups, generator=g) * 0.1 + 0.01).to(torch.float16)
        z = torch.randint(0, 1 << bits, (n, groups), generator=g).to(torch.float16) if scheme.has_zeros else None
        return s, z

    extra = ()
    if input_scale:
        scheme = scheme.replace(calibration="awq")
        extra = ((torch.rand(k, generator=g) * 2 + 0.25).to(torch.float16),)
    scales, zeros = scale_zero(scheme.bits)
    qw = QuantizedWeight(codes, scales, zeros, scheme, {b: scale_zero(b) for b in scheme.nested}, *extra)
    return PackedWeight.from_quantized(qw)


def magnitude_weight(packed: PackedWeight, active_bits: int) -> torch.Tensor:
    """``[N, K]``: ``s * (c + |z|)`` (times ``input_scale``), so ``|x| @ it.T`` scales a kernel's fp32 error."""
    scheme = packed.scheme
    k = packed.shape[1]
    s, z = packed.scale_zero(active_bits)
    zero = (expand_groups(z.float(), k, scheme.group_size).abs() if z is not None
            else scheme.grid.constant_zero(active_bits))
    w = expand_groups(s.float(), k, scheme.group_size) * (packed.codes(active_bits).float() + zero)
    inp = getattr(packed, "input_scale", None)
    return w if inp is None else w * inp.float()


def error_bound(x: torch.Tensor, mag_weight: torch.Tensor) -> torch.Tensor:
    """``[M, N]`` bound on a kernel's error: ``REL_TOL * (|x| @ mag_weight.T) + 1e-6``."""
    return REL_TOL * (x.float().reshape(-1, mag_weight.shape[1]).abs() @ mag_weight.T) + 1e-6


def assert_close(y: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, what: str) -> None:
    """Every element of ``y`` within ``bound`` (``error_bound``) of the reference ``ref``."""
    err = (y.float().reshape(bound.shape) - ref.float().reshape(bound.shape)).abs()
    worst = float((err / bound).max())
    assert worst <= 1.0, f"{what}: error {float(err.max()):.3g} is {worst:.2f}x the bound {REL_TOL} * mag"


@pytest.fixture
def one_torch_thread():
    """Tiny reference matmuls are slowest on a loaded machine with several OpenMP threads: use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
