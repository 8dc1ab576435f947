"""AWQ-style activation-aware scaling (Lin et al., 2023): protect the input channels that carry large inputs.

Quantizing ``W' = W diag(s)`` and storing ``input_scale = 1/s`` leaves the layer's function
unchanged (``x W^T = (x / s) W'^T``) but moves the rounding error: a column scaled up by ``s_k > 1``
is rounded on a grid ``s_k`` times finer relative to its weights, at the price of a coarser
grid (a larger group scale) for the other columns of its group. Columns whose inputs are large
(``a_k = sqrt(H[k, k])``, the RMS of input ``k``) are the ones worth protecting::

    s = a^alpha / sqrt(max(a^alpha) * min(a^alpha))      (so max(s) * min(s) = 1)

``alpha`` is searched over ``ALPHAS`` (20 points in ``[0, 1]``), keeping the one with the lowest
output error ``tr(dW H dW^T)`` of ``W_hat = Q(W diag(s)) diag(1/s)``. ``alpha = 0`` is ``s = 1``,
plain rounding, so the search is never worse than round-to-nearest under its own objective.
The factors are rounded to float16 *before* quantizing (``1/s`` is what is stored), so the
error searched is exactly the stored weight's.

Example: inputs of RMS ``a = [10, 1, 1, 1]`` and ``alpha = 0.5`` give ``a^alpha = [3.16, 1, 1, 1]``,
normalised by ``sqrt(3.16 * 1) = 1.78`` to ``s = [1.78, 0.56, 0.56, 0.56]``: column 0 is rounded
1.78 times finer, the others 1.78 times coarser.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .codes import QuantizedWeight
from .scales import MAX_ABS_WEIGHT

__all__ = ["AwqResult", "awq_search", "input_factors", "output_sq_error", "ALPHAS", "MIN_REL_RMS"]

ALPHAS = tuple(i / 19 for i in range(20))
MIN_REL_RMS = 1e-4
"""Input RMS below ``MIN_REL_RMS * max(a)`` (dead or nearly dead inputs) count as that floor."""

Rounder = Callable[[torch.Tensor], QuantizedWeight]


@dataclass(frozen=True)
class AwqResult:
    """The chosen factors: ``input_scale`` float16 ``[K]`` (``1/s``), its ``alpha``, the weight
    quantized in the scaled basis (``qweight.input_scale`` set), and its output error ``tr(dW H dW^T)``."""

    input_scale: torch.Tensor
    alpha: float
    qweight: QuantizedWeight
    error: float


def output_sq_error(dw: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr(dW H dW^T) = sum((dW H) * dW)`` for ``dW`` ``[N, K]``, ``H`` ``[K, K]`` (float32 maths)."""
    return float(((dw @ hessian) * dw).sum())


def input_factors(hessian: torch.Tensor, alpha: float) -> torch.Tensor:
    """``input_scale = 1/s`` float16 ``[K]`` for ``alpha`` (see the module docstring).

    All ones when ``alpha == 0`` or every input is dead (``diag H == 0``).
    """
    rms = hessian.diagonal().to(torch.float32).clamp(min=0).sqrt()
    top = float(rms.max())
    if alpha == 0 or top == 0:
        return torch.ones_like(rms, dtype=torch.float16)
    s = rms.clamp(min=top * MIN_REL_RMS).pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    return (1.0 / s).to(torch.float16)


def awq_search(
    w: torch.Tensor, hessian: torch.Tensor, round_weight: Rounder, alphas: tuple[float, ...] = ALPHAS
) -> AwqResult:
    """The ``alpha`` (of ``alphas``) whose factors give the lowest output error, and its quantized weight.

    Args:
        w: float32 ``[N, K]``.
        hessian: float ``[K, K]``, the mean of ``x x^T`` over the layer's calibration input rows.
        round_weight: quantizes a float32 ``[N, K]`` weight without calibration (round-to-nearest
            with the scheme's scale method), e.g. ``lambda v: quantize(v, scheme_without_calibration)``.
        alphas: exponents to try; the first of equal errors wins.

    An ``alpha`` whose scaled weight would exceed ``MAX_ABS_WEIGHT`` (float16 scales) is skipped;
    ``alpha = 0`` never is.
    """
    h = hessian.to(device=w.device, dtype=torch.float32)
    best: AwqResult | None = None
    for alpha in alphas:
        inv = input_factors(h, alpha)
        scaled = w / inv.to(torch.float32).unsqueeze(0)
        if alpha != 0 and float(scaled.abs().max()) > MAX_ABS_WEIGHT:
            continue
        qw = round_weight(scaled)
        qw = QuantizedWeight(qw.codes, qw.scales, qw.zeros, qw.scheme, qw.nested, input_scale=inv)
        err = output_sq_error(w - qw.dequantize(), h)
        if best is None or err < best.error:
            best = AwqResult(inv, float(alpha), qw, err)
    if best is None:
        raise ValueError("awq_search: no alpha to try (pass alphas including 0)")
    return best
