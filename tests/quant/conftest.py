"""Weights for the quantizer tests: Gaussian, heavy-tailed (Student-t, df 4) and Laplace, seeded."""

from __future__ import annotations

import torch

DISTRIBUTIONS = ("normal", "student_t", "laplace")


def random_weight(n: int, k: int, seed: int = 0, dist: str = "normal", scale: float = 0.02) -> torch.Tensor:
    """A float32 ``[n, k]`` weight drawn from ``dist`` with its own generator (no global RNG)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=gen)
    if dist == "student_t":
        chi2 = torch.randn(4, n, k, generator=gen).square().sum(0)
        z = z / (chi2 / 4).sqrt()
    elif dist == "laplace":
        u = torch.rand(n, k, generator=gen).clamp(1e-7, 1 - 1e-7) - 0.5
        z = -torch.sign(u) * torch.log1p(-2 * u.abs())
    elif dist != "normal":
        raise ValueError(f"unknown distribution {dist!r}")
    return scale * z


def calibration_inputs(k: int, m: int = 2048, seed: int = 1, loud_every: int = 8, loud: float = 10.0) -> torch.Tensor:
    """Correlated, anisotropic inputs float32 ``[m, k]``: Gaussian rows mixed by a random matrix
    (correlated channels), every ``loud_every``-th channel ``loud`` times larger."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(k) + 0.5 * torch.randn(k, k, generator=gen) / k**0.5
    x = torch.randn(m, k, generator=gen) @ mix
    x[:, ::loud_every] *= loud
    return x


def anisotropic_hessian(k: int, **kwargs: object) -> torch.Tensor:
    """``X^T X / m`` float32 ``[k, k]`` of ``calibration_inputs``."""
    x = calibration_inputs(k, **kwargs)  # type: ignore[arg-type]
    return x.T @ x / x.shape[0]
