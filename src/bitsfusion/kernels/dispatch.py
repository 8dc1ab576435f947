"""One entry for packed linear layers: the native kernel when it can run the call, else the reference.

``linear(x, packed, bias, active_bits)`` has the signature and result of ``kernels.reference.linear``.
Per call, ``choose_kernel`` picks (and says why):

============= ========================================================================================
``lut``       native bit-serial table lookup, for at most ``LUT_MAX_ROWS`` = 8 rows of ``x`` (GEMV)
``dequant``   native dequantised-tile fp32 GEMM, for more rows
``reference`` ``kernels.reference.linear``: ``_C`` not built, a weight the kernels do not take (balanced
              grid, group size not a multiple of 8, not on CPU), ``x`` not float32/16/bf16 on CPU, or
              autograd through ``x`` (the native kernels have no backward)
============= ========================================================================================

Override with the ``kernel=`` argument or ``$BITSFUSION_KERNEL`` (``auto|lut|dequant|reference``); a forced
native kernel that cannot run the call raises ``KernelUnavailable`` instead of falling back. The ISA path
is ``$BITSFUSION_ISA`` or the best here (``kernels.isa``).
"""

from __future__ import annotations

import os

import torch

from ..errors import ConfigError
from ..pack.packed import PackedWeight
from . import isa as _isa
from . import native, reference
from .repack import unsupported_reason

__all__ = ["linear", "choose_kernel", "describe", "KERNEL_CHOICES", "LUT_MAX_ROWS"]

KERNEL_CHOICES: tuple[str, ...] = ("auto", "lut", "dequant", "reference")
LUT_MAX_ROWS = 8
ENV_VAR = "BITSFUSION_KERNEL"


def _requested(kernel: str | None) -> str:
    source = "kernel argument"
    if kernel is None:
        kernel, source = os.environ.get(ENV_VAR) or "auto", f"${ENV_VAR}"
    name = str(kernel).strip().lower()
    if name not in KERNEL_CHOICES:
        raise ConfigError(f"{source}={kernel!r} is not one of {list(KERNEL_CHOICES)}")
    return name


def _fallback_reason(x: torch.Tensor, packed: PackedWeight) -> str | None:
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


def choose_kernel(x: torch.Tensor, packed: PackedWeight, kernel: str | None = None) -> tuple[str, str]:
    """``(kernel, why)`` for ``linear(x, packed, ...)``: one of ``lut``, ``dequant``, ``reference``."""
    want = _requested(kernel)
    if want == "reference":
        return "reference", "requested"
    reason = _fallback_reason(x, packed)
    if want == "auto":
        if reason is not None:
            return "reference", reason
        rows = x.numel() // max(int(x.shape[-1]), 1) if x.dim() else 1
        if rows <= LUT_MAX_ROWS:
            return "lut", f"{rows} rows <= {LUT_MAX_ROWS}: bit-serial table lookup"
        return "dequant", f"{rows} rows > {LUT_MAX_ROWS}: dequantised-tile GEMM"
    return want, "requested" if reason is None else f"requested (but {reason})"


def linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
           active_bits: int | None = None, *, kernel: str | None = None) -> torch.Tensor:
    """``y = x @ W'^T + bias``, as ``kernels.reference.linear``, on the kernel ``choose_kernel`` picks."""
    name, _ = choose_kernel(x, packed, kernel)
    if name == "reference":
        return reference.linear(x, packed, bias, active_bits)
    return native.linear(x, packed, bias, active_bits, kernel=name)


def describe() -> dict[str, object]:
    """What runs here: whether ``_C`` loaded (and why not), the ISA paths, the one selected, cpuid flags."""
    info: dict[str, object] = {"native": native.available(), "reason": native.unavailable_reason(),
                               "isas": list(_isa.supported_isas()), "features": _isa.cpu_features()}
    if native.available():
        info["isa"] = _isa.selected_isa()
    return info
