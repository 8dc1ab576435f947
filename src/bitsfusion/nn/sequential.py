"""Sequential calibration: each layer's Hessian from the partly quantized model, and a target weight that
reproduces the float model's output from those inputs.

``collect_hessians`` describes every layer by the float model's inputs, so each layer is quantized as if
the layers before it were exact. They are not: at 3 bits and below the error of every earlier layer reaches
a layer's input, and nothing downstream answers it. With ``quantize_(..., calibration_data=batches,
sequential=True)`` the planned layers are quantized in the order the forward pass first calls them, and
layer ``l`` (weight ``W [N, K]``) is fitted to the float layer's output ``X W^T`` from the inputs ``X~`` it
gets in the partly quantized model (GPTQ's "true sequential" order plus the asymmetric target of
GPTAQ / Qronos-style calibration):

    minimise ||X W^T - X~ W'^T||^2 + lambda ||W' - W||^2 over W'
    W* = (W C^T + lambda W) (H~ + lambda I)^-1,   H~ = X~^T X~ / M,   C = X~^T X / M,

``lambda = ridge * mean(diag H~)``; then ``||X W^T - X~ W_hat^T||^2 = const + tr((W_hat - W*) H~ (W_hat - W*)^T)``,
which is exactly GPTQ's objective for the weight ``W*`` under the Hessian ``H~``: the layer's calibrated
quantizer (``QScheme.calibration``) runs on ``W*`` with ``H~``. The ridge pulls ``W*`` toward ``W``, not
toward 0: a plain damped inverse shrank every weight and cost 0.06 mean cosine on MiniLM at 3 bits.

Rows: ``X`` and ``X~`` are the same batch's rows (``calibrate.input_rows``) of the same layer in the float and
in the partly quantized model, so they pair one to one. The float pass puts the float originals of the layers
already swapped back for the pass (no second copy of the model); a pass stops as soon as the stage's input
has been seen (``_Seen``), unless a layer of the stage runs more than once per forward.

Stages: consecutive layers (in first-call order) fed the same input tensor (attention's q, k, v) share one
``(H~, C)``. Layers whose scheme does not read inputs (round to nearest) are swapped before the first stage,
so every stage sees them quantized. Cost: two forward passes per stage over the batches (each stopped early),
plus ``2 K^2`` per row for ``H~`` and ``C``: float32 products of at most ``CHUNK_ROWS`` rows summed in
float64 (float64 products throughout took 3/4 of MiniLM's 4-minute run on 2048 sentences).

Measured on MiniLM (``benchmarks/mixed.py``, the exact plan at <= 3.0 stored bits, GPTQ, reference kernels):
mean cosine 0.964 with the float Hessians; 0.962 with sequential Hessians and the target ``W`` (no gain);
0.974 with the target ``W*`` on the 512 calibration sentences, 0.977 on 2048.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .calibrate import default_forward, input_rows

CHUNK_ROWS = 4096  # rows per float32 product; the sums across chunks and batches are float64

__all__ = ["first_call_order", "stage_statistics", "target_weight", "RIDGE", "MIN_ROWS_PER_INPUT"]

RIDGE = 0.1
MIN_ROWS_PER_INPUT = 8
"""Below this many calibration rows per input feature ``quantize_`` warns: on MiniLM, 2 batches (about 1000
rows for the 1536-input layers) made the 3-bit plan worse than without sequential (mean cosine 0.896 vs 0.917),
512 sentences (about 8 rows per input there) better (0.974 vs 0.964)."""


class _Seen(BaseException):
    """Raised by a capture hook to end a forward pass once its stage's input is recorded (a BaseException,
    so a model's own ``except Exception`` does not swallow it)."""


def _unfold_key(module: nn.Module) -> tuple:
    if isinstance(module, nn.Conv2d):
        return ("conv", module.kernel_size, module.stride, module.padding, module.dilation)
    return ("linear",)


