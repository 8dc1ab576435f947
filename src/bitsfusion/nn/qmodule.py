"""``QModule``: the base of quantized modules, and the registry mapping float types to them.

A quantized module holds its weight exactly as ``PackedWeight.tensors()`` names it, as
BUFFERS, so ``model.state_dict()`` yields ``{fqn}.qweight``, ``{fqn}.scales``,
``{fqn}.zeros`` (asymmetric grid), ``{fqn}.scales_b{b'}``, ... next to the float
``{fqn}.bias``. Those buffers follow ``.to(device)`` but keep their dtypes (uint8 planes,
float16 scales) through ``.half()``, ``.float()`` or ``.to(dtype)``.

The precision a module runs at, ``active_bits``, belongs to the instance and is not stored
in the state: switching it selects other planes and scales, it repacks nothing.

Registration is by decorator, keyed by the exact float type (a subclass such as
``NonDynamicallyQuantizableLinear`` is not matched: its owner may read ``.weight``)::

    @register_qmodule(nn.Linear)
    class QLinear(QModule): ...
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from ..errors import ConfigError, FormatError, UnsupportedLayer
from ..pack.packed import PackedWeight
from ..quant.codes import QuantizedWeight
from ..quant.quantizer import quantize, relative_error
from ..types import QScheme
from .precision import SwitchablePrecision

__all__ = [
    "QModule",
    "register_qmodule",
    "registered_float_types",
    "qmodule_for",
    "qmodule_class",
]

_BY_FLOAT_TYPE: dict[type[nn.Module], type["QModule"]] = {}
_BY_NAME: dict[str, type["QModule"]] = {}
Q = TypeVar("Q", bound="type[QModule]")


def register_qmodule(float_type: type[nn.Module]) -> Callable[[Q], Q]:
    """Class decorator: ``quantize_`` swaps modules of exactly ``float_type`` for the decorated class."""

    def wrap(cls: Q) -> Q:
        if float_type in _BY_FLOAT_TYPE and _BY_FLOAT_TYPE[float_type] is not cls:
            raise ConfigError(f"{float_type.__name__} already has a quantized module, "
                              f"{_BY_FLOAT_TYPE[float_type].__name__}; cannot also register {cls.__name__}")
        cls.float_type = float_type
        _BY_FLOAT_TYPE[float_type] = cls
        _BY_NAME[cls.__name__] = cls
        return cls

    return wrap


def registered_float_types() -> tuple[type[nn.Module], ...]:
    """The float module types that have a quantized module (``nn.Linear``, ``nn.Conv2d``)."""
    return tuple(_BY_FLOAT_TYPE)


def qmodule_for(module: nn.Module) -> type["QModule"] | None:
    """The quantized class for ``module``'s exact type, or None."""
    return _BY_FLOAT_TYPE.get(type(module))


