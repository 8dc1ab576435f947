"""``quantize``: a float weight ``W[N, K]`` to codes and float16 scales under a ``QScheme``.

The weight is cut along ``K`` into groups of ``G = scheme.group_size`` (one group per row when
None). The full groups of all rows form one batch of group rows ``[N * (K // G), G]``; a shorter
last group (``K % G != 0``) forms a second batch ``[N, K % G]``. Nothing is ever padded, so
no statistic (min/max, least-squares sums, search errors) can see a padding value.

Example: ``K = 150, G = 64`` gives groups ``[0, 64)``, ``[64, 128)`` and the tail ``[128, 150)``;
``scales`` is ``[N, 3]`` and ``codes[n, 130]`` is read with ``scales[n, 2]``.

``scheme.calibration`` picks the quantizer; every calibrated one needs ``hessian``, float
``[K, K]``, the mean of ``x x^T`` over the layer's calibration input rows (``nn.collect_hessians``):

============ ===================================================================================
none         round-to-nearest against each group's fitted scale (``fit_groups``)
gptq         ``gptq.gptq_codes``: columns in order, errors spread by the inverse Hessian
awq          ``awq.awq_search``: per-input-channel factors, then round-to-nearest of ``W diag(s)``
awq+gptq     AWQ's factors, then GPTQ on ``W diag(s)`` with ``H' = diag(1/s) H diag(1/s)``
============ ===================================================================================

GPTQ's group scales: the scheme's method or min-max, per group whichever has the lower
input-weighted error (see ``gptq``: clipping an outlier weight with a large input is what GPTQ
cannot repair); once every code is fixed, ``refit.refit_params`` re-solves all of a row's scales
(and zeros) jointly for the least output error, keeping a row's old ones unless that lowers it. A nested GPTQ
weight is quantized for all its precisions at once (``_nested_gptq``): one code per weight, chosen for the sum of
the output errors of every precision, each precision compensating its own errors, alternated with the refit of
every precision's scales. AWQ's ``alpha`` is searched at the stored precision only.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from ..types import Calibration, QScheme, ScaleMethod
from .awq import awq_search
from .codes import QuantizedWeight
from .gptq import gptq_codes, nested_gptq_codes
from .grids import GridSpec
from .nested import GroupFit, fit_nested, nest_by_truncation, truncate_codes
from .refit import refit_params
from .rotation import rotate, rotate_hessian
from .scales import MAX_ABS_WEIGHT, als, minmax, mse_search

__all__ = ["quantize", "relative_error", "output_error", "fit_groups"]

Params = dict[int, tuple[torch.Tensor, torch.Tensor | None]]

NESTED_GPTQ_ROUNDS = 3
"""Rounds of nested GPTQ and scale refit (``_nested_gptq``); each round starts from the previous round's scales."""

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


def _check_hessian(hessian: object, scheme: QScheme, k: int, device: torch.device) -> torch.Tensor:
    if hessian is None:
        raise ConfigError(f"the {scheme.calibration.value} scheme {scheme} quantizes from the layer's inputs: pass "
                          f"hessian=H (float [{k}, {k}], the mean of x x^T over calibration rows, e.g. from "
                          f"bitsfusion.nn.collect_hessians), or use calibration='none'")
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (k, k):
        got = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise ConfigError(f"the input Hessian of a weight with K = {k} columns must be a [{k}, {k}] tensor, got {got}; "
                          "for a conv layer K is in/groups * kh * kw (im2col columns)")
    h = hessian.detach().to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(h).all()):
        raise ConfigError("the input Hessian has NaN/inf entries; recollect it from finite calibration inputs")
    return h


class _Params:
    """Per-precision scales / zeros of group rows, gathered segment by segment into ``[N, n_groups]``."""

    def __init__(self, n: int, precisions: tuple[int, ...]):
        self.n = n
        self.parts: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {b: ([], []) for b in precisions}

    def add(self, params: Params) -> None:
        for b, (scales, zeros) in self.parts.items():
            s, z = params[b]
            scales.append(s.reshape(self.n, -1))
            if z is not None:
                zeros.append(z.reshape(self.n, -1))

    def joined(self) -> Params:
        return {b: (torch.cat(s, dim=1), torch.cat(z, dim=1) if z else None) for b, (s, z) in self.parts.items()}


