"""Quantized weights as plain tensors, and the one formula that turns codes back into weights.

A weight ``W[N, K]`` (a conv weight viewed as ``[out, in/groups * kh * kw]``) is split
along ``K`` into groups of ``group_size`` (the last one shorter when ``K`` is not a
multiple); group ``g`` of row ``n`` has one ``scale[n, g]`` and, on the asymmetric grid,
one ``zero[n, g]``::

    W[n, k] ≈ scale[n, k // G] * (codes[n, k] - zero[n, k // G])

with ``zero`` the grid's constant where it is not stored (``Grid.constant_zero``).

A ``b``-bit code truncated to its top ``b'`` bits, ``codes >> (b - b')``, is a valid ``b'``-bit
code with its own per-group scale (and zero): ``QuantizedWeight.nested[b']``.

Activation-aware schemes (``scheme.calibration.scales_inputs``, AWQ) quantize ``W diag(s)``
instead of ``W`` and store ``input_scale = 1/s`` (float16 ``[K]``), one factor per column of
``K`` (for a conv: per im2col column ``(c, i, j)``). The weight in the original basis is then::

    W[n, k] ≈ scale[n, k // G] * (codes[n, k] - zero[n, k // G]) * input_scale[k]

so ``x @ W_hat^T == (x * input_scale) @ deq(codes)^T``: the stored factor multiplies the input.
Example: ``s = 4`` on a column whose activations are large gives ``input_scale = 0.25``; a weight
``0.1`` there is quantized as ``0.4`` (a finer relative grid), and dequantizes back to ``~0.1``.

A rotated scheme (``scheme.rotation = B``) quantizes ``W R^T`` (``quant.rotation``): the codes, scales and
zeros are of the rotated weight, ``dequantize_codes`` gives that stored basis, and ``dequantize`` rotates it
back, ``W_hat = deq(codes) R``, so ``x @ W_hat^T == (x R^T) @ deq(codes)^T``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..types import QScheme
from .rotation import unrotate

__all__ = ["QuantizedWeight", "dequantize_codes", "expand_groups"]


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """The output of ``quantize``: codes, scales, zeros, and the scales of nested precisions.

    Attributes:
        codes: uint8 ``[N, K]``, values in ``0 .. scheme.levels - 1``.
        scales: float16 ``[N, n_groups]``.
        zeros: float16 ``[N, n_groups]`` on the asymmetric grid, else None.
        scheme: the scheme that produced them.
        nested: for each ``b'`` in ``scheme.nested``, ``(scales, zeros)`` of the truncated code
            ``codes >> (bits - b')``, same shapes and dtypes as above (zeros None unless asymmetric).
        input_scale: float16 ``[K]``, the per-column factor ``1/s`` of an activation-aware scheme
            (``scheme.calibration.scales_inputs``), else None; ``dequantize`` multiplies column
            ``k`` by it, so the result is in the original basis of ``W``.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    scheme: QScheme
    nested: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    input_scale: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.codes.shape[0]), int(self.codes.shape[1]))

    def scale_zero(self, bits: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scales and zeros for running at ``bits`` (default: all stored bits)."""
        if bits is None or bits == self.scheme.bits:
            return self.scales, self.zeros
        return self.nested[bits]

    def truncated_codes(self, bits: int | None = None) -> torch.Tensor:
        """The top ``bits`` bits of every code (the codes themselves at full precision)."""
        if bits is None or bits == self.scheme.bits:
            return self.codes
        return self.codes >> (self.scheme.bits - bits)

    def dequantize(self, bits: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``W_hat[N, K]`` at ``bits`` (must be ``scheme.bits`` or one of ``scheme.nested``), original basis
        (input scale folded in, rotation undone)."""
        bits = self.scheme.bits if bits is None else bits
        if bits not in self.scheme.precisions:
            raise ValueError(f"this weight stores precisions {self.scheme.precisions}, not {bits}")
        scales, zeros = self.scale_zero(bits)
        out = dequantize_codes(
            self.truncated_codes(bits), scales, zeros, self.scheme.replace(bits=bits, nested=()),
            dtype=torch.float32 if self.scheme.rotation else dtype, input_scale=self.input_scale,
        )
        return unrotate(out, self.scheme.rotation).to(dtype) if self.scheme.rotation else out


def expand_groups(per_group: torch.Tensor, k: int, group_size: int | None) -> torch.Tensor:
    """Broadcast a ``[N, n_groups]`` tensor to ``[N, K]`` along the reduction dimension."""
    if group_size is None:
        return per_group[:, :1].expand(per_group.shape[0], k)
    return per_group.repeat_interleave(group_size, dim=1)[:, :k]


def dequantize_codes(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    scheme: QScheme,
    dtype: torch.dtype = torch.float32,
    input_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``scale * (codes - zero)`` per group, times ``input_scale[k]`` per column when given,
    computed in float32 and returned as ``dtype``.

    ``scheme.bits`` is the precision of ``codes`` (already truncated when running nested);
    ``zeros`` must be given exactly when the grid stores them; ``input_scale`` is ``[K]``.
    """
    k = int(codes.shape[1])
    s = expand_groups(scales.to(torch.float32), k, scheme.group_size)
    constant = scheme.grid.constant_zero(scheme.bits)
    if constant is None:
        if zeros is None:
            raise ValueError(f"grid {scheme.grid.value} needs zeros")
        z = expand_groups(zeros.to(torch.float32), k, scheme.group_size)
        out = (codes.to(torch.float32) - z) * s
    else:
        out = (codes.to(torch.float32) - constant) * s
    if input_scale is not None:
        out = out * input_scale.to(torch.float32).unsqueeze(0)
    return out.to(dtype)
