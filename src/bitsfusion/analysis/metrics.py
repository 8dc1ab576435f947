"""Quality of a candidate output against a reference output: cosine, neighbour overlap, MSE, SQNR.

Every metric takes two tensors of the same shape, ``ref`` (the float model's output) and
``cand`` (the quantized model's), and returns plain Python floats so results go straight
into tables and JSON. Row-wise metrics read dimension 0 as samples and flatten the rest:
``[n, d]`` embeddings, ``[n, c, h, w]`` images and ``[n, t, d]`` hidden states all work.

Example: ``ref = [[1, 0], [0, 1]]``, ``cand = [[1, 1], [0, 1]]`` gives row cosines
``[0.7071, 1.0]``, so ``cosine_stats`` is ``{"mean": 0.8536, "p5": 0.7218}`` (the 5th
percentile interpolates linearly between the sorted cosines: ``0.7071 + 0.05 * 0.2929``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["cosine_stats", "row_cosine", "topk_overlap", "output_mse", "sqnr_db"]


def _pair(ref: torch.Tensor, cand: torch.Tensor, *, rows: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both tensors as float64 (``[n, d]`` when ``rows``), after checking they are comparable."""
    if not isinstance(ref, torch.Tensor) or not isinstance(cand, torch.Tensor):
        raise ConfigError(f"metrics take tensors, got {type(ref).__name__} and {type(cand).__name__}")
    if ref.shape != cand.shape:
        raise ConfigError(f"reference shape {tuple(ref.shape)} != candidate shape {tuple(cand.shape)}")
    if ref.numel() == 0:
        raise ConfigError("metrics need at least one element; got empty tensors")
    if rows and ref.dim() < 1:
        raise ConfigError("row-wise metrics need a tensor with a sample dimension, got a scalar")
    r, c = ref.detach().double(), cand.detach().double()
    if rows:
        r, c = r.reshape(r.shape[0], -1), c.reshape(c.shape[0], -1)
    return r, c


def row_cosine(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample's candidate output to its reference: float64 ``[n]``.

    A zero row against a zero row counts as 1 (identical); a zero row against a non-zero one as 0.
    """
    r, c = _pair(ref, cand, rows=True)
    cos = F.cosine_similarity(r, c, dim=1, eps=1e-30).clamp(-1.0, 1.0)
    both_zero = (r.abs().sum(1) == 0) & (c.abs().sum(1) == 0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


def cosine_stats(ref: torch.Tensor, cand: torch.Tensor) -> dict[str, float]:
    """``{"mean", "p5"}`` of the per-sample cosines: their mean and 5th percentile (linear interpolation)."""
    cos = row_cosine(ref, cand)
    return {"mean": float(cos.mean()), "p5": float(torch.quantile(cos, 0.05))}


def _neighbours(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[n, k]`` of each row's ``k`` most cosine-similar other rows (itself excluded)."""
    unit = F.normalize(x, dim=1, eps=1e-30)
    sim = unit @ unit.T
    sim.fill_diagonal_(-math.inf)
    return sim.topk(k, dim=1).indices


def topk_overlap(ref: torch.Tensor, cand: torch.Tensor, k: int = 10) -> float:
    """Mean over samples of ``|top-k(ref) ∩ top-k(cand)| / k``: do the nearest neighbours survive?

    Neighbours are by cosine similarity among the ``n`` rows of the same tensor, excluding the
    row itself, so ``n`` must exceed ``k``. 1.0 means every sample keeps all its ``k`` neighbours.
    Example: with 4 points on a line, ``k=1``, if one point's nearest neighbour changes and the
    others' do not, the overlap is ``3/4``.
    """
    r, c = _pair(ref, cand, rows=True)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"topk_overlap: k must be a positive int, got {k!r}")
    if r.shape[0] <= k:
        raise ConfigError(f"topk_overlap: need more than k={k} samples, got {r.shape[0]}")
    nr, nc = _neighbours(r, k), _neighbours(c, k)
    # hits[i] = number of entries of nc[i] that also appear in nr[i]
    hits = (nc.unsqueeze(2) == nr.unsqueeze(1)).any(dim=2).sum(dim=1)
    return float(hits.double().mean() / k)


def output_mse(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """Mean squared difference over all elements."""
    r, c = _pair(ref, cand, rows=False)
    return float(((r - c) ** 2).mean())


def sqnr_db(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """Signal to quantization-noise ratio ``10 log10(||ref||^2 / ||ref - cand||^2)`` in dB.

    ``inf`` when the two are equal; e.g. ``cand = 1.1 * ref`` gives ``10 log10(100) = 20`` dB.
    """
    r, c = _pair(ref, cand, rows=False)
    noise = float(((r - c) ** 2).sum())
    signal = float((r**2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
