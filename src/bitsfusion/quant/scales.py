"""Per-group scales (and zeros): min-max, MSE clipping search, alternating least squares.

Every function takes group rows ``x`` float32 ``[R, L]`` (see ``grids``) and returns
``(scale, zero, err)``: scale float32 ``[R, 1]``, zero float32 ``[R, 1]`` on the asymmetric
grid else None, and ``err`` float32 ``[R]`` = the squared error of the nearest codes.
Scales and zeros are *already float16-representable* (``fp16_params``) and ``err`` is measured
with them, so what a method optimised is exactly what ``quantize`` stores.

- ``minmax``: the group's range onto the grid's range (``max|x| -> top level``, or
  ``[min, max] -> [0, cmax]`` on the asymmetric grid);
- ``mse_search``: clipping ratios ``r`` of that range, all ratios at once, best per group
  (``r = 1`` is minmax, so the search is never worse than minmax);
- ``als``: BitsFusion's alternating least squares from the best ratio of ``mse_search``:
  ``codes = nearest(x / s)``, then ``s = <x, l> / <l, l>`` with ``l = code - zero``; on the
  asymmetric grid ``x ~ s * c + t`` (``t = -s * zero``) jointly by 2-parameter least squares. The best iterate per
  group is kept, so ALS is never worse than its start (so never worse than mse_search or minmax).
"""

from __future__ import annotations

from typing import Callable

import torch

from .grids import GridSpec, group_sq_error

__all__ = [
    "MAX_ABS_WEIGHT", "MSE_RATIOS", "ALS_ROUNDS",
    "fp16_params", "minmax", "mse_search", "als", "least_squares_params",
]

MAX_ABS_WEIGHT = 2.0**14
"""Largest ``|w|`` accepted: keeps every scale (at most ``2 max|w|``) below float16's 65504."""
MIN_SCALE = 2.0**-24  # the smallest positive float16 (subnormal)
MIN_REL_SCALE = 2.0**-14  # scale >= max|x| * this: keeps |zero| <= 2^14 + cmax on odd groups
MSE_RATIOS = [round(0.10 + 0.02 * i, 2) for i in range(46)]  # 0.10 .. 1.00; 1.0 is minmax
ALS_ROUNDS = 10
_CHUNK_ELEMENTS = 1 << 18  # one [rows, ratios, L] block of the search: ~1 MiB, stays in cache


