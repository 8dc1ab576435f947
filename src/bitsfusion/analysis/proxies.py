"""Cheap sensitivity proxies from a layer's input second moment, and how well they rank the measured table.

A layer ``y = W x`` (``W`` float ``[N, K]``; for a conv, ``x`` is an im2col row of ``K = C_in*kh*kw``)
quantized to ``W + dW`` changes its output by ``dW x``. Over the calibration rows, with the input
second moment ``H = E[x x^T]`` (float32 ``[K, K]``, the Hessian GPTQ uses):

- ``input_weighted``: ``E||dW x||^2 / E||W x||^2 = tr(dW H dW^T) / tr(W H W^T)``, the relative output
  error of the layer itself (no model re-run; BitsFusion-style layer-local MSE);
- ``hawq``: ``(tr(H) / K) * ||dW||^2``, HAWQ's "Hessian trace times weight perturbation" with the
  layer-local Hessian of ``||W x||^2`` (whose trace is ``N tr(H)``; per weight ``tr(H)/K``). HAWQ
  proper uses the Hessian of the *model* loss by Hutchinson's estimator, which needs autograd
  through the model's ``run``; the zoo's run functions are ``inference_mode``, so the layer-local
  trace is what this toolkit can offer at no extra pass.

Example: for ``H = I`` both reduce to the weight error (``input_weighted`` to ``||dW||^2/||W||^2``).
``spearman`` reports how well a proxy orders the measured cells (1 = the same order).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..nn.calibrate import hessian_unsupported, input_rows

__all__ = ["PROXIES", "InputMoments", "input_weighted_error", "hawq_error", "spearman", "proxy_correlation"]


def input_weighted_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr(dW H dW^T) / tr(W H W^T)`` for ``w``, ``w_hat`` float ``[N, K]`` and ``hessian`` ``[K, K]``."""
    w64, h64 = w.double(), hessian.double()
    dw = w_hat.double() - w64
    num = float(((dw @ h64) * dw).sum())
    den = float(((w64 @ h64) * w64).sum())
    return num / den if den > 0 else (0.0 if num == 0 else float("inf"))


def hawq_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``(tr(H) / K) * ||w_hat - w||^2``: mean input-Hessian eigenvalue times the squared weight error."""
    k = hessian.shape[0]
    return float(torch.diagonal(hessian).double().sum() / k * (w_hat.double() - w.double()).square().sum())


PROXIES: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], float]] = {
    "input_weighted": input_weighted_error,
    "hawq": hawq_error,
}


class InputMoments:
    """Accumulates ``H = E[x x^T]`` (float32 ``[K, K]``) over the input rows of chosen layers.

    Use ``hooks()`` as forward pre-hooks (``Replayer.record(..., observers=...)``). Rows are those of
    ``nn.calibrate.input_rows`` (a Linear's input ``[..., K]`` gives ``prod(...)`` rows; a Conv2d's its
    im2col patches, channel-major like ``weight.reshape(out, -1)``); each batch's ``X^T X`` is a
    float32 product summed in float64 (``nn.collect_hessians`` multiplies in float64: the two agree
    to float32 rounding), computed once for layers reading the same tensor (q, k, v). Layers it cannot describe (grouped convs) get no ``H``.
    """

    def __init__(self, model: nn.Module, names: list[str]):
        self.modules = {n: model.get_submodule(n) for n in names}
        self._sum: dict[str, torch.Tensor] = {}
        self._rows: dict[str, int] = {}
        self._last: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def hooks(self) -> dict[str, Callable[[nn.Module, tuple[Any, ...]], None]]:
        return {n: self._hook(n) for n in self.modules}

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor) or hessian_unsupported(module) is not None:
                return
            x = args[0]
            if isinstance(module, nn.Linear) and self._last is not None and self._last[0] is x:
                xtx, n = self._last[1], self._last[2]  # q, k, v read the same tensor: one product
            else:
                rows = input_rows(module, x.detach()).float()
                xtx, n = (rows.T @ rows).double(), int(rows.shape[0])
                self._last = (x, xtx, n) if isinstance(module, nn.Linear) else None
            self._sum[name] = self._sum[name] + xtx if name in self._sum else xtx.clone()
            self._rows[name] = self._rows.get(name, 0) + n

        return hook

    def release(self) -> None:
        """Drop the reference to the last input seen (call after the pass)."""
        self._last = None

    def get(self, name: str) -> torch.Tensor | None:
        """``H`` of ``name`` (float32 ``[K, K]``), or None when it saw no usable input."""
        if name not in self._sum:
            return None
        return (self._sum[name] / max(self._rows[name], 1)).float()


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``[3, 1, 3] -> [2.5, 1, 2.5]``)."""
    order = np.argsort(x, kind="mergesort")
    _, inverse, counts = np.unique(x[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = ((ends - counts + 1 + ends) / 2)[inverse]
    return ranks


def spearman(a: list[float] | np.ndarray, b: list[float] | np.ndarray) -> float:
    """Spearman rank correlation in ``[-1, 1]`` (average ranks for ties); NaN with fewer than 2 pairs."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"spearman needs equal lengths, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 2:
        return float("nan")
    rx, ry = _ranks(x) - (x.size + 1) / 2, _ranks(y) - (y.size + 1) / 2
    den = float(np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def proxy_correlation(
    loss: Mapping[str, Mapping[str, float]], proxies: Mapping[str, Mapping[str, Mapping[str, float]]]
) -> dict[str, float]:
    """Spearman correlation of each proxy with the measured ``loss[layer][scheme]`` over all shared cells."""
    out = {}
    for proxy, cells in proxies.items():
        pairs = [(v, cells[n][k]) for n, row in loss.items() for k, v in row.items() if k in cells.get(n, {})]
        out[proxy] = spearman([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else float("nan")
    return out
