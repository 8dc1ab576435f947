"""``collect_hessians``: each layer's input Hessian ``H = E[x x^T]`` from calibration batches.

The output-aware quantizers (``QScheme.calibration``: GPTQ, AWQ) need, per layer, the mean over
its calibration input rows ``x`` (float ``[K]``) of ``x x^T``. A row is what one output of the
layer reads:

- ``nn.Linear``: each input vector ``x[..., :]`` (every token of every sequence), ``K = in_features``;
- ``nn.Conv2d``: each receptive-field patch, unfolded as ``F.unfold`` does with the layer's kernel,
  stride, padding and dilation: column ``k = (c * kh + i) * kw + j`` for channel ``c`` and kernel
  position ``(i, j)``, the column order of ``weight.reshape(out, -1)``; ``K = in * kh * kw``.
  ``padding='same'`` pads as ``F.conv2d`` does (an odd total puts the extra row/column at the end).

Grouped convolutions (``groups > 1``) are not supported: each group of output channels reads
other inputs, so one ``[K, K]`` matrix cannot describe the layer. They are left out of the result
(``quantize_`` then keeps them float with a reason), and naming one in ``names`` raises
``UnsupportedLayer``; so is a conv whose ``padding_mode`` is not ``'zeros'`` (``QConv2d`` takes none).

Sums ``X^T X`` are accumulated in float64 (row chunks of ``CHUNK_ROWS``) with the row count, and
returned as float32 means on the CPU. The Hessians are those of the float model: every layer
sees the float outputs of the layers before it (collect once, quantize every layer from them).

Example: a ``Linear(4, 3)`` fed one batch ``[2, 5, 4]`` sees 10 rows; its Hessian is ``X^T X / 10``
with ``X = batch.reshape(10, 4)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, UnsupportedLayer
from .qmodule import qmodule_for

__all__ = ["collect_hessians", "input_rows", "hessian_unsupported", "default_forward", "CHUNK_ROWS"]

CHUNK_ROWS = 1 << 15


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(**batch)`` for a mapping (e.g. a tokenizer's output), else ``model(batch)``."""
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def hessian_unsupported(module: nn.Module) -> str | None:
    """Why ``collect_hessians`` cannot describe ``module``'s inputs by one ``[K, K]`` matrix, or None."""
    if qmodule_for(module) is None:
        return f"{type(module).__name__} has no quantized module"
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return (f"Conv2d with groups={module.groups}: each group reads other inputs, so one input Hessian "
                    "cannot describe it (collect_hessians supports groups=1 only); quantize it with "
                    "calibration='none'")
        if module.padding_mode != "zeros":
            return f"Conv2d with padding_mode={module.padding_mode!r}: QConv2d supports only 'zeros'"
    return None


def _same_padding(module: nn.Conv2d) -> list[int]:
    """``F.pad`` widths ``[left, right, top, bottom]`` of ``padding='same'`` (extra at the end)."""
    out = []
    for dim in (1, 0):
        total = module.dilation[dim] * (module.kernel_size[dim] - 1)
        out += [total // 2, total - total // 2]
    return out


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows ``[M, K]`` the layer's weight ``[N, K]`` multiplies (see the module docstring)."""
    if isinstance(module, nn.Conv2d):
        if x.dim() == 3:
            x = x.unsqueeze(0)
        padding: Any = module.padding
        if padding == "same":
            x, padding = F.pad(x, _same_padding(module)), 0
        elif padding == "valid":
            padding = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


class _Accumulator:
    """``sum x x^T`` (float64) and the row count of one layer."""

    def __init__(self, module: nn.Module):
        self.module, self.total, self.count = module, None, 0

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        rows = input_rows(self.module, args[0].detach())
        for chunk in rows.split(CHUNK_ROWS):
            c = chunk.to(torch.float64)
            xtx = c.T @ c
            self.total = xtx if self.total is None else self.total.add_(xtx)
        self.count += int(rows.shape[0])

    def mean(self) -> torch.Tensor:
        assert self.total is not None
        return (self.total / self.count).to(device="cpu", dtype=torch.float32)


def _targets(model: nn.Module, names: Iterable[str] | None) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    if names is None:
        return {fqn: m for fqn, m in modules.items() if hessian_unsupported(m) is None}
    out = {}
    for fqn in names:
        if fqn not in modules:
            raise ConfigError(f"collect_hessians: the model has no module named {fqn!r}")
        reason = hessian_unsupported(modules[fqn])
        if reason is not None:
            raise UnsupportedLayer(f"collect_hessians: layer {fqn!r}: {reason}")
        out[fqn] = modules[fqn]
    return out


def collect_hessians(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Run ``forward(model, batch)`` over ``batches`` and return each layer's input Hessian.

    Args:
        model: a float model (its ``nn.Linear`` / ``nn.Conv2d`` layers are hooked).
        batches: calibration inputs, each accepted by ``forward``.
        forward: ``forward(model, batch)``; default ``default_forward`` (``model(**batch)`` or ``model(batch)``).
        names: the layers to collect (fqns as ``named_modules`` gives them); default every
            supported ``nn.Linear`` / ``nn.Conv2d`` (grouped convs left out, see the module docstring).
        progress: show a transient progress bar over the batches.

    Returns:
        ``{fqn: H}``, ``H`` float32 ``[K, K]`` on the CPU, the mean of ``x x^T`` over the layer's input
        rows; a layer the batches never reached is absent. The hooks are removed on return and on error.
        Runs under ``torch.no_grad()``; ``ConfigError`` when ``batches`` is empty.
    """
    run = default_forward if forward is None else forward
    accumulators = {fqn: _Accumulator(m) for fqn, m in _targets(model, names).items()}
    handles = [acc.module.register_forward_pre_hook(acc) for acc in accumulators.values()]
    seen = 0
    bar = _progress_bar(progress)
    try:
        with torch.no_grad():
            for batch in batches:
                run(model, batch)
                seen += 1
                if bar is not None:
                    bar.update(bar.task_ids[0], advance=1)
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.stop()
    if seen == 0:
        raise ConfigError("collect_hessians got no calibration batches; pass a non-empty list of model inputs")
    return {fqn: acc.mean() for fqn, acc in accumulators.items() if acc.count > 0}


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from rich.progress import MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("calibrating"), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    bar.add_task("", total=None)
    bar.start()
    return bar