def fp16_params(
    scale: torch.Tensor, amax: torch.Tensor, zero_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Guard and round ``scale`` to float16 values, then derive and round the zero.

    ``scale >= max(amax * 2^-14, 2^-24)`` (finite, positive even for all-zero or constant
    groups). ``zero_fn(scale_fp16) -> zero`` computes the zero *for the rounded scale*
    (asymmetric grid), so the pair is consistent; None on constant-zero grids.
    Returns float32 tensors holding exactly float16 values.
    """
    floor = torch.clamp(amax * MIN_REL_SCALE, min=MIN_SCALE)
    s = torch.maximum(scale.nan_to_num(nan=0.0, posinf=0.0), floor).half().float()
    if zero_fn is None:
        return s, None
    z = zero_fn(s).clamp(-(2.0**15), 2.0**15).half().float()
    return s, z


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
    return lo, hi, torch.maximum(-lo, hi)


def _ratio_params(
    spec: GridSpec, lo: torch.Tensor, hi: torch.Tensor, amax: torch.Tensor, ratios: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales (and zeros) ``[R, C, 1]`` of the clipped ranges, ``ratios`` ``[C]``.

    Constant-zero grids clip ``max|x|``; the asymmetric grid clips ``[min, max]`` about its centre.
    """
    r = ratios.view(1, -1, 1)
    if spec.const_zero is not None:
        return fp16_params(amax.unsqueeze(1) * r / spec.top_level, amax.unsqueeze(1))
    centre, half = ((hi + lo) / 2).unsqueeze(1), ((hi - lo) / 2).unsqueeze(1) * r
    low = centre - half
    return fp16_params(2 * half / spec.cmax, amax.unsqueeze(1), lambda s: -low / s)


def mse_search(
    x: torch.Tensor, spec: GridSpec, ratios: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Best clipping ratio per group: ``(scale, zero, err)`` (see the module docstring).

    All ``C`` ratios are scored at once on ``[rows, C, L]`` blocks of at most ~4M elements.
    """
    ratios_t = torch.tensor(MSE_RATIOS if ratios is None else ratios, dtype=torch.float32, device=x.device)
    lo, hi, amax = _stats(x)
    s_all, z_all = _ratio_params(spec, lo, hi, amax, ratios_t)  # [R, C, 1]
    n_rows, n_ratios, length = x.shape[0], ratios_t.numel(), x.shape[1]
    err = torch.empty(n_rows, n_ratios, dtype=torch.float32, device=x.device)
    step = max(1, _CHUNK_ELEMENTS // (n_ratios * length))
    for i in range(0, n_rows, step):
        rows = slice(i, i + step)
        z = None if z_all is None else z_all[rows]
        err[rows] = group_sq_error(x[rows].unsqueeze(1), spec, s_all[rows], z)
    best_err, best = err.min(dim=1)
    pick = best.view(-1, 1, 1)
    scale = s_all.gather(1, pick).squeeze(1)
    zero = None if z_all is None else z_all.gather(1, pick).squeeze(1)
    return scale, zero, best_err


def minmax(x: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """The min-max scale (and zero) per group: ``mse_search`` with the single ratio 1."""
    return mse_search(x, spec, [1.0])


def least_squares_params(
    x: torch.Tensor, codes: torch.Tensor, spec: GridSpec, amax: torch.Tensor,
    scale: torch.Tensor, zero: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The least-squares ``(scale, zero)`` per group for fixed ``codes``, float16-rounded.

    Constant zero: ``s = <x, l> / <l, l>``. Asymmetric: ``x ~ s * c + t`` by 2-parameter least
    squares, then ``zero = mean(c) - mean(x) / s16`` (the best offset for the *rounded* scale).
    Groups without a usable fit (all codes alike, or a non-positive slope) keep ``scale``/``zero``.
    """
    if spec.const_zero is not None:
        lev = spec.levels(codes)
        xl, ll = (x * lev).sum(-1, keepdim=True), (lev * lev).sum(-1, keepdim=True)
        ok = (ll > 0) & (xl > 0)
        s = torch.where(ok, xl / ll.clamp(min=1e-30), scale)
        return fp16_params(s, amax)
    n, half = x.shape[-1], spec.cmax / 2
    c = codes - half  # centred: the sums below then cancel far less
    sc, sx = c.sum(-1, keepdim=True).double(), x.sum(-1, keepdim=True).double()
    scc, scx = (c * c).sum(-1, keepdim=True).double(), (c * x).sum(-1, keepdim=True).double()
    den, num = n * scc - sc * sc, n * scx - sc * sx
    ok = (den > 0) & (num > 0)
    s = torch.where(ok, num / den.clamp(min=1e-300), scale.double()).float()
    mean_c, mean_x = (sc / n + half).float(), (sx / n).float()
    s16, z16 = fp16_params(s, amax, lambda s16: mean_c - mean_x / s16)
    assert zero is not None and z16 is not None
    return torch.where(ok, s16, scale), torch.where(ok, z16, zero)


def als(
    x: torch.Tensor, spec: GridSpec, rounds: int = ALS_ROUNDS, init_ratios: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Alternating least squares from the best clipping ratio of ``mse_search`` (``init_ratios``).

    Each round: nearest codes for the current ``(s, z)``, then the least-squares ``(s, z)`` for
    those codes. The lowest-error iterate per group is returned; stops early when no group moves.
    """
    scale, zero, best_err = mse_search(x, spec, init_ratios)
    amax = x.abs().amax(-1, keepdim=True)
    best_s, best_z = scale, zero
    codes = spec.nearest(x, scale, zero)
    for _ in range(rounds):
        new_s, new_z = least_squares_params(x, codes, spec, amax, scale, zero)
        if torch.equal(new_s, scale) and (zero is None or torch.equal(new_z, zero)):
            break
        scale, zero = new_s, new_z
        codes = spec.nearest(x, scale, zero)
        err = group_sq_error(x, spec, scale, zero, codes)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better.unsqueeze(-1), scale, best_s)
        if zero is not None:
            best_z = torch.where(better.unsqueeze(-1), zero, best_z)
    return best_s, best_z, best_err
