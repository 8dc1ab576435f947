"""The output-aware refit of scales and zeros: closed form, never worse per row, optimal, float16, safe."""

from __future__ import annotations

import pytest
import torch

from bitsfusion.quant import quantize
from bitsfusion.quant.codes import dequantize_codes
from bitsfusion.quant.grids import GridSpec
from bitsfusion.quant.refit import refit_params, row_output_error
from bitsfusion.types import Grid, QScheme
from tests.quant.conftest import anisotropic_hessian, random_weight

GRIDS = [pytest.param(g, id=g.value) for g in Grid]
SHAPES = [pytest.param((16, 200, 64), id="16x200-g64-tail8"), pytest.param((9, 96, 96), id="9x96-per-channel"),
          pytest.param((5, 130, 32), id="5x130-g32-tail2")]


def _rtn(w: torch.Tensor, bits: int, grid: Grid, group: int):
    qw = quantize(w, QScheme(bits, group if group < w.shape[1] else None, grid))
    zeros = None if qw.zeros is None else qw.zeros.float()
    return qw.codes, qw.scales.float(), zeros, qw.dequantize()


def test_docstring_example_is_ordinary_least_squares() -> None:
    w = torch.tensor([[0.1, 0.4, 0.6, 1.0]])
    codes = torch.tensor([[0, 1, 2, 3]])
    spec = GridSpec(Grid.ASYMMETRIC, 2)
    s, z = refit_params(w, codes, torch.tensor([[0.3]]), torch.tensor([[0.0]]), spec, 4, torch.eye(4))
    assert float(s) == pytest.approx(0.29, abs=1e-3)
    assert float(z) == pytest.approx(-0.09 / 0.29, abs=2e-3)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [pytest.param(b, id=f"b{b}") for b in (1, 2, 3)])
@pytest.mark.parametrize("shape", SHAPES)
def test_no_row_gets_worse_and_most_improve(shape, bits: int, grid: Grid) -> None:
    n, k, group = shape
    w = random_weight(n, k, seed=bits, dist="student_t")
    h = anisotropic_hessian(k).double()
    codes, scales, zeros, old_hat = _rtn(w, bits, grid, group)
    spec = GridSpec(grid, bits)
    s, z = refit_params(w, codes, scales, zeros, spec, min(group, k), h)
    assert s.shape == scales.shape and (z is None) == (zeros is None)
    assert torch.equal(s, s.half().float()), "scales must be float16-representable"
    assert (s > 0).all()
    if z is not None:
        assert torch.equal(z, z.half().float())
    scheme = QScheme(bits, group if group < k else None, grid)  # dequantize through the stored format
    hat = dequantize_codes(codes, s.half(), None if z is None else z.half(), scheme)
    before, after = row_output_error(w, old_hat, h), row_output_error(w, hat, h)
    assert (after <= before * (1 + 1e-9)).all()
    assert after.sum() < 0.97 * before.sum(), (after.sum(), before.sum())  # measured: 8-40% lower


def test_refit_is_the_least_squares_optimum_before_rounding() -> None:
    """Perturbing the refit's parameters in any direction raises the (unrounded) output error."""
    torch.manual_seed(0)
    n, k, group = 3, 64, 16
    w = random_weight(n, k, seed=3)
    h = anisotropic_hessian(k).double()
    codes, scales, zeros, _ = _rtn(w, 3, Grid.ASYMMETRIC, group)
    spec = GridSpec(Grid.ASYMMETRIC, 3)
    s, z = refit_params(w, codes, scales, zeros, spec, group, h)
    assert z is not None

    def err(s_: torch.Tensor, t_: torch.Tensor) -> torch.Tensor:
        hat = s_.repeat_interleave(group, 1) * codes.double() + t_.repeat_interleave(group, 1)
        return row_output_error(w, hat, h).sum()

    t = -s.double() * z.double()
    base = err(s.double(), t)
    for _ in range(20):
        ds = 1e-3 * torch.randn_like(s, dtype=torch.float64) * s.double()
        dt = 1e-3 * torch.randn_like(t) * t.abs().mean()
        assert err(s.double() + ds, t + dt) >= base * (1 - 1e-3)


def test_dead_inputs_and_constant_codes_keep_the_old_parameters() -> None:
    """A row of identical codes with H = 0 has no information: the ridge keeps its scale and zero."""
    w = torch.full((2, 8), 0.5)
    codes = torch.ones(2, 8, dtype=torch.uint8)
    scales, zeros = torch.tensor([[0.25], [0.5]]), torch.tensor([[-1.0], [0.0]])
    s, z = refit_params(w, codes, scales, zeros, GridSpec(Grid.ASYMMETRIC, 2), 8, torch.zeros(8, 8))
    assert torch.equal(s, scales) and z is not None and torch.equal(z, zeros)


def test_gptq_result_is_already_refit() -> None:
    """GPTQ's parameters are the refit's: refitting them again gains nothing (up to float16 rounding)."""
    w, h = random_weight(32, 200, dist="student_t"), anisotropic_hessian(200).double()
    qw = quantize(w, QScheme(2, 64, "asymmetric", calibration="gptq"), hessian=h.float())
    s, z = refit_params(w, qw.codes, qw.scales.float(), qw.zeros.float(), GridSpec(Grid.ASYMMETRIC, 2), 64, h)
    again = dequantize_codes(qw.codes, s.half(), z.half(), qw.scheme)
    before, after = row_output_error(w, qw.dequantize(), h).sum(), row_output_error(w, again, h).sum()
    assert after >= before * (1 - 1e-3), (after, before)
