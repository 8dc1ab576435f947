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

A nested scheme (``nested_gptq_codes``) runs one such trajectory per precision over shared codes: the code of a
column is chosen for the errors of all precisions' prefixes, and each precision then spreads its own error onto
its own copy of the later columns, so the 2-bit prefix of a 4-bit code is compensated as a 2-bit code would be.

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
from .nested import truncate_codes

__all__ = ["gptq_codes", "nested_gptq_codes", "prepare_inverse_factor", "block_size_for", "pick_weighted", "BLOCK",
           "DAMP", "CHOLESKY_TRIES"]

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
    """GPTQ codes and group parameters of ``w`` at ``scheme.bits`` (nested schemes: ``nested_gptq_codes``).

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


def nested_gptq_codes(
    w: torch.Tensor, hessian: torch.Tensor, scheme: QScheme, fit_group: FitGroup,
    weights: dict[int, float], fixed: dict[int, Params] | None = None,
) -> tuple[torch.Tensor, dict[int, Params]]:
    """GPTQ for a nested scheme: one code per weight, one error trajectory per precision.

    Every precision ``p`` of ``scheme.precisions`` keeps its own updated copy of the columns, fed
    back with its own error (the truncated code ``c >> (bits - p)`` against that copy), so each
    precision's output error is compensated as if it were quantized alone. The shared code of a
    column is the one of ``0 .. cmax`` whose prefixes minimise ``sum_p weights[p] * 4^(bits - p) * ((x_p -
    level_p) / s_p)^2`` (``weights`` default 1): each precision's error in steps of its own grid, scaled so
    that at the midpoint scaling ``s_p = 2^(bits-p) s`` it is the plain sum of the precisions' squared errors.
    Once the scales are refitted (a coarse precision's range shrinks below the midpoint scaling's), a
    coarse precision's error weighs in proportion to its own range, not to the full one: measured on
    MiniLM (3 rounds, see ``quantizer._nested_gptq``) 0.9784 / 0.9551 / 0.8691 mean cosine at 4 / 3 / 2 bits,
    against 0.9792 / 0.9531 / 0.8564 with the plain squared errors.

    Scales: ``fixed`` per precision (``[N, n_groups]`` each, e.g. refitted after a first pass), or
    when None the full precision's from ``fit_group`` on its own trajectory at group entry and each
    lower precision's its midpoint scaling (``s * 2^(b-p)``, zero ``(z - (2^(b-p) - 1) / 2) / 2^(b-p)``:
    the centre of the block of full codes its code stands for), all float16-representable.

    Returns codes float32 ``[N, K]`` at ``scheme.bits`` and ``{p: (scales, zeros)}``.
    """
    n, k = w.shape
    u = prepare_inverse_factor(hessian.to(w.device))
    h_diag = hessian.to(w.device).diagonal().to(torch.float32).clamp(min=0)
    bits, precs = scheme.bits, scheme.precisions
    specs = {p: GridSpec(scheme.grid, p) for p in precs}
    g = scheme.effective_group_size(k)
    candidates = torch.arange(specs[bits].cmax + 1, dtype=torch.float32, device=w.device).unsqueeze(0)
    prefix = {p: truncate_codes(candidates, bits, p) for p in precs}
    work = {p: w.clone() for p in precs}
    codes = torch.empty_like(w)
    found: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {p: ([], []) for p in precs}
    cur: dict[int, Params] = {}

    def enter_group(gi: int, x_full: torch.Tensor, cols: slice) -> None:
        if fixed is not None:
            for p in precs:
                s, z = fixed[p]
                cur[p] = (s[:, gi : gi + 1], None if z is None else z[:, gi : gi + 1])
            return
        s, z = pick_weighted(x_full, h_diag[cols], specs[bits], fit_group(x_full))
        cur[bits] = (s, z)
        for p in precs[:-1]:
            d = float(1 << (bits - p))
            cur[p] = ((s * d).half().float(), None if z is None else ((z - (d - 1) / 2) / d).half().float())
        for p in precs:
            found[p][0].append(cur[p][0])
            if cur[p][1] is not None:
                found[p][1].append(cur[p][1])  # type: ignore[arg-type]

    if scheme.group_size is None:
        enter_group(0, w, slice(0, k))
    block = block_size_for(scheme, k)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        cols = {p: work[p][:, b0:b1].clone() for p in precs}
        errs = {p: torch.empty_like(cols[p]) for p in precs}
        u_blk = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            if scheme.group_size is not None and (b0 + i) % g == 0:
                width = min(g, k - b0 - i)
                enter_group((b0 + i) // g, cols[bits][:, i : i + width], slice(b0 + i, b0 + i + width))
            cost = torch.zeros(n, candidates.shape[1], device=w.device)
            for p in precs:
                s, z = cur[p]
                r = cols[p][:, i : i + 1] / s - specs[p].levels(prefix[p], z)
                cost.add_(r.square_(), alpha=weights.get(p, 1.0) * float(1 << (2 * (bits - p))))
            c = cost.argmin(dim=1, keepdim=True).to(torch.float32)
            codes[:, b0 + i] = c[:, 0]
            for p in precs:
                s, z = cur[p]
                q = truncate_codes(c, bits, p)
                x = cols[p][:, i : i + 1]
                err = (x - specs[p].levels(q, z) * s) / u_blk[i, i]
                cols[p][:, i:] -= err * u_blk[i : i + 1, i:]
                errs[p][:, i : i + 1] = err
        if b1 < k:
            for p in precs:
                work[p][:, b1:] -= errs[p] @ u[b0:b1, b1:]
    if fixed is not None:
        return codes, dict(fixed)
    return codes, {p: (torch.cat(s, 1), torch.cat(z, 1) if z else None) for p, (s, z) in found.items()}
