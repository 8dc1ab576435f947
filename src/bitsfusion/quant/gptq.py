"""GPTQ (Frantar et al., 2022): round columns in order, spreading each column's error onto the rest.

The layer output for inputs ``x`` (rows of ``X [M, K]``) is ``y = x W^T``; with
``H = X^T X / M`` (float32 ``[K, K]``, the mean of ``x x^T``) the output error of a quantized
weight is ``tr(dW H dW^T)``, ``dW = W - W_hat``. GPTQ minimises it greedily, one column at a time:
after column ``k`` is rounded, its error ``e = (w_k - q_k) / U[k, k]`` is subtracted from every
later column ``j`` as ``e * U[k, j]``, where ``U`` is the upper Cholesky factor of ``H^-1``
(``H^-1 = U^T U``, the inverse Hessian of the columns not yet quantized, row by row). Columns
run in blocks (``BLOCK``); inside a block the update is eager, and the block's accumulated error
reaches the columns after it in one matrix product (the "lazy batch" update).

Our format is kept exactly: when the loop enters group ``g`` (columns ``[gG, (g+1)G)``), the
group's scale (and zero) is fitted on the *updated* columns of the group (``fit_group``), and the
group's columns are then rounded to the nearest code of that scale. Blocks are a whole number of
groups, so a group's columns are all up to date when it is fitted. Per-channel schemes fit each
row's scale once, on the original row (as GPTQ does).

``fit_group`` offers candidates (the scheme's ``ScaleMethod``, and min-max); each row keeps the one
with the lowest *input-weighted* error ``sum_k H[k, k] (w_k - q_k)^2`` over the group. Why: ALS and
MSE clip a group's outlier weight when that lowers the plain weight error, even when its input
is the largest of the layer; GPTQ then spreads the clipped error onto the other columns, inflating
them into a fragile cancellation. Measured on MiniLM (symmetric grid, ALS, all 36 layers, 300
held-out sentences): one output.dense row of layer 0 had its weight 7.9 clipped to 3.5 and GPTQ
pushed others to 20.7; mean embedding cosine 0.936 at 4 bits and 0.367 at 3 bits, against
0.956 / 0.831 for round-to-nearest. Min-max never clips; the weighted choice keeps it where the
clipped weight's input matters.

``H`` is prepared as GPTQ prepares it: a dead column (``H[k, k] == 0``: its input is always zero)
gets ``H[k, k] = 1`` (its error then reaches no other column), and ``damp * mean(diag H)`` is added
to the diagonal (``DAMP = 0.01``; multiplied by 10 and retried, up to ``CHOLESKY_TRIES`` times, if
the factorisation fails).

Example: ``H = [[1, .9], [.9, 1]]`` (two strongly correlated inputs), ``W = [[0.3, 0.3]]`` on a grid
of step ``0.25``: nearest rounding gives ``[0.25, 0.25]``, output error ``0.05^2 * 2 * 1.9``; GPTQ
rounds column 0 to ``0.25``, moves column 1 to ``0.3 + 0.05 * 0.9 = 0.345`` and rounds it to
``0.25`` or ``0.5`` by its own updated value, so the rounding of the pair is chosen jointly.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from ..types import QScheme
from .grids import GridSpec

__all__ = ["gptq_codes", "prepare_inverse_factor", "block_size_for", "pick_weighted", "BLOCK", "DAMP",
           "CHOLESKY_TRIES"]

BLOCK = 128
DAMP = 0.01
CHOLESKY_TRIES = 5

Params = tuple[torch.Tensor, torch.Tensor | None]
FitGroup = Callable[[torch.Tensor], list[Params]]
"""``fit_group(x [N, L]) -> [(scale [N, 1], zero [N, 1] | None), ...]``: candidate fits of group rows
(float16-representable); per row, ``gptq_codes`` keeps the one of lowest input-weighted error."""


def prepare_inverse_factor(hessian: torch.Tensor, damp: float = DAMP) -> torch.Tensor:
    """``U`` float32 ``[K, K]``, upper triangular with ``U^T U = (H + damp * mean(diag H) I)^-1``.

    ``hessian`` float ``[K, K]``, symmetric positive semi-definite. Dead columns (zero diagonal)
    get a unit diagonal. Computed in float64. ``ConfigError`` when ``H`` is not positive definite
    even after ``CHOLESKY_TRIES`` ten-fold increases of the damping (e.g. a non-PSD ``H``).
    """
    h = hessian.detach().to(torch.float64).clone()
    diag = h.diagonal()
    dead = diag <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    diag[dead] = 1.0
    mean_diag = float(diag.mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(CHOLESKY_TRIES):
        lower, info = torch.linalg.cholesky_ex(h + (damp * 10**attempt) * mean_diag * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper.to(torch.float32)
    raise ConfigError(f"the input Hessian [{h.shape[0]}, {h.shape[0]}] is not positive definite even with "
                      f"{damp * 10 ** (CHOLESKY_TRIES - 1):g} * mean(diag) damping; pass the mean of x x^T over "
                      "calibration rows (nn.collect_hessians), which is positive semi-definite")


def block_size_for(scheme: QScheme, k: int) -> int:
    """Columns per lazy-update block: ``BLOCK`` rounded up to a whole number of groups."""
    if scheme.group_size is None:
        return min(BLOCK, k)
    g = scheme.group_size
    return g * max(1, -(-BLOCK // g))


def pick_weighted(x: torch.Tensor, weight: torch.Tensor, spec: GridSpec, candidates: list[Params]) -> Params:
    """Per row of ``x`` ``[N, L]``, the candidate ``(scale, zero)`` with the lowest
    ``sum_l weight[l] * (x - scale * (nearest code - zero))^2`` (``weight`` ``[L]``); ties: the first."""
    best_s, best_z = candidates[0]
    best_err = None
    for scale, zero in candidates:
        r = spec.levels(spec.nearest(x, scale, zero), zero).mul_(scale).sub_(x)
        err = (r.square_() * weight).sum(-1, keepdim=True)
        if best_err is None:
            best_err = err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, scale, best_s)
        if zero is not None and best_z is not None:
            best_z = torch.where(better, zero, best_z)
    return best_s, best_z


def gptq_codes(
    w: torch.Tensor, hessian: torch.Tensor, scheme: QScheme, fit_group: FitGroup
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """GPTQ codes and group parameters of ``w`` at ``scheme.bits`` (nested precisions are not handled here).

    Args:
        w: float32 ``[N, K]`` (validated by the caller).
        hessian: float ``[K, K]``, the mean of ``x x^T`` over the layer's calibration input rows.
        scheme: grid, bits and group size (any grid; ``nested`` is ignored).
        fit_group: candidate scale fits of group rows (see ``FitGroup``).

    Returns:
        codes float32 ``[N, K]`` (integers in ``0 .. levels - 1``), scales float32 ``[N, n_groups]``
        and zeros float32 ``[N, n_groups]`` (None on constant-zero grids), all float16-representable.
    """
    n, k = w.shape
    h = hessian.to(w.device)
    u = prepare_inverse_factor(h)
    h_diag = h.diagonal().to(torch.float32).clamp(min=0)
    spec = GridSpec(scheme.grid, scheme.bits)
    g = scheme.effective_group_size(k)
    work = w.clone()
    codes = torch.empty_like(w)
    scales: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []
    scale = zero = None
    if scheme.group_size is None:
        scale, zero = pick_weighted(w, h_diag, spec, fit_group(w))
        scales.append(scale)
        if zero is not None:
            zeros.append(zero)
    block = block_size_for(scheme, k)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        cols = work[:, b0:b1].clone()
        errs = torch.empty_like(cols)
        u_blk = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            if scheme.group_size is not None and (b0 + i) % g == 0:
                x_g = cols[:, i : i + g]
                scale, zero = pick_weighted(x_g, h_diag[b0 + i : b0 + i + x_g.shape[1]], spec, fit_group(x_g))
                scales.append(scale)
                if zero is not None:
                    zeros.append(zero)
            assert scale is not None
            x = cols[:, i : i + 1]
            q = spec.nearest(x, scale, zero)
            codes[:, b0 + i] = q[:, 0]
            err = (x - spec.levels(q, zero) * scale) / u_blk[i, i]
            cols[:, i:] -= err * u_blk[i : i + 1, i:]
            errs[:, i : i + 1] = err
        if b1 < k:
            work[:, b1:] -= errs @ u[b0:b1, b1:]
    z = torch.cat(zeros, dim=1) if zeros else None
    return codes, torch.cat(scales, dim=1), z
