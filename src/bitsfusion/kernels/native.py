"""Native execution of packed linear layers through ``bitsfusion._C`` (no libtorch; arrays cross as DLPack).

Importing this module warns once when ``_C`` is missing (``native kernels unavailable: <reason>; using the
torch reference``); ``available()`` says whether it loaded, and ``kernels.dispatch`` then uses
``kernels.reference`` everywhere.

Kernels (``csrc/core/kernel_impl.h``, ``csrc/core/q8_*.h``, ``csrc/isa/*/q8_*.cpp``; docs/KERNELS.md):

- ``lut`` (bit-serial GEMV, the default for ``M <= 4`` rows, T-MAC style): per 4 activations the 16 partial
  sums ``T[t][v] = sum_{i: bit i of v} x'[4t+i]`` are built once per call and quantised to uint8 with one
  scale per weight group; each plane's nibbles index them (``vpermb`` on AVX-512 VBMI, ``vpshufb`` on AVX2),
  ``vpdpbusd`` sums them in int32, planes combine MSB first (``d = 2d + p_j``), then
  ``y = sum_g s*(sc*d + (2^b'-1)*off) - s*z*sum_{k in g} x'_k + bias``. Error bounded by
  ``reference.lut8_error_bound``; cost grows with ``active_bits``. Needs groups of a multiple of 32.
- ``lut32``: the same with fp32 tables (``vpermps``), exact up to fp32 summation order.
- ``int8`` (GEMM, the default for more rows): ``x'`` quantised per row to int8 (``reference.quantize_activations``),
  tiles of codes unpacked to uint8 and multiplied with ``vpdpbusd`` (AVX-512 VNNI; ``vpmaddwd`` on AVX2);
  zero points are corrected exactly with the int sums of ``xq``. Equal to
  ``reference.linear_int8_activations`` up to fp32 rounding.
- ``dequant`` (GEMM, any ``M``): a 16-row tile ``s*c' - s*z`` is dequantised to fp32 once, then multiplied
  by 8 activation rows at a time; exact up to fp32 summation order.

``x' = x * input_scale`` when the weight stores AWQ's per-column factor. Activations of dtype float16 or
bfloat16 are computed in float32 and cast back. Work is split by 16-row blocks over
``torch.get_num_threads()`` threads; the GIL is released while the kernel runs.
"""

from __future__ import annotations

import warnings

import torch

from ..errors import ConfigError, KernelUnavailable
from ..pack.packed import PackedWeight
from . import isa as _isa
from .repack import KernelWeight, kernel_weight, unsupported_reason

__all__ = ["available", "unavailable_reason", "linear", "run", "default_kernel", "KERNELS"]

KERNELS: tuple[str, ...] = ("lut", "lut32", "int8", "dequant")
_CODES = {"lut32": 0, "dequant": 1, "lut": 2, "int8": 3}  # bf_kernel in csrc/include/bitsfusion/kernels.h
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if _isa.NATIVE is None:
    warnings.warn(f"native kernels unavailable: {_isa.UNAVAILABLE_REASON}; using the torch reference",
                  RuntimeWarning, stacklevel=2)


def available() -> bool:
    """Whether ``bitsfusion._C`` loaded."""
    return _isa.NATIVE is not None


def unavailable_reason() -> str | None:
    """Why ``_C`` did not load (None when it did)."""
    return _isa.UNAVAILABLE_REASON