def first_call_order(
    model: nn.Module, modules: dict[str, nn.Module], batch: Any, forward: Callable[[nn.Module, Any], Any] | None = None
) -> tuple[list[list[str]], set[str]]:
    """``(stages, repeated)``: ``modules`` (fqn -> module of ``model``) in the order one forward pass of ``batch``
    first calls them, grouped into stages of consecutive layers fed the same input tensor (and unfolded alike),
    and the fqns called more than once in that pass. Layers the pass never calls are left out."""
    run = default_forward if forward is None else forward
    order: list[str] = []
    first: dict[str, Any] = {}
    calls: dict[str, int] = {}

    def hook_for(fqn: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            calls[fqn] = calls.get(fqn, 0) + 1
            if fqn not in first:
                first[fqn] = args[0]
                order.append(fqn)
        return hook

    handles = [m.register_forward_pre_hook(hook_for(fqn)) for fqn, m in modules.items()]
    try:
        with torch.no_grad():
            run(model, batch)
    finally:
        for h in handles:
            h.remove()
    stages: list[list[str]] = []
    for fqn in order:
        prev = stages[-1][0] if stages else None
        if prev is not None and first[prev] is first[fqn] and \
                _unfold_key(modules[prev]) == _unfold_key(modules[fqn]):
            stages[-1].append(fqn)
        else:
            stages.append([fqn])
    return stages, {f for f, c in calls.items() if c > 1}


def _capture(model: nn.Module, module: nn.Module, batch: Any, run: Callable[[nn.Module, Any], Any],
             stop: bool) -> list[torch.Tensor]:
    """The input rows of every call of ``module`` in one forward pass of ``batch`` (the pass ends after the
    first call when ``stop``)."""
    rows: list[torch.Tensor] = []

    def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        rows.append(input_rows(m, args[0].detach()))
        if stop:
            raise _Seen

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            run(model, batch)
    except _Seen:
        pass
    finally:
        handle.remove()
    return rows


def stage_statistics(
    model: nn.Module,
    module: nn.Module,
    batches: Iterable[Any],
    float_pass: Callable[[], Any],
    quant_pass: Callable[[], Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    stop_early: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(H~, C, rows)`` of ``module``'s inputs: ``H~ = X~^T X~ / M`` and ``C = X~^T X / M`` (float64 ``[K, K]``),
    ``X`` from ``model`` after ``float_pass()`` (the float layers in place) and ``X~`` after ``quant_pass()``
    (the quantized ones), batch by batch. ``ConfigError`` when the two passes give different row counts (a
    forward whose shapes depend on the weights) or no batch reaches ``module``."""
    run = default_forward if forward is None else forward
    h = c = None
    count = 0
    for batch in batches:
        float_pass()
        xs = _capture(model, module, batch, run, stop_early)
        quant_pass()
        xq = _capture(model, module, batch, run, stop_early)
        if [t.shape for t in xs] != [t.shape for t in xq]:
            raise ConfigError("sequential calibration: the float and the partly quantized model fed a layer "
                              f"inputs of different shapes ({[list(t.shape) for t in xs]} vs "
                              f"{[list(t.shape) for t in xq]}); use sequential=False for this model")
        for a, b in zip(xs, xq):
            for a_rows, b_rows in zip(a.split(CHUNK_ROWS), b.split(CHUNK_ROWS)):
                a32, b32 = a_rows.to(torch.float32), b_rows.to(torch.float32)
                bh, bc = (b32.T @ b32).to(torch.float64), (b32.T @ a32).to(torch.float64)
                h = bh if h is None else h.add_(bh)
                c = bc if c is None else c.add_(bc)
            count += int(a.shape[0])
    quant_pass()
    if h is None or c is None or count == 0:
        raise ConfigError("sequential calibration: no calibration batch reached the layer")
    return h / count, c / count, count


def target_weight(w: torch.Tensor, h: torch.Tensor, c: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """``W* = (W C^T + lambda W)(H~ + lambda I)^-1``, ``lambda = ridge * mean(diag H~)`` (see the module docstring).

    ``w`` float ``[N, K]``; ``h``, ``c`` float ``[K, K]``. Returns float32 ``[N, K]``. ``ridge`` must be > 0
    (``ConfigError`` otherwise): the ridge keeps ``W*`` near ``W`` where the inputs do not determine it."""
    if not ridge > 0:
        raise ConfigError(f"sequential calibration: ridge must be > 0, got {ridge!r}")
    w64, h64, c64 = w.detach().to(torch.float64), h.to(torch.float64), c.to(torch.float64)
    lam = ridge * float(h64.diagonal().clamp(min=0).mean())
    if lam <= 0:  # every input zero: the output is the bias whatever the weight
        return w.detach().to(torch.float32).clone()
    eye = torch.eye(h64.shape[0], dtype=torch.float64, device=h64.device)
    rhs = w64 @ c64.T + lam * w64  # [N, K]; W* (H~ + lam I) = rhs, H~ symmetric
    lower = torch.linalg.cholesky(h64 + lam * eye)
    out = torch.cholesky_solve(rhs.T, lower).T
    return out.to(torch.float32)
