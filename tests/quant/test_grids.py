"""GridSpec: code ranges and zeros per grid, nearest rounding, the squared-error helper."""

from __future__ import annotations

import pytest
import torch

from bitsfusion.quant.grids import GridSpec, group_sq_error
from bitsfusion.types import Grid
from tests.conftest import GRID_BITS


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_code_range_and_zero_follow_the_grid_table(grid: Grid, bits: int) -> None:
    spec = GridSpec(grid, bits)
    assert spec.cmax == grid.levels(bits) - 1
    half = 1 << (bits - 1)
    expected_zero = {Grid.SYMMETRIC: half - 0.5, Grid.BALANCED: float(half), Grid.ASYMMETRIC: None}[grid]
    assert spec.const_zero == expected_zero
    if expected_zero is not None:
        levels = spec.levels(torch.arange(spec.cmax + 1, dtype=torch.float32))
        assert levels[0] == -levels[-1] == -spec.top_level  # symmetric about zero
        assert torch.all(levels.diff() == 1)


def test_worked_examples() -> None:
    sym2 = GridSpec(Grid.SYMMETRIC, 2)
    code = sym2.nearest(torch.tensor([[0.12]]), torch.tensor([[0.1]]))
    assert code.item() == 3 and sym2.levels(code).item() == 1.5
    assert GridSpec(Grid.SYMMETRIC, 1).levels(torch.tensor([0.0, 1.0])).tolist() == [-0.5, 0.5]
    assert GridSpec(Grid.BALANCED, 1).levels(torch.tensor([0.0, 1.0, 2.0])).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("grid, bits", GRID_BITS)
def test_nearest_is_in_range_and_beats_both_neighbours(grid: Grid, bits: int) -> None:
    spec = GridSpec(grid, bits)
    gen = torch.Generator().manual_seed(bits)
    x = torch.randn(16, 40, generator=gen) * 3
    scale = torch.rand(16, 1, generator=gen) * 0.5 + 0.05
    zero = None if spec.const_zero is not None else torch.rand(16, 1, generator=gen) * spec.cmax
    codes = spec.nearest(x, scale, zero)
    assert codes.min() >= 0 and codes.max() <= spec.cmax
    assert torch.equal(codes, codes.round())
    err = (spec.levels(codes, zero) * scale - x).abs()
    for step in (-1.0, 1.0):
        other = (codes + step).clamp(0, spec.cmax)
        assert torch.all(err <= (spec.levels(other, zero) * scale - x).abs() + 1e-6)


def test_asymmetric_grid_needs_a_zero() -> None:
    with pytest.raises(ValueError, match="asymmetric grid needs a per-group zero"):
        GridSpec(Grid.ASYMMETRIC, 4).nearest(torch.ones(1, 3), torch.ones(1, 1))


def test_group_sq_error_matches_the_formula_and_accepts_given_codes() -> None:
    spec = GridSpec(Grid.ASYMMETRIC, 3)
    x = torch.tensor([[0.0, 0.3, -0.2], [1.0, 2.0, 3.0]])
    scale, zero = torch.tensor([[0.1], [0.5]]), torch.tensor([[3.0], [-1.5]])
    codes = spec.nearest(x, scale, zero)
    want = ((codes - zero) * scale - x).square().sum(-1)
    torch.testing.assert_close(group_sq_error(x, spec, scale, zero), want)
    fixed = torch.zeros_like(x)
    torch.testing.assert_close(group_sq_error(x, spec, scale, zero, fixed), ((0 - zero) * scale - x).square().sum(-1))
