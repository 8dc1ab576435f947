"""Integer grids as executable maths: the code range, the zero, and nearest rounding.

A ``GridSpec`` is one ``Grid`` at one bit width. Every quantizer in this package rounds
through ``GridSpec.nearest`` and scores through ``group_sq_error``, so the codes a search
optimised are exactly the codes ``quantize`` returns.

Tensors here are *group rows*: ``x`` is float32 ``[R, L]`` (one row per weight group of
length ``L``), a scale or zero is float32 ``[R, 1]`` (one per row).

Example (2-bit symmetric, zero ``1.5``): ``x = 0.12`` with scale ``0.1`` gives
``round(0.12 / 0.1 + 1.5) = round(2.7) = 3``, level ``3 - 1.5 = 1.5``, value ``0.15``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import Grid

__all__ = ["GridSpec", "group_sq_error"]


@dataclass(frozen=True)
class GridSpec:
    """The grid ``grid`` at ``bits`` bits: codes ``0 .. cmax``, ``value = scale * (code - zero)``.

    ``const_zero`` is the grid's fixed zero (symmetric ``2^(b-1) - 1/2``, balanced ``2^(b-1)``),
    or None on the asymmetric grid, whose zero is a per-group float (possibly fractional).
    """

    grid: Grid
    bits: int

    @property
    def cmax(self) -> int:
        """The largest code: ``2^b - 1``, or ``2^b`` on the balanced grid."""
        return self.grid.levels(self.bits) - 1

    @property
    def const_zero(self) -> float | None:
        return self.grid.constant_zero(self.bits)

    @property
    def top_level(self) -> float:
        """The largest ``|code - zero|`` of a constant-zero grid (minmax maps ``max|x|`` onto it).

        For the asymmetric grid, the code span ``cmax`` (minmax maps ``max - min`` onto it).
        """
        z = self.const_zero
        return float(self.cmax) if z is None else self.cmax - z

    def zero_of(self, zero: torch.Tensor | None) -> torch.Tensor | float:
        """The zero to subtract: the stored per-row ``zero`` or the grid's constant."""
        if self.const_zero is not None:
            return self.const_zero
        if zero is None:
            raise ValueError(f"the {self.grid.value} grid needs a per-group zero")
        return zero

    def nearest(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
        """Nearest codes ``clamp(round(x / scale + zero), 0, cmax)`` as float32, same shape as ``x``.

        ``x`` may carry extra middle dimensions (``[R, C, L]`` against scales ``[R, C, 1]``).
        Ties round half to even (``torch.round``); any rule works as long as one is used.
        """
        t = x / scale
        t.add_(self.zero_of(zero))
        return t.round_().clamp_(0, self.cmax)

    def levels(self, codes: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
        """``codes - zero``: the multiples of the scale that the codes stand for."""
        return codes - self.zero_of(zero)


def group_sq_error(
    x: torch.Tensor, spec: GridSpec, scale: torch.Tensor, zero: torch.Tensor | None = None,
    codes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row ``sum((x - scale * (codes - zero))^2)`` over the last dimension.

    ``codes`` default to ``spec.nearest(x, scale, zero)``. Shapes: ``x [..., L]``,
    ``scale``/``zero`` ``[..., 1]``; returns ``[...]`` float32. Computed as a residual (not by
    expanding the square) so that 8-bit errors, ~1e-5 of ``||x||^2``, are not lost to cancellation.
    """
    if codes is None:
        codes = spec.nearest(x, scale, zero)
    r = spec.levels(codes, zero).mul_(scale).sub_(x)
    return r.square_().sum(-1)
