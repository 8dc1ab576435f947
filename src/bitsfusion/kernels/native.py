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

``x' = x * input_scale`` when the weight stores AWQ's per-column factor, ``x' = x R^T`` when its scheme is
rotated (``quant.rotation``; the kernel rotates each range of rows of ``x`` into its own scratch while it
prepares the activations, ``csrc/core/hadamard.cpp``). Activations of dtype float16 or
bfloat16 are computed in float32 and cast back. Work is split by 16-row blocks over
``torch.get_num_threads()`` threads; the GIL is released while the kernel runs. ``activation="gelu"``
applies GELU to each part of ``y`` right after the kernel writes it, while it is in cache (erf from a rational
approximation; within 4e-7 |y| + 1e-6 of ``F.gelu``, tested), saving the separate pass over ``y`` (and its
allocation) that ``F.gelu`` would make.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..errors import ConfigError, KernelUnavailable
from ..pack.packed import PackedWeight
from ..quant.rotation import check_block, signs, unrotate
from ..quant.rotation import rotate as _rotate_torch
from . import isa as _isa
from .reference import check_activation
from .repack import KernelWeight, kernel_weight, unsupported_reason

__all__ = ["available", "unavailable_reason", "linear", "run", "rotate", "rotate_autograd", "default_kernel",
           "KERNELS"]

KERNELS: tuple[str, ...] = ("lut", "lut32", "int8", "dequant")
_CODES = {"lut32": 0, "dequant": 1, "lut": 2, "int8": 3}  # bf_kernel in csrc/include/bitsfusion/kernels.h
_ACT_CODES: dict[str | None, int] = {None: 0, "gelu": 1}  # bf_act; the names: reference.ACTIVATIONS
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


def rotate(x2d: torch.Tensor, block: int, isa: str | None = None, inverse: bool = False) -> torch.Tensor:
    """``quant.rotation.rotate`` (or ``unrotate``) of float32 ``[M, K]`` on the native Hadamard kernel, into a new
    tensor (``x2d`` is not written). The input is checked like any array handed to ``_C`` (``ConfigError``);
    without ``_C`` the torch form of ``quant.rotation`` runs."""
    check_block(block)
    mod = _isa.NATIVE
    if mod is None:
        return (unrotate if inverse else _rotate_torch)(x2d, block)
    if x2d.dim() != 2:
        raise ConfigError(f"native.rotate: x must be 2-D [M, K], got shape {list(x2d.shape)}")
    _check_f32(x2d, "x", (int(x2d.shape[0]), int(x2d.shape[1])))
    m, k = int(x2d.shape[0]), int(x2d.shape[1])
    out = x2d.clone()
    nb = k // block
    if nb == 0 or m == 0:
        return out
    s = signs(nb * block)
    mod.hadamard_raw(out.data_ptr(), m, k, block, s.data_ptr(), inverse, _isa.isa_code(_isa.selected_isa(isa)),
                     torch.get_num_threads())
    return out


