"""Scale methods on group rows: ordering ALS <= MSE <= minmax, float16 consistency, degenerate groups."""

from __future__ import annotations

import pytest
import torch

from bitsfusion.quant.grids import GridSpec, group_sq_error
from bitsfusion.quant.scales import als, least_squares_params, minmax, mse_search
from bitsfusion.types import Grid
from tests.conftest import GRID_BITS
from tests.quant.conftest import DISTRIBUTIONS, random_weight

METHODS = {"minmax": minmax, "mse": mse_search, "als": als}


def _rows(seed: int, dist: str, length: int = 64) -> torch.Tensor:
    return random_weight(48, length, seed=seed, dist=dist)


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_als_and_mse_never_worse_than_minmax_per_group(grid: Grid, bits: int) -> None:
    """Over 3 distributions x 4 seeds x 48 groups (incl. Student-t): per group, als <= mse <= minmax."""
    spec = GridSpec(grid, bits)
    total_minmax = total_als = 0.0
    for dist in DISTRIBUTIONS:
        for seed in range(4):
            x = _rows(seed, dist, length=[64, 37, 128, 8][seed])
            e_minmax, e_mse, e_als = (METHODS[m](x, spec)[2] for m in ("minmax", "mse", "als"))
            tol = 1e-6 * e_minmax + 1e-12
            assert torch.all(e_mse <= e_minmax + tol), (dist, seed)
            assert torch.all(e_als <= e_mse + tol), (dist, seed)
            total_minmax, total_als = total_minmax + float(e_minmax.sum()), total_als + float(e_als.sum())
    assert total_als < total_minmax  # and the search does find better scales


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grid", list(Grid))
def test_outputs_are_float16_values_and_err_is_their_error(grid: Grid, method: str) -> None:
    spec = GridSpec(grid, 3)
    x = _rows(7, "student_t")
    scale, zero, err = METHODS[method](x, spec)
    assert scale.shape == (48, 1) and err.shape == (48,)
    assert torch.equal(scale.half().float(), scale) and torch.all(scale > 0)
    assert (zero is None) == (grid is not Grid.ASYMMETRIC)
    if zero is not None:
        assert torch.equal(zero.half().float(), zero)
    torch.testing.assert_close(err, group_sq_error(x, spec, scale, zero), rtol=0, atol=0)


def test_one_bit_symmetric_als_is_twice_the_mean_magnitude() -> None:
    """Levels +-1/2: the least-squares scale for sign codes is 2 * mean|x|, reached in one step."""
    x = _rows(3, "laplace")
    scale, _, _ = als(x, GridSpec(Grid.SYMMETRIC, 1))
    torch.testing.assert_close(scale, (2 * x.abs().mean(-1, keepdim=True)).half().float(), rtol=1e-3, atol=0)


def test_one_bit_asymmetric_als_fits_two_valued_groups() -> None:
    gen = torch.Generator().manual_seed(0)
    lo, hi = torch.randn(32, 1, generator=gen), torch.randn(32, 1, generator=gen).abs() + 0.5
    pick = torch.rand(32, 40, generator=gen) < 0.5
    pick[:, 0], pick[:, 1] = True, False
    x = torch.where(pick, lo, lo + hi)
    _, _, err = als(x, GridSpec(Grid.ASYMMETRIC, 1))
    assert torch.all(err <= 1e-5 * x.square().sum(-1))


def test_asymmetric_least_squares_is_the_joint_fit() -> None:
    """For fixed codes the 2-parameter fit matches torch.linalg.lstsq (up to float16 rounding)."""
    spec = GridSpec(Grid.ASYMMETRIC, 4)
    x = _rows(11, "normal")
    amax = x.abs().amax(-1, keepdim=True)
    s0, z0, _ = minmax(x, spec)
    codes = spec.nearest(x, s0 * 1.3, z0)
    s, z = least_squares_params(x, codes, spec, amax, s0, z0)
    design = torch.stack([codes, torch.ones_like(codes)], dim=-1).double()  # x ~ s*c + t
    sol = torch.linalg.lstsq(design, x.double().unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(s.squeeze(-1).double(), sol[:, 0], rtol=1e-3, atol=0)
    torch.testing.assert_close((-s * z).squeeze(-1).double(), sol[:, 1], rtol=0, atol=2e-3 * float(amax.max()))


DEGENERATE = {
    "zeros": torch.zeros(3, 20),
    "constant": torch.full((3, 20), 0.3),
    "negative-constant": torch.full((3, 20), -2.0),
    "tiny": torch.full((3, 20), 1e-30),
    "one-nonzero": torch.cat([torch.zeros(3, 19), torch.full((3, 1), 5.0)], dim=1),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("grid, bits", [(g, b) for g in Grid for b in (1, 2, 7)])
@pytest.mark.parametrize("name", DEGENERATE)
def test_degenerate_groups_give_finite_positive_scales(name: str, grid: Grid, bits: int, method: str) -> None:
    x = DEGENERATE[name]
    spec = GridSpec(grid, bits)
    scale, zero, err = METHODS[method](x, spec)
    assert torch.all(torch.isfinite(scale)) and torch.all(scale > 0)
    assert zero is None or torch.all(torch.isfinite(zero))
    assert torch.all(torch.isfinite(err))
    if name == "zeros" and grid is not Grid.SYMMETRIC:  # both grids have an exact zero level
        assert torch.all(err == 0)
    if name in ("constant", "negative-constant"):
        assert torch.all(err <= 1e-6 * x.square().sum(-1))
