"""Quantisation-aware training: fake-quant layers initialised from post-training quantisation, and back.

``prepare(model, plan)`` swaps every planned ``nn.Linear`` / ``nn.Conv2d`` for a ``FakeQuantLinear`` /
``FakeQuantConv2d`` (the same walk, skips, Hessians and report as ``quantize_``). Each starts from exactly
what post-training quantisation of that layer produces (the plan's scheme: grid, group size, scale method,
GPTQ/AWQ calibration, nested precisions) and holds, as trainable parameters:

- ``weight``: the latent float weight, in the layer's own shape and basis (an AWQ layer's stored factor
  ``input_scale`` stays a fixed buffer), except for a rotated scheme (``QScheme.rotation``), whose latent is
  ``W R^T``, one latent value per code as on any other layer; the forward weight is rotated back
  (``layer_weight()`` is the latent in the layer's basis). Why: Adam's per-element steps then move single
  codes, as on an unrotated layer, and a step costs one rotation of the weight (a latent in the layer's
  basis would need a second one on the way to the codes); It starts inside the PTQ code's rounding cell, as close to the
  float weight as the cell allows (within ``LATENT_MARGIN`` of a step of the cell's centre), so the first
  forward pass reproduces the PTQ codes exactly while the latent still knows which way the float weight lay;
- ``log_scale_b{b}``: per group, the log of the scale's ratio to its PTQ value, for every stored precision
  ``b`` (learning the log keeps Adam's steps relative, whatever a layer's scale);
- ``zero_b{b}`` (asymmetric grid): the per-group zero, in code units.

The forward pass is the artifact's own formula, ``scale * (code - zero)``, with ``code = clamp(round(w / scale
+ zero), 0, cmax)`` at full precision and the truncation ``code >> (b - b')`` at ``active_bits = b'`` (the
nested precisions of ``quant.nested``), scales and zeros rounded to float16 as the artifact stores them.
Gradients pass the rounding straight through (STE); ``clamp`` stops them for latent weights outside the
grid, and the scale then gets the LSQ gradient ``code - zero - w / scale``.

``convert(model)`` swaps each fake-quant layer for the packed ``QLinear`` / ``QConv2d`` of its current codes,
scales and zeros, through ``QModule.from_quantized`` (the path ``quantize_`` takes), so the artifact is
exactly what the fake-quant forward computed. With no training, ``convert(prepare(m))`` holds the same
tensors as ``quantize_(m)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..kernels.native import rotate_autograd
from ..nn.precision import SwitchablePrecision
from ..nn.qmodule import QModule
from ..nn.swap import QuantizedLayer, QuantizeReport, apply_plan, module_references
from ..pack.accounting import bits_per_weight, packed_nbytes
from ..plan import BitPlan
from ..quant.codes import QuantizedWeight, expand_groups
from ..quant.grids import GridSpec
from ..quant.quantizer import quantize, relative_error
from ..quant.rotation import rotate, unrotate
from ..types import QScheme

__all__ = ["FakeQuantLinear", "FakeQuantConv2d", "FakeQuantMixin", "prepare", "convert", "fake_quant_layers",
           "latent_parameters", "quant_parameters", "LATENT_MARGIN"]

LATENT_MARGIN = 0.45
"""How far (in steps) from its PTQ code's level a latent weight may start: < 0.5 keeps the PTQ code."""


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.floor() - x).detach()


