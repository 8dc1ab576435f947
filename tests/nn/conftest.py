"""Helpers for the nn tests: the relative output error used by every accuracy threshold."""

from __future__ import annotations

import torch


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``||y - ref||^2 / ||ref||^2`` (the squared relative error; 1e-4 is 40 dB SQNR)."""
    ref = ref.detach().double()
    return float((y.detach().double() - ref).pow(2).sum() / ref.pow(2).sum())
