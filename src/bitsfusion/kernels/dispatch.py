"""One entry for packed linear layers: the native kernel when it can run the call, else the reference.

``linear(x, packed, bias, active_bits)`` has the signature and result of ``kernels.reference.linear``.
Per call, ``choose_kernel`` picks (and says why):

============= ========================================================================================
``lut``       native bit-serial lookup in uint8 tables (T-MAC style), for at most ``LUT_MAX_ROWS`` = 4
              rows of ``x`` (GEMV); error bounded by ``reference.lut8_error_bound``
``lut32``     the same with fp32 tables (exact): for ``exact=True`` layers, or a group size that is
              not a multiple of 32
``int8``      native GEMM on int8 activations (quantised per row per call) and int8-unpacked codes, for
              more rows; equal to ``reference.linear_int8_activations``
``dequant``   native dequantised-tile fp32 GEMM (exact): more rows of an ``exact=True`` layer
``reference`` ``kernels.reference.linear``: ``_C`` not built, a weight the kernels do not take (balanced
              grid, group size not a multiple of 8, not on CPU), ``x`` not float32/16/bf16 on CPU, or
              autograd through ``x`` (the native kernels have no backward; a bias that needs a gradient
              is added by autograd after the native product)
============= ========================================================================================

``exact=True`` (per call, or per layer through ``QLinear.exact`` / ``QConv2d.exact``) keeps activations and
tables in fp32 where int8 would hurt quality. Override with the ``kernel=`` argument or
``$BITSFUSION_KERNEL`` (``auto|lut|lut32|int8|dequant|reference``); a forced native kernel that cannot run
the call raises ``KernelUnavailable`` instead of falling back. The ISA path is ``$BITSFUSION_ISA`` or the
best here (``kernels.isa``).
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from ..pack.packed import PackedWeight
from . import isa as _isa
from . import native, reference
from .repack import kernel_weight, unsupported_reason

__all__ = ["linear", "choose_kernel", "fallback_reason", "requested_kernel", "describe", "KERNEL_CHOICES",
           "LUT_MAX_ROWS"]

KERNEL_CHOICES: tuple[str, ...] = ("auto", "lut", "lut32", "int8", "dequant", "reference")
# Measured on the development machine (AVX-512, one thread, 4096x4096): M = 4 lut 0.66 ms vs int8 0.94 ms at
# 4 bits; M = 8 lut 2.11 ms vs int8 1.39 ms. The table kernel's cost grows with M, the GEMM's barely.
LUT_MAX_ROWS = 4
ENV_VAR = "BITSFUSION_KERNEL"
_environ = os.environ


def requested_kernel(kernel: str | None) -> str:
    """The kernel asked for: ``kernel``, else ``$BITSFUSION_KERNEL``, else ``auto`` (``ConfigError`` if unknown)."""
    return _requested(kernel)


def _requested(kernel: str | None) -> str:
    source = "kernel argument"
    if kernel is None:
        kernel, source = os.environ.get(ENV_VAR) or "auto", f"${ENV_VAR}"
    name = str(kernel).strip().lower()
    if name not in KERNEL_CHOICES:
        raise ConfigError(f"{source}={kernel!r} is not one of {list(KERNEL_CHOICES)}")
    return name


def fallback_reason(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> str | None:
    """Why no native kernel can run ``x`` against ``packed`` (the reference must), or None when one can."""
    if not native.available():
        return f"native kernels unavailable: {native.unavailable_reason()}"
    reason = unsupported_reason(packed)
    if reason is not None:
        return reason
    if x.dtype not in native.FLOAT_DTYPES or x.device.type != "cpu":
        return f"x is {x.dtype} on {x.device}; the native kernels take float32/float16/bfloat16 on CPU"
    if torch.is_grad_enabled() and x.requires_grad:
        return "x requires grad and the native kernels have no backward"
    return None


_WHY = {"lut": "bit-serial lookup in uint8 tables", "lut32": "bit-serial lookup in fp32 tables (exact)",
        "int8": "int8-activation GEMM", "dequant": "dequantised-tile fp32 GEMM (exact)"}


def choose_kernel(x: torch.Tensor, packed: PackedWeight, kernel: str | None = None,
                  exact: bool = False, bias: torch.Tensor | None = None) -> tuple[str, str]:
    """``(kernel, why)`` for ``linear(x, packed, ...)``: one of ``lut``, ``lut32``, ``int8``, ``dequant``,
    ``reference``. ``exact`` picks ``lut32`` / ``dequant`` over the int8 kernels."""
    want = _requested(kernel)
    if want == "reference":
        return "reference", "requested"
    reason = fallback_reason(x, packed, bias)
    if want == "auto":
        if reason is not None:
            return "reference", reason
        rows = x.numel() // max(int(x.shape[-1]), 1) if x.dim() else 1
        name = native.default_kernel(rows, kernel_weight(packed), exact, LUT_MAX_ROWS)
        side = "<=" if rows <= LUT_MAX_ROWS else ">"
        extra = " (exact layer)" if exact else ""
        if name == "lut32" and not exact:
            extra = f" ({kernel_weight(packed).lut8_reason})"
        return name, f"{rows} rows {side} {LUT_MAX_ROWS}: {_WHY[name]}{extra}"
    return want, "requested" if reason is None else f"requested (but {reason})"


def linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
           active_bits: int | None = None, *, kernel: str | None = None, exact: bool = False,
           activation: str | None = None) -> torch.Tensor:
    """``y = act(x @ W'^T + bias)``, as ``kernels.reference.linear``, on the kernel ``choose_kernel`` picks.

    ``activation`` (None or a name in ``reference.ACTIVATIONS``) is applied by the native kernel, or after the
    reference product (``ConfigError`` for another name).

    The same decision as ``choose_kernel`` without composing its explanation: a small layer's whole native
    product takes a few microseconds, so the per-call Python work is kept to the checks themselves; the
    common call (float32 contiguous ``x`` on a weight seen before) goes through ``native.fast_linear``, whose
    weight-side checks are cached per weight and precision.
    """
    if bias is not None and bias.requires_grad and torch.is_grad_enabled() and not x.requires_grad:
        # A model run outside no_grad: only the bias wants a gradient, so the product stays native and autograd
        # adds the bias (the reference's autograd graph cost ~0.8 ms a call on a 384 x 384 layer, 60x the product).
        y = linear(x, packed, None, active_bits, kernel=kernel, exact=exact) + bias.to(x.dtype)
        return reference.activate(y, activation)
    if kernel is None and not _environ.get(ENV_VAR):
        want = "auto"
    else:
        want = _requested(kernel)
    if want == "reference":
        return reference.linear(x, packed, bias, active_bits, activation)
    y = native.fast_linear(x, packed, bias, active_bits, want, exact, LUT_MAX_ROWS, activation)
    if y is not None:  # the common call: checks cached per weight (native.fast_linear)
        return y
    reference.check_activation(activation)
    reason = fallback_reason(x, packed, bias)
    if reason is not None:
        if want == "auto" or unsupported_reason(packed) is not None:
            # auto falls back; a forced kernel on a weight it cannot take raises KernelUnavailable there
            return reference.linear(x, packed, bias, active_bits, activation) if want == "auto" else \
                native.linear(x, packed, bias, active_bits, kernel=want, activation=activation)
        return native.linear(x, packed, bias, active_bits, kernel=want, activation=activation)
    kw = kernel_weight(packed)
    if want == "auto":
        rows = x.numel() // max(int(x.shape[-1]), 1) if x.dim() else 1
        want = native.default_kernel(rows, kw, exact, LUT_MAX_ROWS)
    return native.linear(x, packed, bias, active_bits, kernel=want, activation=activation, _kw=kw)


def describe() -> dict[str, object]:
    """What runs here: whether ``_C`` loaded (and why not), the ISA paths, the one selected, cpuid flags."""
    info: dict[str, object] = {"native": native.available(), "reason": native.unavailable_reason(),
                               "isas": list(_isa.supported_isas()), "features": _isa.cpu_features()}
    if native.available():
        info["isa"] = _isa.selected_isa()
    return info
