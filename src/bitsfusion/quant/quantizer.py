"""``quantize``: a float weight ``W[N, K]`` to codes and float16 scales under a ``QScheme``.

The weight is cut along ``K`` into groups of ``G = scheme.group_size`` (one group per row when
None). The full groups of all rows form one batch of group rows ``[N * (K // G), G]``; a shorter
last group (``K % G != 0``) forms a second batch ``[N, K % G]``. Nothing is ever padded, so
no statistic (min/max, least-squares sums, search errors) can see a padding value.

Example: ``K = 150, G = 64`` gives groups ``[0, 64)``, ``[64, 128)`` and the tail ``[128, 150)``;
``scales`` is ``[N, 3]`` and ``codes[n, 130]`` is read with ``scales[n, 2]``.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from ..types import QScheme, ScaleMethod
from .codes import QuantizedWeight
from .grids import GridSpec
from .nested import GroupFit, fit_nested, nest_by_truncation
from .scales import MAX_ABS_WEIGHT, als, minmax, mse_search

__all__ = ["quantize", "relative_error", "fit_groups"]

_METHODS: dict[ScaleMethod, Callable[..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]] = {
    ScaleMethod.MINMAX: minmax,
    ScaleMethod.MSE: mse_search,
    ScaleMethod.ALS: als,
}


def _validate(w: object, scheme: object) -> torch.Tensor:
    if not isinstance(scheme, QScheme):
        raise ConfigError(f"quantize needs a QScheme, got {type(scheme).__name__}")
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"quantize needs a torch.Tensor weight, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"quantize needs a 2-D weight [N, K] (view a conv weight as [out, in*kh*kw]), "
                         f"got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"quantize got an empty weight of shape {tuple(w.shape)}; N and K must be >= 1")
    if not w.is_floating_point():
        raise ValueError(f"quantize needs a floating-point weight, got {w.dtype}")
    w32 = w.detach().to(torch.float32)
    bad = int((~torch.isfinite(w32)).sum())
    if bad:
        raise ValueError(f"the weight has {bad} NaN/inf values of {w32.numel()}; fix the model before quantizing")
    amax = float(w32.abs().max())
    if amax > MAX_ABS_WEIGHT:
        raise ValueError(f"the weight has |w| up to {amax:g}, beyond the {MAX_ABS_WEIGHT:g} float16 scales can "
                         "hold; rescale it (fold a factor into a neighbouring layer)")
    return w32


def _segments(k: int, group_size: int | None) -> list[tuple[int, int, int]]:
    """``(start, stop, group_length)`` column ranges: the full groups, then the shorter tail."""
    g = k if group_size is None else min(group_size, k)
    full = (k // g) * g
    out = [(0, full, g)] if full else []
    if full < k:
        out.append((full, k, k - full))
    return out


def fit_groups(
    x: torch.Tensor, scheme: QScheme, prefix_aware: bool = True, full_weight: float = 1.0
) -> GroupFit:
    """Codes and per-precision scales for group rows ``x`` float32 ``[R, L]`` (see ``grids``).

    With ``scheme.nested``: prefix-aware codes (``nested.fit_nested``), or with
    ``prefix_aware=False`` the direct codes with refitted truncation scales (``nest_by_truncation``).
    ``full_weight`` < 1 lets prefix-aware codes trade full-precision error for nested error.
    """
    spec = GridSpec(scheme.grid, scheme.bits)
    scale, zero, _ = _METHODS[scheme.method](x, spec)
    fit = GroupFit(codes=spec.nearest(x, scale, zero), params={scheme.bits: (scale, zero)})
    if scheme.nested:
        if prefix_aware:
            return fit_nested(x, fit, scheme, full_weight=full_weight)
        return nest_by_truncation(x, fit, scheme)
    return fit


def quantize(
    w: torch.Tensor, scheme: QScheme, *, prefix_aware: bool = True, full_weight: float = 1.0
) -> QuantizedWeight:
    """Quantize ``w`` (float ``[N, K]``, any float dtype, computed in float32) with ``scheme``.

    Returns codes uint8 ``[N, K]`` in ``0 .. scheme.levels - 1``, scales float16 ``[N, n_groups]``,
    zeros float16 (asymmetric grid) and, for each nested ``b'``, the scales (and zeros) of the
    truncated codes ``codes >> (bits - b')``. Without nesting, codes are nearest-rounded against the
    stored float16 scales, so ``dequantize`` reproduces exactly the error the scale search minimised;
    with nesting they are searched against the stored float16 scales of every precision
    (``prefix_aware`` and ``full_weight`` choose how, see ``fit_groups``).
    Raises ``ValueError`` for a weight that is not 2-D, empty, non-float, non-finite or too large.
    """
    w32 = _validate(w, scheme)
    n, k = w32.shape
    codes = torch.empty(n, k, dtype=torch.uint8, device=w32.device)
    params: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {b: ([], []) for b in scheme.precisions}
    for start, stop, length in _segments(k, scheme.group_size):
        x = w32[:, start:stop].reshape(-1, length)
        fit = fit_groups(x, scheme, prefix_aware, full_weight)
        codes[:, start:stop] = fit.codes.reshape(n, stop - start).to(torch.uint8)
        for b, (s, z) in fit.params.items():
            params[b][0].append(s.reshape(n, -1))
            if z is not None:
                params[b][1].append(z.reshape(n, -1))

    def _cat(parts: list[torch.Tensor]) -> torch.Tensor | None:
        return torch.cat(parts, dim=1).to(torch.float16) if parts else None

    stored = {b: (_cat(s), _cat(z)) for b, (s, z) in params.items()}
    scales, zeros = stored.pop(scheme.bits)
    assert scales is not None
    return QuantizedWeight(
        codes=codes, scales=scales, zeros=zeros, scheme=scheme, nested=stored  # type: ignore[arg-type]
    )


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """``||w - w_hat||^2 / ||w||^2`` in float64; for an all-zero ``w``: 0.0 if ``w_hat`` is too, else inf."""
    if w.shape != w_hat.shape:
        raise ValueError(f"relative_error needs equal shapes, got {tuple(w.shape)} and {tuple(w_hat.shape)}")
    ref = w.detach().to(torch.float64)
    num = float((ref - w_hat.detach().to(torch.float64)).square().sum())
    den = float(ref.square().sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den
