"""Nested precisions: one ``b``-bit code whose top ``b'`` bits are a good ``b'``-bit code too.

A layer stored at ``b`` bits runs at ``b' < b`` from the truncated codes ``c >> (b - b')``
with a scale (and zero) of its own per group. On the symmetric grid the truncated code with
scale ``s * 2^(b-b')`` is the midpoint of the ``2^(b-b')`` codes it stands for: ``b = 4, b' = 2``,
codes ``12..15`` truncate to ``3``, level ``3 - 1.5 = 1.5``, times ``4s`` is ``6s``, the mean of the
4-bit levels ``4.5s .. 7.5s``. A least-squares refit of that scale does better.

Two ways to choose the codes, on group rows ``x`` float32 ``[R, L]`` (see ``grids``):

- ``nest_by_truncation``: keep the direct ``b``-bit codes; refit each ``b'`` scale/zero by least
  squares on the truncated codes.
- ``fit_nested`` (prefix-aware): alternate (1) for fixed scales of every precision, choose each
  weight's code to minimise ``sum_p alpha_p * (x - s_p * (prefix_p(c) - z_p))^2`` by a beam search
  from the coarsest prefix down (candidates at each level: the two ``p``-bit codes around ``x``
  and the prefix of the direct ``b``-bit code, inside the parent's block), and (2) refit every
  scale/zero by least squares. ``alpha_p = 1 / E_p`` with ``E_p`` the truncation error at ``p`` over
  all rows of the call, so each precision's *relative* error counts alike (``full_weight`` scales
  the full precision's). The full scale is also tried shrunk (``NEST_SHRINK``): a tighter full range
  moves the block boundaries of every prefix inwards, towards where the low precisions want their
  thresholds. The best iterate per group (lowest weighted objective) is kept.

Why a gap remains (measured in ``benchmarks/nesting.py``): the prefix blocks are equal runs of
full-precision codes, so the ``b'``-bit decision thresholds sit at multiples of ``2^(b-b') * s_b``,
fixed by the full range, while a direct ``b'``-bit quantizer puts them where ``b'`` bits want them;
moving a weight across a block boundary costs its full-precision error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..types import QScheme
from .grids import GridSpec, group_sq_error
from .scales import fp16_params, least_squares_params

__all__ = ["GroupFit", "truncate_codes", "nest_by_truncation", "fit_nested", "precision_errors", "NEST_ROUNDS",
           "NEST_SHRINK", "BEAM"]

NEST_ROUNDS = 2
NEST_SHRINK = (1.0, 0.9, 0.8)
BEAM = 3
_CHUNK_ELEMENTS = 1 << 18

Params = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class GroupFit:
    """Codes float32 ``[R, L]`` at ``scheme.bits`` and, per precision, ``(scale, zero)`` ``[R, 1]``."""

    codes: torch.Tensor
    params: dict[int, Params] = field(default_factory=dict)


def truncate_codes(codes: torch.Tensor, bits: int, to_bits: int) -> torch.Tensor:
    """``codes >> (bits - to_bits)`` on float codes (exact: the divisor is a power of two)."""
    return (codes * (1.0 / (1 << (bits - to_bits)))).floor_()


def _refit(
    x: torch.Tensor, codes: torch.Tensor, scheme: QScheme, fit: GroupFit, amax: torch.Tensor,
    precisions: tuple[int, ...] | None = None,
) -> GroupFit:
    """Least-squares scales (zeros) for ``codes`` at ``precisions`` (default: all; others copied from
    ``fit``). A precision without a usable fit keeps ``fit``'s parameters or, when ``fit`` has
    none, the midpoint scaling of the full ones (``s * 2^(b-b')``, see the module docstring)."""
    params: dict[int, Params] = dict(fit.params)
    s_b, z_b = fit.params[scheme.bits]
    for p in scheme.precisions if precisions is None else precisions:
        spec = GridSpec(scheme.grid, p)
        if p in fit.params:
            s0, z0 = fit.params[p]
        else:
            d = float(1 << (scheme.bits - p))
            s0, z0 = fp16_params(s_b * d, amax, None if z_b is None else (lambda _s: (z_b - (d - 1) / 2) / d))
        params[p] = least_squares_params(x, truncate_codes(codes, scheme.bits, p), spec, amax, s0, z0)
    return GroupFit(codes, params)


def precision_errors(x: torch.Tensor, fit: GroupFit, scheme: QScheme) -> dict[int, torch.Tensor]:
    """Squared error ``[R]`` of the truncated codes at each precision of ``fit``."""
    return {
        p: group_sq_error(x, GridSpec(scheme.grid, p), s, z, codes=truncate_codes(fit.codes, scheme.bits, p))
        for p, (s, z) in fit.params.items()
    }


def nest_by_truncation(x: torch.Tensor, fit: GroupFit, scheme: QScheme) -> GroupFit:
    """Keep ``fit.codes``; add least-squares scales (zeros) for each truncated precision."""
    amax = x.abs().amax(-1, keepdim=True)
    full = GroupFit(fit.codes, {scheme.bits: fit.params[scheme.bits]})
    return _refit(x, fit.codes, scheme, full, amax, precisions=scheme.nested)


class _Levels:
    """Per-precision scales/zeros of one chunk of rows, and the weighted error of a prefix there."""

    def __init__(self, x: torch.Tensor, scheme: QScheme, params: dict[int, Params], alpha: list[float]):
        self.x, self.bits = x, list(scheme.precisions)
        self.specs = [GridSpec(scheme.grid, p) for p in self.bits]
        self.params, self.alpha = [params[p] for p in self.bits], alpha
        self.full = self.specs[-1].nearest(x, *self.params[-1])
        self.pos = [(x / s).add_(spec.zero_of(z)) for spec, (s, z) in zip(self.specs[:-1], self.params[:-1])]
        self.targets = [t.round() for t in self.pos] + [self.full]

    def err(self, j: int, q: torch.Tensor) -> torch.Tensor:
        s, z = self.params[j]
        return self.specs[j].levels(q, z).mul_(s).sub_(self.x).square_().mul_(self.alpha[j])

    def clamp(self, j: int, parent: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor:
        """``target`` clamped into the block of level-``j`` codes below the ``parent`` prefix."""
        if parent is None:
            return target.clamp(0, self.specs[j].cmax)
        width = float(1 << (self.bits[j] - self.bits[j - 1]))
        lo = parent * width
        return torch.minimum(torch.maximum(target, lo), lo + (width - 1))

    def completion(self, j: int, q: torch.Tensor) -> torch.Tensor:
        """Weighted error of levels ``> j`` when each takes its nearest code inside the block."""
        total = torch.zeros_like(q)
        for k in range(j + 1, len(self.bits)):
            q = self.clamp(k, q, self.targets[k])
            total += self.err(k, q)
        return total


def _search_rows(levels: _Levels, beam: int) -> torch.Tensor:
    """Prefix-aware codes ``[r, L]`` for one chunk (see the module docstring)."""
    m, b = len(levels.bits), levels.bits[-1]
    q: torch.Tensor | None = None
    cost = torch.zeros(1, *levels.x.shape, device=levels.x.device)
    for j in range(m - 1):
        low = levels.pos[j].floor()
        prefix = truncate_codes(levels.full, b, levels.bits[j])
        cands = torch.stack([low, low + 1, prefix])  # [3, r, L]
        parent = None if q is None else q.repeat_interleave(3, dim=0)
        q = levels.clamp(j, parent, cands.repeat(cost.shape[0], 1, 1))
        cost = cost.repeat_interleave(3, dim=0) + levels.err(j, q)
        keep = (cost + levels.completion(j, q)).topk(min(beam, q.shape[0]), dim=0, largest=False).indices
        q, cost = q.gather(0, keep), cost.gather(0, keep)
    codes = levels.clamp(m - 1, q, levels.full)
    best = (cost + levels.err(m - 1, codes)).argmin(dim=0, keepdim=True)
    return codes.gather(0, best).squeeze(0)


def _search(x: torch.Tensor, scheme: QScheme, fit: GroupFit, alpha: list[float], beam: int) -> torch.Tensor:
    out = torch.empty_like(x)
    step = max(1, _CHUNK_ELEMENTS // (3 * beam * x.shape[1]))
    for i in range(0, x.shape[0], step):
        rows = slice(i, i + step)
        chunk = {p: (s[rows], None if z is None else z[rows]) for p, (s, z) in fit.params.items()}
        out[rows] = _search_rows(_Levels(x[rows], scheme, chunk, alpha), beam)
    return out


def _objective(x: torch.Tensor, fit: GroupFit, scheme: QScheme, alpha: list[float]) -> torch.Tensor:
    errs = precision_errors(x, fit, scheme)
    return sum(a * errs[p] for a, p in zip(alpha, scheme.precisions))  # type: ignore[return-value]


def _keep_better(best: GroupFit, new: GroupFit, better: torch.Tensor) -> GroupFit:
    rows = better.unsqueeze(-1)

    def pick(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
        return None if a is None else torch.where(rows, b, a)

    params = {p: (pick(s, new.params[p][0]), pick(z, new.params[p][1])) for p, (s, z) in best.params.items()}
    return GroupFit(torch.where(rows, new.codes, best.codes), params)  # type: ignore[arg-type]


def _shrunk(x: torch.Tensor, fit: GroupFit, scheme: QScheme, ratio: float, amax: torch.Tensor) -> GroupFit:
    """Nearest codes at ``ratio`` times the full scale (same centre), with truncation scales."""
    s, z = fit.params[scheme.bits]
    spec, half = GridSpec(scheme.grid, scheme.bits), GridSpec(scheme.grid, scheme.bits).cmax / 2
    s2, z2 = fp16_params(s * ratio, amax, None if z is None else (lambda s16: half - s * (half - z) / s16))
    return nest_by_truncation(x, GroupFit(spec.nearest(x, s2, z2), {scheme.bits: (s2, z2)}), scheme)


def fit_nested(
    x: torch.Tensor, fit: GroupFit, scheme: QScheme, rounds: int = NEST_ROUNDS, beam: int = BEAM,
    full_weight: float = 1.0, shrink: tuple[float, ...] = NEST_SHRINK,
) -> GroupFit:
    """Prefix-aware codes and every precision's scales, starting from ``fit`` (direct ``b``-bit).

    Stage 1 tries, per group, the full scale times each ratio in ``shrink`` (a tighter full
    range widens the low-precision blocks) with one search-and-refit round each; stage 2 runs
    ``rounds`` more from each group's best. ``full_weight`` multiplies ``alpha`` of the full
    precision (below 1: trade full-precision error for nested-precision error).
    """
    amax = x.abs().amax(-1, keepdim=True)
    best = nest_by_truncation(x, fit, scheme)
    totals = {p: float(e.sum()) for p, e in precision_errors(x, best, scheme).items()}
    top = max(max(totals.values()), 1e-30)
    alpha = [top / max(totals[p], 1e-12 * top) for p in scheme.precisions]
    alpha[-1] *= full_weight
    best_obj = _objective(x, best, scheme, alpha)

    def step(start: GroupFit) -> None:
        nonlocal best, best_obj
        new = _refit(x, _search(x, scheme, start, alpha, beam), scheme, start, amax)
        obj = _objective(x, new, scheme, alpha)
        better = obj < best_obj
        best_obj = torch.where(better, obj, best_obj)
        best = _keep_better(best, new, better)

    for ratio in shrink:
        step(best if ratio == 1.0 else _shrunk(x, fit, scheme, ratio, amax))
    for _ in range(rounds):
        step(best)
    return best