class _Rotate(torch.autograd.Function):
    """``rotate`` (or ``unrotate``) on the native kernel with its gradient: ``R`` is orthogonal, so the gradient of
    ``x R^T`` is ``g R`` (the inverse), and the other way round."""

    @staticmethod
    def forward(ctx: Any, x2d: torch.Tensor, block: int, inverse: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.block, ctx.inverse = block, inverse
        return rotate(x2d.detach(), block, inverse=inverse)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return rotate(grad.contiguous(), ctx.block, inverse=not ctx.inverse), None, None


def rotate_autograd(t: torch.Tensor, block: int, inverse: bool = False) -> torch.Tensor:
    """``quant.rotation.rotate`` / ``unrotate`` of ``t [..., K]`` with autograd, on the native kernel when ``_C``
    is built and ``t`` is a float32 CPU tensor (training's per-step rotation of a weight; the native kernel
    against the torch form: ``benchmarks/kernels.py``, docs/BENCHMARKS.md), else the torch form."""
    if _isa.NATIVE is None or t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() < 1:
        return (unrotate if inverse else _rotate_torch)(t, block)
    k = int(t.shape[-1])
    return _Rotate.apply(t.reshape(-1, k).contiguous(), block, inverse).reshape(t.shape)


def _act_code(activation: str | None) -> int:
    check_activation(activation)
    return _ACT_CODES[activation]


def run(x2d: torch.Tensor, kw: KernelWeight, packed: PackedWeight, bias: torch.Tensor | None,
        active_bits: int, kernel: str, isa: str, threads: int, activation: str | None = None) -> torch.Tensor:
    """The strict entry: ``x2d`` float32 ``[M, K]`` contiguous, ``bias`` float32 ``[N]`` or None.

    Every pointer handed to ``_C`` is checked here first (dtype, device, shape, contiguity, 4-byte
    alignment); ``ConfigError`` names the argument at fault. Returns float32 ``[M, N]``. ``x2d`` is in the
    layer's own basis: for a rotated weight (``scheme.rotation``) the kernel rotates it while it prepares the
    activations (``x2d`` is not written).
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
    act = _act_code(activation)
    sp, szp, sh, zh, zc = kw.pointers(packed, active_bits)  # checked when made; float16 scales: lut only
    if kernel != "lut":
        sh = zh = 0
    y = torch.empty((x2d.shape[0], kw.n), dtype=torch.float32)
    inp = 0 if kw.input_scale is None else kw.input_scale.data_ptr()
    rot, rot_signs = _rotation_args(packed, kw.k)
    mod.linear_raw(x2d.data_ptr(), x2d.shape[0], kw.k, kw.planes.data_ptr(), kw.bits, sp, szp, kw.n_groups, inp,
                   0 if bias is None else bias.data_ptr(), y.data_ptr(), kw.n, active_bits, kw.group_kb,
                   _CODES[kernel], _isa.isa_code(isa), max(1, int(threads)), sh, zh, act, zc, rot,
                   0 if rot_signs is None else rot_signs.data_ptr())
    return y


def _rotation_args(packed: PackedWeight, k: int) -> tuple[int, torch.Tensor | None]:
    """``(rot_block, signs)`` for ``_C``: the weight's rotation block and the float32 signs of its whole blocks
    (cached by ``quant.rotation``, so the address stays valid), or ``(0, None)`` when nothing rotates (no
    rotation, or fewer than one block of columns)."""
    block = packed.scheme.rotation
    if not block or k < block:
        return 0, None
    s = signs(k // block * block)
    if s.dtype != torch.float32 or not s.is_contiguous() or s.numel() != k // block * block:
        raise ConfigError(f"native: the rotation signs of K={k}, block {block} are not float32 [{k // block * block}]")
    return int(block), s


def default_kernel(rows: int, kw: KernelWeight, exact: bool = False, lut_max_rows: int = 4) -> str:
    """The kernel for ``rows`` rows of ``x``: table lookup up to ``lut_max_rows``, else a GEMM; ``exact``
    avoids the int8 tables and int8 activations (``lut32`` / ``dequant``)."""
    if rows <= lut_max_rows:
        return "lut32" if exact or kw.lut8_reason is not None else "lut"
    return "dequant" if exact else "int8"


def linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None,
           active_bits: int | None = None, *, kernel: str | None = None, isa: str | None = None,
           activation: str | None = None, _kw: KernelWeight | None = None) -> torch.Tensor:
    """``y = act(x @ W'^T + bias)`` natively: the signature and result of ``kernels.reference.linear``.

    Args:
        x: float32/float16/bfloat16 ``[..., K]`` on CPU (computed in float32, returned in ``x.dtype``).
        packed: a bit-plane weight ``(N, K)`` (symmetric or asymmetric grid, group size a multiple of 8
            or one group per row).
        bias: ``[N]`` or None.
        active_bits: a precision in ``packed.scheme.precisions``; None means every stored bit.
        kernel: one of ``KERNELS``; None picks as ``dispatch.choose_kernel`` (``lut`` or ``lut32`` for at most
            4 rows, else ``int8``).
        isa: ``"scalar"``, ``"avx2"``, ``"avx512"``; None: ``$BITSFUSION_ISA`` or the best one here.
        activation: None or ``"gelu"``, applied to ``y`` by the kernel (``reference.ACTIVATIONS``).

    Raises:
        KernelUnavailable: ``_C`` is not built, the ISA path does not run here, or the weight is not
            bit-planes the kernels take (``repack.unsupported_reason``).
        ConfigError: wrong feature count, dtype, device, precision, activation, or an ``x`` that needs grad.

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
    y = run(x2d, kw, packed, b, bits, chosen, isa_name, torch.get_num_threads(), activation)
    return y.reshape(*lead, n).to(x.dtype)


# ---- per-call fast path --------------------------------------------------------------------------------------
# A small layer's whole native product takes a few microseconds, so the Python work around it matters (it was
# ~24 us a call: the env look-ups, the repack cache's stamps and weak-dict look-up, the scale stamps, dtype
# copies). ``fast_linear`` runs the common call (float32 contiguous ``x``, float32 ``bias`` or None, a weight
# already seen at this precision) with one cached entry per weight: the checks that depend only on the weight
# (``unsupported_reason``, the repacked shapes, the scale tensors' layout, the precision) ran once when the
# entry was made; per call it re-checks that the weight's tensors are the same objects at the same version
# (in-place writes bump torch's version counter) and, for the codes and scales, the same address (``t.data = u``
# swaps the storage without bumping it), and checks ``x`` and ``bias`` (dtype, device, shape,
# contiguity, 4-byte alignment, grad). Anything else returns None and takes the checked path above.
import os as _os
import weakref as _weakref

_FAST: dict[int, list] = {}
_FAST_LOCK = __import__("threading").Lock()
_ISA_ENV = _isa.ENV_VAR
_F32 = torch.float32
_PARAM = torch.nn.Parameter
_NATIVE_CODES = {"lut": 2, "int8": 3, "lut32": 0, "dequant": 1}


def _fast_entry(packed: PackedWeight, active_bits: int) -> tuple | None:
    key = id(packed)
    ent = _FAST.get(key)
    qw = packed.qweight
    inp = getattr(packed, "input_scale", None)
    if ent is not None and ent[0]() is packed and ent[1] is qw and ent[2] == qw._version and ent[3] is inp \
            and (inp is None or ent[4] == inp._version) and ent[7] == qw.data_ptr():
        per = ent[5]
    else:
        if unsupported_reason(packed) is not None:
            return None
        kw = kernel_weight(packed)
        if packed.qweight is not qw:
            return None

        def drop(_ref: object, key: int = key) -> None:
            with _FAST_LOCK:
                cur = _FAST.get(key)
                if cur is not None and cur[0] is _ref:
                    del _FAST[key]

        per = {}
        with _FAST_LOCK:
            _FAST[key] = [_weakref.ref(packed, drop), qw, qw._version, inp, None if inp is None else inp._version,
                          per, kw, qw.data_ptr()]
    try:
        scales, zeros = packed.scale_zero(active_bits)
    except ConfigError:  # a precision the weight does not store: the checked path says so
        return None
    hit = per.get(active_bits)
    if hit is not None and hit[0] is scales and hit[1] == scales._version and hit[2] is zeros and \
            (zeros is None or (hit[3] == zeros._version and hit[6] == zeros.data_ptr())) and hit[5] == scales.data_ptr():
        return hit[4]
    kw = _FAST[key][6]
    sp, szp, sh, zh, zc = kw.pointers(packed, active_bits)  # shapes, dtypes, contiguity checked there
    inp_ptr = 0 if kw.input_scale is None else kw.input_scale.data_ptr()
    rot, rot_signs = _rotation_args(packed, kw.k)
    info = (kw, sp, szp, sh, zh, zc, inp_ptr, kw.planes.data_ptr(), kw.lut8_reason is None, rot,
            0 if rot_signs is None else rot_signs.data_ptr(), rot_signs)
    per[active_bits] = (scales, scales._version, zeros, None if zeros is None else zeros._version, info,
                        scales.data_ptr(), None if zeros is None else zeros.data_ptr())
    return info


def fast_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None, active_bits: int | None,
                want: str, exact: bool, lut_max_rows: int, activation: str | None = None) -> torch.Tensor | None:
    """``y`` of the common call, or None when the checked path must run it (see above). ``want``: ``auto`` or
    a native kernel name."""
    mod = _isa.NATIVE
    if mod is None or type(x) is not torch.Tensor or x.dtype is not _F32 or not x.is_cpu or x.dim() < 1:
        return None
    act = _ACT_CODES.get(activation)
    if act is None:
        return None  # the checked path names the unknown activation
    bits = packed.scheme.bits if active_bits is None else active_bits
    info = _fast_entry(packed, bits)
    if info is None:
        return None
    kw, sp, szp, sh, zh, zc, inp_ptr, planes_ptr, lut8_ok, rot, rot_ptr, _ = info
    k = kw.k
    if x.shape[-1] != k or not x.is_contiguous() or x.data_ptr() & 3:
        return None
    grad = torch.is_grad_enabled()
    if grad and x.requires_grad:
        return None
    if bias is None:
        bptr = 0
    else:
        if (type(bias) is not torch.Tensor and type(bias) is not _PARAM) or bias.dtype is not _F32 or not bias.is_cpu or bias.dim() != 1 or \
                bias.shape[0] != kw.n or not bias.is_contiguous() or bias.data_ptr() & 3 or \
                (grad and bias.requires_grad):
            return None
        bptr = bias.data_ptr()
    rows = x.numel() // k
    if rows == 0:
        return None
    if want == "auto":
        if rows <= lut_max_rows:
            want = "lut32" if exact or not lut8_ok else "lut"
        else:
            want = "dequant" if exact else "int8"
    elif want == "lut" and not lut8_ok:
        return None  # the checked path raises KernelUnavailable
    isa_env = _os.environ.get(_ISA_ENV)
    if isa_env:
        return None
    if want != "lut":
        sh = zh = 0
    y = x.new_empty(*x.shape[:-1], kw.n)  # float32 on CPU like x; ints, not a tuple: ~0.6 us cheaper
    mod.linear_raw(x.data_ptr(), rows, k, planes_ptr, kw.bits, sp, szp, kw.n_groups, inp_ptr, bptr, y.data_ptr(),
                   kw.n, bits, kw.group_kb, _NATIVE_CODES[want], _BEST_ISA, torch.get_num_threads(), sh, zh, act,
                   zc, rot, rot_ptr)
    return y


_BEST_ISA = -1 if _isa.NATIVE is None else int(_isa.NATIVE.best_isa())
