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
otherwise. A rotated scheme's codes are of ``W R^T`` (``quant.rotation``); ``W'`` above is then rotated back
(``W' R``) by ``PackedWeight.dequantize``, while the native kernels rotate ``x`` instead. It is folded into the dequantised weight, not into ``x``: for a conv, column ``k`` is an
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
from ..quant.codes import dequantize_codes
from ..quant.rotation import rotate

__all__ = ["linear", "conv2d", "dequantized_weight", "quantize_activations", "linear_int8_activations",
           "lut8_error_bound", "activate", "check_activation", "ACTIVATIONS"]

IntPair = int | tuple[int, int]

ACTIVATIONS: tuple[str, ...] = ("gelu",)
"""Activations a linear layer can apply to its output (``activation=``), fused into the native kernels (a pass
over each part of ``y`` right after they write it): ``gelu`` is ``torch.nn.functional.gelu`` (the erf form)."""


def check_activation(activation: str | None) -> None:
    """``ConfigError`` naming the choices unless ``activation`` is None or a name in ``ACTIVATIONS``."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ConfigError(f"activation {activation!r} is not one of {[None, *ACTIVATIONS]}")


def activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``y`` through ``activation`` (None: unchanged); ``ConfigError`` for a name not in ``ACTIVATIONS``."""
    check_activation(activation)
    return y if activation is None else F.gelu(y)


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
    x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None, active_bits: int | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """``y = act(x @ W'^T + bias)`` with ``W'`` the packed weight dequantised at ``active_bits``.

    Args:
        x: float ``[..., K]`` (any leading dimensions), on the packed tensors' device.
        packed: the weight, shape ``(N, K)``.
        bias: float ``[N]`` or None; cast to ``x.dtype``.
        active_bits: a precision in ``packed.scheme.precisions``; None means every stored bit.
        activation: None or a name in ``ACTIVATIONS`` (``activate``).

    Returns:
        ``[..., N]`` in ``x.dtype``.
    """
    n, k = packed.shape
    if x.shape[-1] != k:
        raise ConfigError(f"linear: input has {x.shape[-1]} features in its last dimension, the weight "
                          f"[{n}, {k}] takes {k}")
    return activate(F.linear(x, dequantized_weight(packed, active_bits, x.dtype), _bias(bias, x)), activation)


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


def quantize_activations(x: torch.Tensor, input_scale: torch.Tensor | None = None,
                         rotation: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 of ``x' = x * input_scale`` (``x' = x R^T`` for a ``rotation``) exactly as the
    native ``int8`` kernel does it.

    ``sx = max_k |x'[m, k]| / 127`` (float32), ``xq = round_half_even(x' / sx)`` in ``[-127, 127]``
    (0 for an all-zero row). Returns ``(xq, sx)``: float32 ``[M, K]`` holding integers, and ``[M, 1]``.
    """
    xf = x.reshape(-1, x.shape[-1]).to(torch.float32)
    if input_scale is not None:
        xf = xf * input_scale.to(torch.float32)
    if rotation:
        xf = rotate(xf, rotation)
    sx = xf.abs().amax(dim=1, keepdim=True) / 127.0
    xq = torch.where(sx > 0, torch.round(xf / torch.where(sx > 0, sx, 1.0)), 0.0)
    return xq, sx


def linear_int8_activations(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
                            active_bits: int | None = None, activation: str | None = None) -> torch.Tensor:
    """The oracle of the native ``int8`` kernel: ``y = (sx * xq) @ (s * (c' - z))^T + bias`` in float64.

    ``xq, sx = quantize_activations(x, input_scale, rotation)``; the weight is dequantised in the stored basis,
    without ``input_scale`` (the kernel folds both into ``x``); ``activation`` as in ``linear``. Returns float32 ``[..., N]``.
    """
    n, k = packed.shape
    if x.shape[-1] != k:
        raise ConfigError(f"linear_int8_activations: input has {x.shape[-1]} features, the weight takes {k}")
    bits = packed.scheme.bits if active_bits is None else active_bits
    scales, zeros = packed.scale_zero(bits)
    scheme = packed.scheme.replace(bits=bits, nested=())
    w = dequantize_codes(packed.codes(bits), scales, zeros, scheme, dtype=torch.float64)
    xq, sx = quantize_activations(x, getattr(packed, "input_scale", None), packed.scheme.rotation)
    y = (xq.double() * sx.double()) @ w.T
    if bias is not None:
        y = y + bias.double()
    return activate(y, activation).to(torch.float32).reshape(*x.shape[:-1], n)


def lut8_error_bound(x: torch.Tensor, packed: PackedWeight, active_bits: int | None = None) -> torch.Tensor:
    """``[M, N]`` worst-case error of the native ``lut`` kernel (uint8 tables) against ``linear``.

    Per weight group ``g`` of row ``n`` the kernel replaces each of its ``T_g = ceil(|g| / 4)`` table
    lookups (one per 4 activations and plane) by an entry rounded to the grid ``sc_g = max_t sum_{i in t}
    |x'_i| / 255``, an error of at most ``sc_g / 2``; plane ``j`` weighs ``2^(b'-1-j)``, so
    ``|err[m, n]| <= sum_g |s[n, g]| * (2^b' - 1) * T_g * sc_g[m] / 2``. Random rounding makes the typical
    error about ``1/sqrt(3 T_g)`` of this (docs/KERNELS.md).
    """
    n, k = packed.shape
    bits = packed.scheme.bits if active_bits is None else active_bits
    xf = x.reshape(-1, k).to(torch.float64)
    inp = getattr(packed, "input_scale", None)
    if inp is not None:
        xf = xf * inp.to(torch.float64)
    if packed.scheme.rotation:
        xf = rotate(xf, packed.scheme.rotation).to(torch.float64)
    k32 = -(-k // 32) * 32
    xp = F.pad(xf, (0, k32 - k))
    t_range = xp.abs().view(xp.shape[0], -1, 4).sum(-1)  # [M, K32/4]
    groups = packed.scheme.n_groups(k)
    per_t = (k32 // 4) if groups == 1 else packed.scheme.group_size // 4  # type: ignore[operator]
    bound = torch.zeros(xp.shape[0], n, dtype=torch.float64)
    s, _ = packed.scale_zero(bits)
    for g in range(groups):
        t0, t1 = g * per_t, (k32 // 4 if g == groups - 1 else (g + 1) * per_t)
        sc = t_range[:, t0:t1].amax(dim=1) / 255.0  # [M]
        bound += sc[:, None] * (s[:, g].abs().double() * ((1 << bits) - 1) * (t1 - t0) / 2)[None, :]
    return bound
