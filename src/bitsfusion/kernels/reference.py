"""Reference execution of packed weights: dequantise, then the float op. The oracle for native kernels.

Every native kernel (bit-serial GEMV, int8 GEMM, ...) must agree with these functions on random
and odd shapes. They favour being obviously right over being fast: the whole weight is
dequantised on every call, in ``x``'s dtype, and handed to ``torch.nn.functional``.

The maths, for a layer stored at ``b`` bits and run at ``b' = active_bits`` (a precision in
``scheme.precisions``), with ``G`` the group size along ``K``::

    c'[n, k]   = codes[n, k] >> (b - b')                          (the top b' bit-planes)
    W'[n, k]   = scale_b'[n, k // G] * (c'[n, k] - zero_b'[n, k // G]) * input_scale[k]
    linear:  y[..., n] = sum_k x[..., k] * W'[n, k] + bias[n]

``input_scale`` (float16 ``[K]``) is stored only by activation-aware schemes (AWQ), and is 1
otherwise. It is folded into the dequantised weight, not into ``x``: for a conv, column ``k`` is an
im2col column ``(c, i, j)`` (channel and kernel position), which no per-channel scaling of ``x``
can express. A native kernel may instead scale ``x`` (linear) or the unfolded patches (conv):
``x @ W'^T == (x * input_scale) @ W''^T`` with ``W''`` the dequantised codes alone.

Worked example: a 4-bit symmetric code ``c = 0b1011 = 11`` run at ``b' = 2`` keeps ``0b10 = 2``;
with the 2-bit scale ``0.5`` and the grid's zero ``1.5`` it weighs ``0.5 * (2 - 1.5) = 0.25``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..pack.packed import PackedWeight

__all__ = ["linear", "conv2d", "dequantized_weight"]

IntPair = int | tuple[int, int]


def dequantized_weight(packed: PackedWeight, active_bits: int | None, dtype: torch.dtype) -> torch.Tensor:
    """``W'[N, K]`` as ``dtype`` at ``active_bits`` (None: every stored bit), on the packed tensors' device.

    Computed in float32 (``scale * (code - zero) * input_scale``) and cast once, so a float16 ``x`` sees the
    float16 rounding of the exact dequantised weight. ``ConfigError`` for a precision the
    weight does not store.
    """
    return packed.dequantize(active_bits, dtype=dtype)


def _bias(bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if bias is None else bias.to(dtype=x.dtype)


def linear(
    x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None, active_bits: int | None = None
) -> torch.Tensor:
    """``y = x @ W'^T + bias`` with ``W'`` the packed weight dequantised at ``active_bits``.

    Args:
        x: float ``[..., K]`` (any leading dimensions), on the packed tensors' device.
        packed: the weight, shape ``(N, K)``.
        bias: float ``[N]`` or None; cast to ``x.dtype``.
        active_bits: a precision in ``packed.scheme.precisions``; None means every stored bit.

    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    n, k = packed.shape
    if x.shape[-1] != k:
        raise ConfigError(f"linear: input has {x.shape[-1]} features in its last dimension, the weight "
                          f"[{n}, {k}] takes {k}")
    return F.linear(x, dequantized_weight(packed, active_bits, x.dtype), _bias(bias, x))


def conv2d(
    x: torch.Tensor,
    packed: PackedWeight,
    bias: torch.Tensor | None,
    active_bits: int | None,
    weight_shape: tuple[int, int, int, int],
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d`` with the packed weight dequantised at ``active_bits`` and viewed back to 4-D.

    The packed weight is the conv weight ``[out, in/groups, kh, kw]`` viewed as
    ``[N, K] = [out, in/groups * kh * kw]`` (row-major, so column ``k`` is
    ``(c * kh + i) * kw + j`` for input channel ``c`` of the group and kernel position ``(i, j)``).

    Args:
        x: float ``[B, in, H, W]``.
        packed: the weight, shape ``(out, in/groups * kh * kw)``.
        bias: float ``[out]`` or None; cast to ``x.dtype``.
        active_bits: a precision in ``packed.scheme.precisions``; None means every stored bit.
        weight_shape: ``(out, in/groups, kh, kw)``; its product must equal ``N * K``.
        stride, padding (ints or ``'same'``/``'valid'``), dilation, groups: as ``F.conv2d``.

    Returns:
        ``[B, out, H_out, W_out]`` in ``x.dtype``.
    """
    weight_shape = tuple(int(d) for d in weight_shape)  # type: ignore[assignment]
    n, k = packed.shape
    if len(weight_shape) != 4 or weight_shape[0] != n or math.prod(weight_shape[1:]) != k:
        raise ConfigError(f"conv2d: weight_shape {list(weight_shape)} does not view the packed weight [{n}, {k}]; "
                          f"expected [out={n}, in/groups, kh, kw] with in/groups * kh * kw = {k}")
    weight = dequantized_weight(packed, active_bits, x.dtype).view(weight_shape)
    return F.conv2d(x, weight, _bias(bias, x), stride, padding, dilation, groups)