def _fp16_ste(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to float16 values (the artifact stores float16), gradient passed straight through."""
    return x + (x.half().float() - x).detach()


class FakeQuantMixin(SwitchablePrecision):
    """The fake-quant state and formula shared by ``FakeQuantLinear`` and ``FakeQuantConv2d``.

    Attributes: ``scheme``, ``shape`` (``(N, K)``, the weight viewed as in ``QModule``), ``weight_error``
    (of the PTQ start), ``qmodule_class`` (the packed class ``convert`` builds).
    """

    weight: nn.Parameter
    shape: tuple[int, int]
    qmodule_class: type[QModule]
    weight_error: float

    def _init_fake(self, qcls: type[QModule], float_module: nn.Module, qw: QuantizedWeight) -> None:
        scheme = qw.scheme
        self.scheme, self._active_bits, self.qmodule_class = scheme, scheme.bits, qcls
        w = qcls.weight_matrix(float_module).detach().to(torch.float32)
        self.shape = (int(w.shape[0]), int(w.shape[1]))
        self.weight_error = relative_error(w, qw.dequantize())
        for b in scheme.precisions:
            s, z = qw.scale_zero(b)
            self.register_buffer(f"scale0_b{b}", s.detach().to(torch.float32).clone())
            self.register_parameter(f"log_scale_b{b}", nn.Parameter(torch.zeros_like(s, dtype=torch.float32)))
            if z is not None:
                self.register_parameter(f"zero_b{b}", nn.Parameter(z.detach().to(torch.float32).clone()))
        inp = None if qw.input_scale is None else qw.input_scale.detach().to(torch.float32).clone()
        self.register_buffer("input_scale", inp)
        with torch.no_grad():
            self.weight.copy_(self._latent_start(w, qw).reshape(self.weight.shape).to(self.weight.dtype))

    def _adopt(self, qcls: type[QModule], float_module: nn.Module, qw: QuantizedWeight) -> Any:
        """Take ``float_module``'s bias and mode, then the fake-quant state of ``qw``; returns self."""
        bias = getattr(float_module, "bias", None)
        if bias is not None:
            with torch.no_grad():
                self.bias.copy_(bias)  # type: ignore[attr-defined]
        self._init_fake(qcls, float_module, qw)
        self.train(float_module.training)  # type: ignore[attr-defined]
        return self

    # -- the formula ------------------------------------------------------------------------------

    def _scale_zero(self, bits: int) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Float16-valued scale ``[N, K]`` and zero (``[N, K]`` or the grid's constant) at ``bits``."""
        n, k = self.shape
        gs = self.scheme.group_size
        s = _fp16_ste(getattr(self, f"scale0_b{bits}") * getattr(self, f"log_scale_b{bits}").exp())
        const = self.scheme.grid.constant_zero(bits)
        z: torch.Tensor | float = const if const is not None else expand_groups(
            _fp16_ste(getattr(self, f"zero_b{bits}")), k, gs)
        return expand_groups(s, k, gs), z

    def _stored_basis(self) -> torch.Tensor:
        v = self.weight.reshape(self.shape).to(torch.float32)  # a rotated scheme's latent is already W R^T
        return v if self.input_scale is None else v / self.input_scale

    def layer_weight(self) -> torch.Tensor:
        """The latent weight ``[N, K]`` in the layer's own basis (a rotated scheme's latent rotated back)."""
        v = self.weight.reshape(self.shape).to(torch.float32)
        return unrotate(v, self.scheme.rotation) if self.scheme.rotation else v

    def _codes(self, v: torch.Tensor, s: torch.Tensor, z: torch.Tensor | float) -> torch.Tensor:
        cmax = GridSpec(self.scheme.grid, self.scheme.bits).cmax
        return _round_ste(v / s + z).clamp(0, cmax)

    def quantized_weight(self, bits: int | None = None) -> torch.Tensor:
        """The weight the artifact will hold at ``bits`` (default ``active_bits``), differentiable, layer-shaped."""
        b = self._active_bits if bits is None else bits
        full = self.scheme.bits
        s, z = self._scale_zero(full)
        codes = self._codes(self._stored_basis(), s, z)
        if b != full:
            codes = _floor_ste(codes * (1.0 / (1 << (full - b))))
            s, z = self._scale_zero(b)
        w = (codes - z) * s
        if self.input_scale is not None:
            w = w * self.input_scale
        if self.scheme.rotation:
            w = rotate_autograd(w, self.scheme.rotation, inverse=True)
        return w.reshape(self.weight.shape).to(self.weight.dtype)

    def dampening_loss(self) -> torch.Tensor:
        """Mean squared distance, in grid steps at the stored precision, of the latent weights from their code's
        level (oscillation dampening, Nagel et al. 2022, "Overcoming Oscillations in Quantization-Aware
        Training"): the level and the scale are constants here, so the term only pulls each latent weight
        towards the centre of its rounding cell, where small updates no longer flip its code back and forth.
        Weights beyond the grid count from the end level (0 gradient there, as in the forward pass)."""
        s, z = self._scale_zero(self.scheme.bits)
        s = s.detach()
        z = z.detach() if isinstance(z, torch.Tensor) else z
        cmax = GridSpec(self.scheme.grid, self.scheme.bits).cmax
        v = (self._stored_basis() / s + z).clamp(0, cmax)
        return (v - v.detach().round()).square().mean()

    def _latent_start(self, w: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
        """Inside each PTQ code's cell, as near the float weight as ``LATENT_MARGIN`` allows (stored basis in,
        the latent's basis out: AWQ's scaling undone, a rotation kept); any element whose code would still differ
        starts at its level exactly."""
        with torch.no_grad():
            s, z = self._scale_zero(self.scheme.bits)
            inp, rot = self.input_scale, self.scheme.rotation
            v = rotate(w, rot) if rot else w
            v = v if inp is None else v / inp
            level = (qw.codes.to(torch.float32) - z) * s
            start = level + torch.maximum(torch.minimum(v - level, LATENT_MARGIN * s), -LATENT_MARGIN * s)
            moved = self._codes(start, s, z) != qw.codes.to(torch.float32)
            start = torch.where(moved, level, start)
            return start if inp is None else start * inp

    # -- export -------------------------------------------------------------------------------------

    def to_quantized(self) -> QuantizedWeight:
        """The current codes, float16 scales and zeros of every precision, as ``quantize`` returns them."""
        with torch.no_grad():
            s, z = self._scale_zero(self.scheme.bits)
            codes = self._codes(self._stored_basis(), s, z).to(torch.uint8)
            params: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
            for b in self.scheme.precisions:
                scale = (getattr(self, f"scale0_b{b}") * getattr(self, f"log_scale_b{b}").exp()).half()
                zero = getattr(self, f"zero_b{b}", None)
                params[b] = (scale, None if zero is None else zero.detach().half())
            scales, zeros = params.pop(self.scheme.bits)
            inp = None if self.input_scale is None else self.input_scale.half()
            return QuantizedWeight(codes=codes, scales=scales, zeros=zeros, scheme=self.scheme, nested=params,
                                   input_scale=inp)

    def quant_parameters(self) -> list[nn.Parameter]:
        """The learnable scales (log ratios) and zeros of every precision."""
        return [p for name, p in self.named_parameters(recurse=False) if name.startswith(("log_scale_b", "zero_b"))]

    def _fq_repr(self) -> str:
        return f"scheme={self.scheme}, active_bits={self._active_bits}"


class FakeQuantLinear(FakeQuantMixin, nn.Linear):
    """``nn.Linear`` whose forward uses ``quantized_weight()``; ``convert`` turns it into a ``QLinear``."""

    @classmethod
    def from_float(cls, qcls: type[QModule], module: nn.Linear, qw: QuantizedWeight) -> "FakeQuantLinear":
        fq = cls(module.in_features, module.out_features, bias=module.bias is not None,
                 device=module.weight.device, dtype=module.weight.dtype)
        return fq._adopt(qcls, module, qw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._fq_repr()}"


class FakeQuantConv2d(FakeQuantMixin, nn.Conv2d):
    """``nn.Conv2d`` whose forward uses ``quantized_weight()``; ``convert`` turns it into a ``QConv2d``."""

    @classmethod
    def from_float(cls, qcls: type[QModule], module: nn.Conv2d, qw: QuantizedWeight) -> "FakeQuantConv2d":
        fq = cls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                 padding=module.padding, dilation=module.dilation, groups=module.groups,
                 bias=module.bias is not None, padding_mode=module.padding_mode,
                 device=module.weight.device, dtype=module.weight.dtype)
        return fq._adopt(qcls, module, qw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._fq_repr()}"


_FAKE_FOR: dict[type[nn.Module], type[FakeQuantMixin]] = {nn.Linear: FakeQuantLinear, nn.Conv2d: FakeQuantConv2d}


def _build_fake(qcls: type[QModule], module: nn.Module, scheme: QScheme, hessian: torch.Tensor | None) -> nn.Module:
    fake = _FAKE_FOR.get(qcls.float_type)
    if fake is None:
        raise ConfigError(f"no fake-quant layer for {qcls.float_type.__name__} ({qcls.__name__}); "
                          f"quantisation-aware training covers {[t.__name__ for t in _FAKE_FOR]}")
    qcls._float_kwargs(module)  # UnsupportedLayer here skips the layer, as quantize_ does
    w = qcls.weight_matrix(module).detach().to(torch.float32)
    return fake.from_float(qcls, module, quantize(w, scheme, hessian=hessian))  # type: ignore[attr-defined]


def prepare(
    model: nn.Module,
    plan: BitPlan,
    *,
    progress: bool = True,
    filter_fn: Callable[[str, nn.Module], bool] | None = None,
    hessians: Mapping[str, torch.Tensor] | None = None,
    calibration_data: Iterable[Any] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    sequential: bool = False,
) -> QuantizeReport:
    """Swap ``plan``'s layers for fake-quant layers started from their PTQ result, in place (see the module
    docstring). Arguments and report as ``quantize_``'s (``nbytes`` is what ``convert`` will store);
    ``sequential=True`` starts from sequential PTQ (``nn.sequential``; the latent weight is its target)."""
    return apply_plan(model, plan, _build_fake, progress=progress, filter_fn=filter_fn, hessians=hessians,
                      calibration_data=calibration_data, forward=forward, verb="preparing", sequential=sequential)


def fake_quant_layers(model: nn.Module) -> list[tuple[str, FakeQuantMixin]]:
    """``(fqn, layer)`` of every fake-quant layer of ``model``."""
    return [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, FakeQuantMixin)]


def latent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The latent float weights of the fake-quant layers."""
    return [m.weight for _, m in fake_quant_layers(model)]


def quant_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable scales and zeros of the fake-quant layers."""
    return [p for _, m in fake_quant_layers(model) for p in m.quant_parameters()]


def convert(model: nn.Module) -> QuantizeReport:
    """Swap every fake-quant layer for its packed module, in place; the report lists what was converted.

    ``ConfigError`` when the model has no fake-quant layer (``prepare`` it first).
    """
    layers = fake_quant_layers(model)
    if not layers:
        raise ConfigError("convert: the model has no fake-quant layers; run bitsfusion.train.prepare(model, plan) "
                          "first (or quantize_ for post-training quantization)")
    refs = module_references(model)
    report = QuantizeReport()
    for fqn, fake in layers:
        if fqn == "":
            raise ConfigError("convert cannot swap the root module in place; wrap it, e.g. nn.Sequential(layer)")
        q = fake.qmodule_class.from_quantized(fake, fake.to_quantized(),  # type: ignore[arg-type]
                                              weight=fake.layer_weight())
        for parent, name in refs[id(fake)]:
            setattr(parent, name, q)
        report.quantized.append(QuantizedLayer(
            fqn=fqn, type=fake.qmodule_class.float_type.__name__, scheme=fake.scheme, shape=fake.shape,
            nbytes=packed_nbytes(fake.scheme, fake.shape), bits_per_weight=bits_per_weight(fake.scheme, fake.shape),
            weight_error=float(q.weight_error), rule="converted from fake quantisation",  # type: ignore[arg-type]
        ))
    return report
