"""``OutputProbe``: the loss of the model output when some layers' weights are swapped for quantized images.

One reference pass on the calibration batches records (a) the float outputs every loss is measured
against, (b) a ``Replayer`` trace, so a pass that changes layer ``L`` re-runs only what follows ``L``,
and (c) each layer's input second moment ``H = E[x x^T]`` (``InputMoments``), which calibrated schemes
(GPTQ, AWQ) and the proxies need. ``hessian_batches`` takes ``H`` from other (typically more) batches
in one extra pass (``nn.collect_hessians``): a Hessian wants many tokens (on MiniLM, GPTQ at 2 bits
reached mean cosine 0.837 from 128 sentences and 0.865 from 512), while ranking the layers' losses
does not, and every cell pays for the loss batches. Then:

- ``image(name, scheme)`` -> the layer's weight quantized and dequantized, float32 ``[N, K]``;
- ``loss({name: image, ...})`` -> the loss of the model with those weights, against the float outputs;
- ``rebase({name: image, ...})`` -> make those weights the new base (e.g. a whole plan), re-record the
  trace, and return its loss: later ``loss(changes)`` calls then replay the plan's prefix too.

Weights are swapped as *parameter objects* for the duration of a pass (never written in place), so
a weight tied to another module (an embedding) keeps its float value there, as with ``quantize_``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.calibrate import collect_hessians, hessian_unsupported
from ..quant import quantize
from ..types import QScheme
from .proxies import InputMoments
from .replay import Replayer

__all__ = ["OutputProbe", "weight_view"]

Loss = Callable[[torch.Tensor, torch.Tensor], float]


def weight_view(module: nn.Module) -> torch.Tensor:
    """The module's weight as ``[N, K]`` (a conv's ``[out, in/groups * kh * kw]``), detached."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1)


@contextlib.contextmanager
def substituted(model: nn.Module, images: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, each named layer's ``weight`` is a new parameter holding its image."""
    saved = []
    try:
        for name, img in images.items():
            module = model.get_submodule(name)
            original = module._parameters["weight"]
            assert original is not None
            module._parameters["weight"] = nn.Parameter(
                img.reshape(original.shape).to(original.dtype), requires_grad=False
            )
            saved.append((module, original))
        yield
    finally:
        for module, original in saved:
            module._parameters["weight"] = original


class OutputProbe:
    """Float reference outputs on ``batches`` and the loss of weight-substituted variants (module doc)."""

    def __init__(
        self,
        model: nn.Module,
        batches: Sequence[Any],
        layers: Sequence[str],
        *,
        run: Callable[[nn.Module, Any], torch.Tensor],
        loss: Loss,
        moments: bool = True,
        hessian_batches: Sequence[Any] | None = None,
    ):
        if not batches:
            raise ConfigError("the output probe needs at least one calibration batch")
        if hessian_batches is not None and not hessian_batches:
            raise ConfigError("hessian_batches is empty; pass None to take the Hessians from the loss batches")
        self.model, self.batches, self.run, self.loss_fn = model, list(batches), run, loss
        self.layers = list(layers)
        self.replay = Replayer(model, self.layers)
        separate = moments and hessian_batches is not None
        self.moments = InputMoments(model, self.layers) if moments and not separate else None
        self.refs = self.replay.record(self._call, self.batches, self.moments.hooks() if self.moments else None)
        if self.moments is not None:
            self.moments.release()
        self._hessians: dict[str, torch.Tensor] | None = None
        if separate:
            assert hessian_batches is not None
            names = [n for n in self.layers if hessian_unsupported(model.get_submodule(n)) is None]
            with torch.no_grad():
                self._hessians = collect_hessians(model, hessian_batches, forward=run, names=names, progress=False)
        self.replay.verify(self._call, self.batches, self.refs)
        self.base: dict[str, torch.Tensor] = {}
        self._cache: dict[tuple[str, str], torch.Tensor] = {}

    def _call(self, batch: Any) -> torch.Tensor:
        return self.run(self.model, batch)

    def hessian(self, name: str) -> torch.Tensor | None:
        """``H = E[x x^T]`` of ``name``'s input rows, float32 ``[K, K]`` (None when not captured)."""
        if self._hessians is not None:
            return self._hessians.get(name)
        return self.moments.get(name) if self.moments is not None else None

    def image(self, name: str, scheme: QScheme, *, cache: bool = False) -> torch.Tensor:
        """``name``'s float weight quantized by ``scheme`` and dequantized, float32 ``[N, K]``."""
        key = (name, str(scheme))
        if key in self._cache:
            return self._cache[key]
        w = weight_view(self.model.get_submodule(name)).float()
        if scheme.calibration.uses_inputs:
            h = self.hessian(name)
            if h is None:
                raise ConfigError(f"layer {name!r}: scheme {scheme} needs the layer's input Hessian, "
                                  "which was not captured (grouped or padded conv?); use calibration 'none'")
            img = quantize(w, scheme, hessian=h).dequantize()
        else:
            img = quantize(w, scheme).dequantize()
        if cache:
            self._cache[key] = img
        return img

    def clear_cache(self) -> None:
        """Drop the cached images."""
        self._cache.clear()

    def loss(self, changes: Mapping[str, torch.Tensor]) -> float:
        """Mean loss over the batches of the model with ``base`` then ``changes`` substituted."""
        images = {**self.base, **changes}
        starts = self.replay.trace.first_start[0] if self.replay.trace.first_start else {}
        first = min(changes, key=lambda n: starts.get(n, 0)) if changes else None
        outs = []
        with substituted(self.model, images), torch.no_grad():
            for i, batch in enumerate(self.batches):
                if first is None:
                    outs.append(self._call(batch))
                    continue
                with self.replay.replaying(first, i):
                    outs.append(self._call(batch))
        return float(sum(self.loss_fn(r, o) for r, o in zip(self.refs, outs)) / len(outs))

    def rebase(self, images: Mapping[str, torch.Tensor]) -> float:
        """Make ``images`` the base weights, re-record the replay trace with them; return their loss."""
        self.base = dict(images)
        with substituted(self.model, self.base), torch.no_grad():
            outs = self.replay.record(self._call, self.batches)
        return float(sum(self.loss_fn(r, o) for r, o in zip(self.refs, outs)) / len(outs))
