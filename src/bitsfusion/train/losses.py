"""Distillation losses: the student's outputs and features against the teacher's.

Every loss is scale-free (relative to the teacher), so one weight means the same on every model and
every layer: BitsFusion's ``lambda = 0.01`` on block outputs needs no per-model retuning.

- ``relative_mse(s, t, mask)``: ``sum((s - t)^2) / sum(t^2)`` over the positions ``mask`` keeps
  (``mask`` broadcasts against ``s``: ``[batch, tokens, 1]`` drops padding tokens of a ``[batch, tokens,
  hidden]`` state); 0 for a perfect student, 1 for an all-zero one.
- ``cosine_distance(s, t)``: the mean over rows of ``1 - cos(s_i, t_i)`` (embeddings ``[batch, dim]``).
- ``kl_divergence(s_logits, t_logits, temperature)``: ``KL(softmax(t / T) || softmax(s / T)) * T^2`` per
  row, averaged (Hinton et al.'s scaling keeps gradients comparable across temperatures).
- ``feature_loss(pairs, mask)``: the mean ``relative_mse`` over ``(student, teacher)`` feature pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["relative_mse", "cosine_distance", "kl_divergence", "feature_loss"]


def _check(s: torch.Tensor, t: torch.Tensor, what: str) -> None:
    if s.shape != t.shape:
        raise ValueError(f"{what}: student {tuple(s.shape)} and teacher {tuple(t.shape)} shapes differ; "
                         "distil a student with the teacher's architecture")


def relative_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(mask * (s - t)^2) / sum(mask * t^2)`` in float32 (see the module docstring)."""
    _check(s, t, "relative_mse")
    s, t = s.float(), t.float()
    d, ref = (s - t).square(), t.square()
    if mask is not None:
        m = mask.to(torch.float32)
        d, ref = d * m, ref * m
    return d.sum() / ref.sum().clamp(min=1e-12)


def cosine_distance(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``1 - cos``; rows are the last dimension of ``[batch, dim]`` tensors."""
    _check(s, t, "cosine_distance")
    return (1.0 - F.cosine_similarity(s.float(), t.float(), dim=-1)).mean()


def kl_divergence(s_logits: torch.Tensor, t_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over rows, classes along the last dimension."""
    _check(s_logits, t_logits, "kl_divergence")
    if not temperature > 0:
        raise ValueError(f"kl_divergence: temperature must be > 0, got {temperature}")
    log_p_s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return kl.mean() * temperature**2


def feature_loss(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Mean ``relative_mse`` over ``(student, teacher)`` feature pairs; ``ValueError`` when there are none."""
    if not pairs:
        raise ValueError("feature_loss: no feature pairs (name the modules whose outputs to match)")
    return torch.stack([relative_mse(s, t, mask) for s, t in pairs]).mean()