def qmodule_class(name: str) -> type["QModule"]:
    """The registered quantized class called ``name`` (a manifest's ``type``); FormatError if none."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise FormatError(f"unknown quantized module type {name!r}; this BitsFusion knows {sorted(_BY_NAME)}: "
                          f"upgrade BitsFusion, or re-save the artifact") from None


class QModule(SwitchablePrecision, nn.Module):
    """A module whose weight is a ``PackedWeight`` held as buffers.

    Attributes:
        scheme: how the weight is quantized and which precisions it stores.
        shape: ``(N, K)`` of the packed weight (a conv weight viewed as ``[out, in/groups*kh*kw]``).
        weight_shape: the float weight's shape (``(N, K)`` for linear, 4-D for conv).
        weight_error: ``||W - W_hat||^2 / ||W||^2`` measured at quantization (all stored bits),
            or None for a shell not yet loaded.

    Subclasses set ``float_type`` (through ``register_qmodule``) and implement ``_float_kwargs``
    (constructor kwargs from a float module), ``module_kwargs`` (JSON-able kwargs of this
    module) and ``weight_matrix`` (the float module's weight as ``[N, K]``); their
    ``__init__(**module_kwargs, scheme=..., weight_error=..., device=..., dtype=...)`` calls
    ``_init_packed``.
    """

    float_type: ClassVar[type[nn.Module]]
    scheme: QScheme
    shape: tuple[int, int]
    weight_shape: tuple[int, ...]

    def _init_packed(
        self, scheme: QScheme, weight_shape: tuple[int, ...], weight_error: float | None, device: Any
    ) -> None:
        if not isinstance(scheme, QScheme):
            raise ConfigError(f"{type(self).__name__} needs a QScheme, got {type(scheme).__name__}")
        self.scheme = scheme
        self.weight_shape = tuple(int(d) for d in weight_shape)
        self.shape = (self.weight_shape[0], math.prod(self.weight_shape[1:]))
        self.weight_error = None if weight_error is None else float(weight_error)
        self._active_bits = scheme.bits
        for suffix, t in PackedWeight.empty(scheme, self.shape, device).tensors().items():
            self.register_buffer(suffix, t)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def _float_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def weight_matrix(module: nn.Module) -> torch.Tensor:
        """The float module's weight viewed as ``[N, K]`` (what gets quantized)."""
        raise NotImplementedError

    def module_kwargs(self) -> dict[str, Any]:
        """JSON-able constructor kwargs (without scheme), recorded in the manifest."""
        raise NotImplementedError

    @classmethod
    def from_float(cls, module: nn.Module, scheme: QScheme, *, hessian: torch.Tensor | None = None) -> "QModule":
        """Quantize ``module``'s weight with ``scheme`` into a new quantized module.

        The weight is quantized in float32 on its own device; the bias is copied as it is
        (same dtype). ``weight_error`` is measured against the full-precision dequantisation.
        ``hessian``: float ``[K, K]``, the mean of ``x x^T`` over the layer's calibration input rows
        (``collect_hessians``; for a conv the im2col rows), needed by a calibrated scheme
        (``ConfigError`` without it) and ignored otherwise.
        """
        if type(module) is not cls.float_type:
            raise UnsupportedLayer(f"{cls.__name__}.from_float takes a {cls.float_type.__name__}, "
                                   f"got {type(module).__name__}")
        cls._float_kwargs(module)  # an unsupported configuration raises before any work
        w = cls.weight_matrix(module).detach().to(torch.float32)
        return cls.from_quantized(module, quantize(w, scheme, hessian=hessian))

    @classmethod
    def from_quantized(cls, module: nn.Module, qweight: QuantizedWeight, *,
                       weight: torch.Tensor | None = None) -> "QModule":
        """A quantized module with ``module``'s configuration and bias holding ``qweight``.

        ``module`` is an instance of ``float_type`` or of a subclass (a fake-quant layer of
        ``bitsfusion.train.qat``); ``weight_error`` is measured against ``weight`` (``[N, K]``, the layer's
        basis), by default its weight. Used by ``from_float`` and by ``train.qat.convert``, so both produce
        the same packed module.
        """
        if not isinstance(module, cls.float_type):
            raise UnsupportedLayer(f"{cls.__name__}.from_quantized takes a {cls.float_type.__name__}, "
                                   f"got {type(module).__name__}")
        kwargs = cls._float_kwargs(module)
        w = (cls.weight_matrix(module) if weight is None else weight).detach().to(torch.float32)
        packed = PackedWeight.from_quantized(qweight)
        error = relative_error(w, packed.dequantize())
        bias = getattr(module, "bias", None)
        dtype = bias.dtype if bias is not None else None
        q = cls(**kwargs, scheme=qweight.scheme, weight_error=error, device=w.device, dtype=dtype)
        q.load_packed(packed)
        if bias is not None:
            with torch.no_grad():
                q.bias.copy_(bias.detach())  # type: ignore[union-attr, operator]
        q.train(module.training)
        return q

    @classmethod
    def from_spec(
        cls, entry: dict[str, Any], *, device: Any = None, dtype: torch.dtype | None = None
    ) -> "QModule":
        """An empty shell (zero buffers) from a manifest entry, ready for ``load_state_dict``.

        Called on ``QModule`` it dispatches on ``entry["type"]``. ``dtype`` is the bias dtype
        (default float32). FormatError when the entry is malformed or its shape disagrees with
        its kwargs.
        """
        target = qmodule_class(entry.get("type")) if cls is QModule else cls
        try:
            scheme = QScheme.from_dict(entry["scheme"])
            kwargs = dict(entry.get("kwargs", {}))
            shell = target(**kwargs, scheme=scheme, weight_error=entry.get("weight_error"), device=device,
                           dtype=dtype)
        except (KeyError, TypeError, ValueError) as e:  # ConfigError is a ValueError
            raise FormatError(f"cannot rebuild a {target.__name__} from its manifest entry ({type(e).__name__}: "
                              f"{e}); re-save the artifact") from None
        if list(shell.shape) != list(entry.get("shape", [])):
            raise FormatError(f"the manifest entry says shape {entry.get('shape')} but its kwargs make a "
                              f"{target.__name__} of packed shape {list(shell.shape)}; re-save the artifact")
        return shell

    def manifest_entry(self) -> dict[str, Any]:
        """``{"type", "scheme", "shape", "kwargs", "weight_error"}``: what ``from_spec`` rebuilds from."""
        return {
            "type": type(self).__name__,
            "scheme": self.scheme.to_dict(),
            "shape": list(self.shape),
            "kwargs": self.module_kwargs(),
            "weight_error": self.weight_error,
        }

    # -- the packed weight ----------------------------------------------------------------

    @property
    def packed(self) -> PackedWeight:
        """A ``PackedWeight`` view over the buffers (no copy; validated).

        The view is kept and handed out again while every buffer is the same tensor object (in-place writes
        show through it): building and validating one took ~30 us, six times the native product of a
        MiniLM-sized layer, and a new object each call also missed the kernels' per-weight cache
        (``kernels.native.fast_linear``). Replacing a buffer (``.to(device)``, ``module.qweight = t``)
        builds and validates a new view.
        """
        bufs = self._buffers
        cached = self.__dict__.get("_packed_view")
        if cached is not None:
            view, held = cached
            for name, t in held:
                if bufs.get(name) is not t:
                    break
            else:
                return view
        tensors = {s: getattr(self, s) for s in PackedWeight.tensor_specs(self.scheme, self.shape)}
        view = PackedWeight.from_tensors(self.scheme, self.shape, tensors)
        self.__dict__["_packed_view"] = (view, tuple(tensors.items()))
        return view

    def load_packed(self, packed: PackedWeight) -> None:
        """Copy ``packed``'s tensors into the buffers (scheme and shape must match)."""
        if packed.scheme != self.scheme or tuple(packed.shape) != self.shape:
            raise ConfigError(f"{type(self).__name__} holds a {self.scheme} weight of shape {list(self.shape)}, "
                              f"got {packed.scheme} {list(packed.shape)}")
        with torch.no_grad():
            for suffix, t in packed.tensors().items():
                getattr(self, suffix).copy_(t)

    @property
    def nbytes(self) -> int:
        """Stored bytes of the packed weight (planes, scales, zeros, nested scales); bias excluded."""
        return sum(t.numel() * t.element_size() for t in self.packed.tensors().values())

    def _scheme_repr(self) -> str:
        return f"scheme={self.scheme}, active_bits={self._active_bits}"

    # -- device moves keep the packed dtypes ------------------------------------------------

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> "QModule":
        """As ``nn.Module._apply``, except a packed buffer only changes device, never dtype."""
        names = [s for s in PackedWeight.tensor_specs(self.scheme, self.shape) if s in self._buffers]
        held = {s: self._buffers.pop(s) for s in names}
        try:
            super()._apply(fn, recurse)
        finally:
            for s, t in held.items():
                moved = fn(t)
                self._buffers[s] = moved if moved.dtype == t.dtype else t.to(device=moved.device)
        return self