def _check_f32(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise ConfigError(f"native: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32 or t.device.type != "cpu":
        raise ConfigError(f"native: {name} must be a float32 CPU tensor, got {t.dtype} on {t.device}; "
                          f"use .to('cpu', torch.float32)")
    if tuple(t.shape) != shape:
        raise ConfigError(f"native: {name} must have shape {list(shape)}, got {list(t.shape)}")
    if not t.is_contiguous():
        raise ConfigError(f"native: {name} must be contiguous (strides {t.stride()}); call .contiguous()")
    if t.data_ptr() % 4 != 0:
        raise ConfigError(f"native: {name} is not 4-byte aligned (address {t.data_ptr():#x}); "
                          f"copy it with .clone()")
    if t.requires_grad:
        raise ConfigError(f"native: {name} requires grad, the native kernels have no backward; "
                          f"use kernels.reference (or torch.no_grad())")


def run(x2d: torch.Tensor, kw: KernelWeight, packed: PackedWeight, bias: torch.Tensor | None,
        active_bits: int, kernel: str, isa: str, threads: int) -> torch.Tensor:
    """The strict entry: ``x2d`` float32 ``[M, K]`` contiguous, ``bias`` float32 ``[N]`` or None.

    Every pointer handed to ``_C`` is checked here first (dtype, device, shape, contiguity, 4-byte
    alignment); ``ConfigError`` names the argument at fault. Returns float32 ``[M, N]``.
    """
    mod = _isa.NATIVE
    if mod is None:
        raise KernelUnavailable(f"native kernels unavailable: {_isa.UNAVAILABLE_REASON}")
    if kernel not in KERNELS:
        raise ConfigError(f"native: kernel {kernel!r} is not one of {list(KERNELS)}")
    if x2d.dim() != 2:
        raise ConfigError(f"native: x must be 2-D [M, K], got shape {list(x2d.shape)}")
    _check_f32(x2d, "x", (int(x2d.shape[0]), kw.k))
    if bias is not None:
        _check_f32(bias, "bias", (kw.n,))
    if active_bits not in packed.scheme.precisions:
        raise ConfigError(f"native: this {packed.scheme} weight runs at {list(packed.scheme.precisions)} bits, "
                          f"not {active_bits!r}; store more precisions with QScheme(nested=...)")
    if kernel == "lut" and kw.lut8_reason is not None:
        raise KernelUnavailable(f"native: the lut kernel cannot run this weight: {kw.lut8_reason}")
    sp, szp, sh, zh = kw.pointers(packed, active_bits)  # checked when made; float16 pair: lut only
    if kernel != "lut":
        sh = zh = 0
    y = torch.empty((x2d.shape[0], kw.n), dtype=torch.float32)
    inp = 0 if kw.input_scale is None else kw.input_scale.data_ptr()
    mod.linear_raw(x2d.data_ptr(), x2d.shape[0], kw.k, kw.planes.data_ptr(), kw.bits, sp, szp, kw.n_groups, inp,
                   0 if bias is None else bias.data_ptr(), y.data_ptr(), kw.n, active_bits, kw.group_kb, _CODES[kernel], _isa.isa_code(isa), max(1, int(threads)), sh, zh)
    return y


def default_kernel(rows: int, kw: KernelWeight, exact: bool = False, lut_max_rows: int = 4) -> str:
    """The kernel for ``rows`` rows of ``x``: table lookup up to ``lut_max_rows``, else a GEMM; ``exact``
    avoids the int8 tables and int8 activations (``lut32`` / ``dequant``)."""
    if rows <= lut_max_rows:
        return "lut32" if exact or kw.lut8_reason is not None else "lut"
    return "dequant" if exact else "int8"


def linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
           active_bits: int | None = None, *, kernel: str | None = None, isa: str | None = None,
           _kw: KernelWeight | None = None) -> torch.Tensor:
    """``y = x @ W'^T + bias`` natively: the signature and result of ``kernels.reference.linear``.

    Args:
        x: float32/float16/bfloat16 ``[..., K]`` on CPU (computed in float32, returned in ``x.dtype``).
        packed: a bit-plane weight ``(N, K)`` (symmetric or asymmetric grid, group size a multiple of 8
            or one group per row).
        bias: ``[N]`` or None.
        active_bits: a precision in ``packed.scheme.precisions``; None means every stored bit.
        kernel: one of ``KERNELS``; None picks as ``dispatch.choose_kernel`` (``lut`` or ``lut32`` for at most
            4 rows, else ``int8``).
        isa: ``"scalar"``, ``"avx2"``, ``"avx512"``; None: ``$BITSFUSION_ISA`` or the best one here.

    Raises:
        KernelUnavailable: ``_C`` is not built, the ISA path does not run here, or the weight is not
            bit-planes the kernels take (``repack.unsupported_reason``).
        ConfigError: wrong feature count, dtype, device, precision, or an ``x`` that needs grad.

    ``_kw`` (internal): the repacked weight when ``kernels.dispatch`` has already looked it up and checked
    ``repack.unsupported_reason``, saving that work on every call.
    """
    isa_name = _isa.selected_isa(isa)
    if _kw is None:
        reason = unsupported_reason(packed)
        if reason is not None:
            raise KernelUnavailable(f"native kernels cannot run this weight: {reason}")
    n, k = packed.shape
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != k:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"native.linear: input {got} must end in {k} features for the weight [{n}, {k}]")
    if x.dtype not in FLOAT_DTYPES or x.device.type != "cpu":
        raise ConfigError(f"native.linear: x must be a float32/float16/bfloat16 CPU tensor, got {x.dtype} on "
                          f"{x.device}; use kernels.reference for other inputs")
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k).to(torch.float32).contiguous()
    if x2d.data_ptr() % 4 != 0:  # a view at an odd byte offset: copy it rather than refuse
        x2d = x2d.clone()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    bits = packed.scheme.bits if active_bits is None else active_bits
    kw = _kw if _kw is not None else kernel_weight(packed)
    chosen = kernel if kernel is not None else default_kernel(x2d.shape[0], kw)
    y = run(x2d, kw, packed, b, bits, chosen, isa_name, torch.get_num_threads())
    return y.reshape(*lead, n).to(x.dtype)