def _assemble(codes: torch.Tensor, params: Params, scheme: QScheme,
              input_scale: torch.Tensor | None = None) -> QuantizedWeight:
    stored = {b: (s.to(torch.float16), None if z is None else z.to(torch.float16)) for b, (s, z) in params.items()}
    scales, zeros = stored.pop(scheme.bits)
    return QuantizedWeight(codes=codes.to(torch.uint8), scales=scales, zeros=zeros, scheme=scheme, nested=stored,
                           input_scale=input_scale)


def _round_to_nearest(w32: torch.Tensor, scheme: QScheme, prefix_aware: bool, full_weight: float) -> QuantizedWeight:
    """Round-to-nearest (or prefix-aware nested) codes of validated ``w32`` ``[N, K]``, group by group."""
    n, k = w32.shape
    codes = torch.empty(n, k, dtype=torch.uint8, device=w32.device)
    params = _Params(n, scheme.precisions)
    for start, stop, length in _segments(k, scheme.group_size):
        fit = fit_groups(w32[:, start:stop].reshape(-1, length), scheme, prefix_aware, full_weight)
        codes[:, start:stop] = fit.codes.reshape(n, stop - start).to(torch.uint8)
        params.add(fit.params)
    return _assemble(codes, params.joined(), scheme)


def _gptq(w32: torch.Tensor, hessian: torch.Tensor, scheme: QScheme, input_scale: torch.Tensor | None,
          full_weight: float = 1.0) -> QuantizedWeight:
    """GPTQ codes at ``scheme.bits``, scales (zeros) refitted to the output error; with nesting, the joint
    GPTQ of every precision (``_nested_gptq``)."""
    n, k = w32.shape
    spec = GridSpec(scheme.grid, scheme.bits)

    def fit_group(x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        scale, zero, _ = _METHODS[scheme.method](x, spec)
        if scheme.method is ScaleMethod.MINMAX:
            return [(scale, zero)]
        s_mm, z_mm, _ = minmax(x, spec)
        return [(scale, zero), (s_mm, z_mm)]

    if scheme.nested:
        codes, params = _nested_gptq(w32, hessian, scheme, fit_group, full_weight)
        return _assemble(codes, params, scheme, input_scale)
    codes, scales, zeros = gptq_codes(w32, hessian, scheme, fit_group)
    scales, zeros = refit_params(w32, codes, scales, zeros, spec, scheme.effective_group_size(k), hessian)
    return _assemble(codes, {scheme.bits: (scales, zeros)}, scheme, input_scale)


def _nested_gptq(w32: torch.Tensor, hessian: torch.Tensor, scheme: QScheme, fit_group: Callable[..., list[Params]],
                 full_weight: float) -> tuple[torch.Tensor, Params]:
    """Nested GPTQ (``gptq.nested_gptq_codes``: shared codes, one error trajectory per precision), alternated
    ``NESTED_GPTQ_ROUNDS`` times with the output-aware refit of every precision's scales (zeros) for the codes
    found; each round after the first runs against the previous round's refitted scales.

    Why: GPTQ at the stored precision alone compensates only that precision's errors, and the truncated codes
    then carry the uncompensated, summed errors of every lower bit. Measured on all-MiniLM-L6-v2 (4 bits nesting
    3 and 2, asymmetric, group 64, 32 calibration batches; mean embedding cosine of the packed model at 4 / 3 / 2
    active bits, no training): 4-bit GPTQ with truncated codes and least-squares prefix scales (what this
    replaced) 0.9929 / 0.9029 / 0.5958; this with 1 round 0.9759 / 0.9436 / 0.8304, with 3 rounds 0.9784 /
    0.9551 / 0.8691; each precision quantized alone by GPTQ 0.9929 / 0.9713 / 0.8864. After 800 steps of nested
    distillation (``benchmarks/distill.py --cases nested``, docs/BENCHMARKS.md) the truncated start reached
    0.9872 / 0.9777 / 0.9268 and this one 0.9869 / 0.9776 / 0.9387. Quantizing the coarsest precision first and
    each finer one inside its parent's block (finer grids aligned to the coarse one) started at 0.9602 / 0.9274 /
    0.8833 and trained to 0.9833 / 0.9742 / 0.9413: the finer precisions keep the coarse one's narrow range.
    """
    g = scheme.effective_group_size(int(w32.shape[1]))
    weights = {scheme.bits: full_weight}
    fixed: Params | None = None
    for _ in range(NESTED_GPTQ_ROUNDS):
        codes, found = nested_gptq_codes(w32, hessian, scheme, fit_group, weights, fixed)
        fixed = {p: refit_params(w32, truncate_codes(codes, scheme.bits, p), s, z, GridSpec(scheme.grid, p), g, hessian)
                 for p, (s, z) in found.items()}
    return codes, fixed


def quantize(
    w: torch.Tensor, scheme: QScheme, *, hessian: torch.Tensor | None = None, prefix_aware: bool = True,
    full_weight: float = 1.0,
) -> QuantizedWeight:
    """Quantize ``w`` (float ``[N, K]``, any float dtype, computed in float32) with ``scheme``.

    Returns codes uint8 ``[N, K]`` in ``0 .. scheme.levels - 1``, scales float16 ``[N, n_groups]``,
    zeros float16 (asymmetric grid) and, for each nested ``b'``, the scales (and zeros) of the
    truncated codes ``codes >> (bits - b')``; with AWQ (``scheme.calibration.scales_inputs``) also
    ``input_scale`` float16 ``[K]``. A rotated scheme (``scheme.rotation``) quantizes ``W R^T`` with the
    Hessian ``R H R^T`` (``quant.rotation``): the codes are of the rotated weight, ``dequantize`` rotates back.
    Round-to-nearest (calibration ``none``): codes are nearest-rounded
    against the stored float16 scales, so ``dequantize`` reproduces exactly the error the scale search
    minimised; with nesting they are searched against the stored float16 scales of every precision
    (``prefix_aware`` and ``full_weight`` choose how, see ``fit_groups``; nested GPTQ weighs the full precision's
    output error by ``full_weight`` and ignores ``prefix_aware``).

    ``hessian``: float ``[K, K]``, the mean over calibration rows of ``x x^T`` (for a conv, the im2col
    patch rows, columns in the order of ``weight.reshape(out, -1)``). Ignored for calibration
    ``none``; a calibrated scheme without it raises ``ConfigError``, as does one of the wrong shape.
    Raises ``ValueError`` for a weight that is not 2-D, empty, non-float, non-finite or too large.
    """
    w32 = _validate(w, scheme)
    if scheme.rotation:  # everything below quantizes W R^T against the Hessian of x R^T (quant.rotation)
        w32 = rotate(w32, scheme.rotation)
    calibration = scheme.calibration
    if calibration is Calibration.NONE:
        return _round_to_nearest(w32, scheme, prefix_aware, full_weight)
    h = _check_hessian(hessian, scheme, int(w32.shape[1]), w32.device)
    if scheme.rotation:
        h = rotate_hessian(h, scheme.rotation)
    if calibration is Calibration.GPTQ:
        return _gptq(w32, h, scheme, None, full_weight)
    search = scheme.replace(nested=(), calibration=Calibration.NONE)
    found = awq_search(w32, h, lambda v: _round_to_nearest(v, search, prefix_aware, full_weight))
    inv = found.input_scale.to(torch.float32)
    if calibration is Calibration.AWQ_GPTQ:
        return _gptq(w32 / inv.unsqueeze(0), h * inv.unsqueeze(0) * inv.unsqueeze(1), scheme, found.input_scale,
                     full_weight)
    if not scheme.nested:
        q = found.qweight
        return QuantizedWeight(q.codes, q.scales, q.zeros, scheme, q.nested, input_scale=found.input_scale)
    q = _round_to_nearest(w32 / inv.unsqueeze(0), scheme, prefix_aware, full_weight)
    return QuantizedWeight(q.codes, q.scales, q.zeros, scheme, q.nested, input_scale=found.input_scale)


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


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """Relative layer-output error ``tr(dW H dW^T) / tr(W H W^T)``, ``dW = w - w_hat``, in float64.

    With ``H`` the mean of ``x x^T`` over inputs ``x``, this is ``E||x dW^T||^2 / E||x W^T||^2``:
    the squared error of the layer's output relative to its output. ``w``, ``w_hat`` ``[N, K]``,
    ``hessian`` ``[K, K]``. For ``tr(W H W^T) == 0``: 0.0 if the numerator is too, else inf.
    """
    if w.shape != w_hat.shape or hessian.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"output_error needs w, w_hat [N, K] and hessian [K, K], got {tuple(w.shape)}, "
                         f"{tuple(w_hat.shape)}, {tuple(hessian.shape)}")
    ref = w.detach().to(torch.float64)
    h = hessian.detach().to(device=ref.device, dtype=torch.float64)
    dw = ref - w_hat.detach().to(device=ref.device, dtype=torch.float64)
    num, den = float(((dw @ h) * dw).sum()), float(((ref @ h) * ref).sum())
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den
