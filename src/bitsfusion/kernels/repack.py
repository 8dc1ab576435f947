"""Load-time repacking of canonical bit-planes into the native kernels' tiled layout (the artifact stays canonical).

Canonical (``pack.bitplanes``): ``qweight`` uint8 ``[b, N, ceil(K/8)]``, plane ``j`` = bit ``b-1-j`` (MSB first),
element ``k`` at bit ``k % 8`` of byte ``k // 8``. Kernel layout (``csrc/include/bitsfusion/kernels.h``)::

    planes  uint8   [NB, b, Q, 64]    planes[nb, j, q, 4*r + p] = qweight[j, 16*nb + r, 4*q + p]
                                      (rows past N and bytes past ceil(K/8) are 0)
    scales  float32 [NB, NG, 16]      scale of precision b' for row 16*nb + r, group g
    szs     float32 [NB, NG, 16]      scale * zero (zero = 2^(b'-1) - 1/2 on the symmetric grid)

with ``NB = ceil(N/16)``, ``Q = ceil(K/32)``. One 64-byte vector holds 16 rows x 4 consecutive plane bytes
(32 codes' bit ``j`` per row), one row per 32-bit lane: byte ``p``'s low nibble indexes the table of
activations ``32q+8p .. +3``, its high nibble that of ``32q+8p+4 .. +7`` (so a ``vpermb`` looks up the
four tables of a lane at once, and ``vpdpbusd`` sums a row's lookups in its own lane). Planes are contiguous
per row block, so running at ``b' < b`` reads only the first ``b'`` of them, with no repacking. Example:
``N=20, K=40, b=3`` gives ``planes [2, 3, 2, 64]``; ``planes[1, 0, 1, 4*3 + 0]`` is ``qweight[0, 19, 4]``.

The repacked form is cached per ``qweight`` tensor (by identity, invalidated by in-place writes through
torch's version counter), and each precision's scales per their source tensors, so a module's forward
repacks once and ``set_active_bits`` costs at most one small scale conversion the first time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import ConfigError
from ..pack.packed import PackedWeight

__all__ = ["KernelWeight", "kernel_weight", "unsupported_reason", "repack_planes", "block_rows"]

_LOCK = threading.Lock()
_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _stamp(*ts: torch.Tensor | None) -> tuple:
    return tuple((None if t is None else (t.data_ptr(), t._version, tuple(t.shape))) for t in ts)


def unsupported_reason(packed: PackedWeight) -> str | None:
    """Why the native kernels cannot run this weight, or None when they can."""
    scheme = packed.scheme
    if not scheme.grid.nests:
        return (f"the {scheme.grid.value} grid is stored as base-{scheme.levels} words, not bit-planes; "
                f"it runs on kernels.reference")
    if packed.qweight.device.type != "cpu":
        return f"the weight is on {packed.qweight.device}, the native kernels run on CPU"
    n_groups = scheme.n_groups(packed.shape[1])
    if n_groups > 1 and scheme.group_size % 8 != 0:  # type: ignore[operator]
        return f"group_size {scheme.group_size} is not a multiple of 8 (groups must start on plane bytes)"
    if packed.shape[1] >= 1 << 17:
        return f"K = {packed.shape[1]} >= 131072 would overflow the integer kernels' int32 sums"
    return None


def block_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``[N, C]`` -> ``[NB, C, 16]`` (rows padded with zeros to a multiple of 16, then transposed per block)."""
    nb = -(-n // 16)
    padded = F.pad(t, (0, 0, 0, 16 * nb - n))
    return padded.view(nb, 16, t.shape[1]).transpose(1, 2).contiguous()


def repack_planes(qweight: torch.Tensor) -> torch.Tensor:
    """Canonical uint8 ``[b, N, KB]`` -> kernel uint8 ``[NB, b, Q, 64]`` (see the module docstring)."""
    b, n, kb = qweight.shape
    nb, q = -(-n // 16), -(-kb // 4)
    padded = F.pad(qweight, (0, 4 * q - kb, 0, 16 * nb - n))
    return padded.view(b, nb, 16, q, 4).permute(1, 0, 3, 2, 4).reshape(nb, b, q, 64).contiguous()


@dataclass(eq=False)
class KernelWeight:
    """One layer in the kernels' layout, with per-precision scales made on first use.

    Attributes:
        n, k, bits: the weight's ``[N, K]`` and stored bits.
        planes: uint8 ``[NB, bits, Q, 64]``.
        group_kb: plane bytes per group (``group_size / 8``; ``KB`` when the layer has one group).
        n_groups: groups per row.
        input_scale: float32 ``[K]`` (AWQ's per-column factor, applied to ``x``) or None.
    """

    n: int
    k: int
    bits: int
    planes: torch.Tensor
    group_kb: int
    n_groups: int
    input_scale: torch.Tensor | None
    stamp: tuple
    _precisions: dict = field(default_factory=dict)
    _halves: dict = field(default_factory=dict)
    _pointers: dict = field(default_factory=dict)

    def pointers(self, packed: PackedWeight, active_bits: int) -> tuple[int, int, int, int, float]:
        """Addresses ``(scales, szs, scales_h, zeros_h)`` of precision ``active_bits`` for ``_C`` (0: no float16
        scales; ``zeros_h`` 0 with ``scales_h`` set: a symmetric grid, whose one zero is the fifth element), from
        tensors checked once when made (shape, dtype, contiguity) and kept alive by the caches; a new or
        rewritten source tensor (another stamp) remakes them. One stamp check per call."""
        scales, zeros = packed.scale_zero(active_bits)
        stamp = _stamp(scales, zeros)
        hit = self._pointers.get(active_bits)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        s32, sz32 = self.precision(packed, active_bits)
        halves = self.precision_half(packed, active_bits)
        shape = (-(-self.n // 16), self.n_groups, 16)
        ok = all(tuple(t.shape) == shape and t.is_contiguous() for t in (s32, sz32, *(halves or ())) if t is not None)
        ok = ok and s32.dtype == sz32.dtype == torch.float32
        ok = ok and (halves is None or all(t.dtype == torch.float16 for t in halves if t is not None))
        if not ok:
            raise ConfigError(f"repacked scales of precision {active_bits} are not float32 {list(shape)}")
        zero_h = float(packed.scheme.grid.constant_zero(active_bits) or 0.0)
        if halves is None:
            ptrs = (s32.data_ptr(), sz32.data_ptr(), 0, 0, zero_h)
        else:
            ptrs = (s32.data_ptr(), sz32.data_ptr(), halves[0].data_ptr(),
                    0 if halves[1] is None else halves[1].data_ptr(), zero_h)
        self._pointers[active_bits] = (stamp, ptrs)
        return ptrs  # type: ignore[return-value]

    @property
    def lut8_reason(self) -> str | None:
        """Why the int8-table ``lut`` kernel cannot run this layer (a group must be whole 32-column quartets)."""
        if self.n_groups == 1 or self.group_kb % 4 == 0:
            return None
        return (f"group_size {8 * self.group_kb} is not a multiple of 32 (the int8-table kernel sums whole "
                f"groups of 32 columns); lut32 runs it")

    def precision(self, packed: PackedWeight, active_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``(scales, szs)`` ``[NB, NG, 16]`` of precision ``active_bits`` (cached per source tensors)."""
        scales, zeros = packed.scale_zero(active_bits)
        stamp = _stamp(scales, zeros)
        hit = self._precisions.get(active_bits)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        s = scales.to(torch.float32)
        if zeros is None:
            z = torch.tensor(packed.scheme.grid.constant_zero(active_bits), dtype=torch.float32)
        else:
            z = zeros.to(torch.float32)
        out = (block_rows(s, self.n), block_rows(s * z, self.n))
        self._precisions[active_bits] = (stamp, out)
        return out

    def precision_half(self, packed: PackedWeight, active_bits: int
                       ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """float16 ``(scales, zeros)`` ``[NB, NG, 16]`` for the GEMV (half the bytes of ``precision``'s; zeros
        None on a symmetric grid, whose zero is one constant: the GEMV then streams only the scales), or None
        when the stored scales or zeros are not float16 (a cast would round them). Cached likewise."""
        scales, zeros = packed.scale_zero(active_bits)
        if scales.dtype != torch.float16 or (zeros is not None and zeros.dtype != torch.float16):
            return None
        stamp = _stamp(scales, zeros)
        hit = self._halves.get(active_bits)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        out = (block_rows(scales, self.n), None if zeros is None else block_rows(zeros, self.n))
        self._halves[active_bits] = (stamp, out)
        return out


def kernel_weight(packed: PackedWeight) -> KernelWeight:
    """The repacked form of ``packed`` (cached; ``unsupported_reason`` must be None)."""
    input_scale = getattr(packed, "input_scale", None)  # AWQ's factor (absent from PackedWeights without it)
    stamp = _stamp(packed.qweight, input_scale)
    with _LOCK:
        hit = _CACHE.get(packed.qweight)
        if hit is not None and hit.stamp == stamp:
            return hit
    n, k = packed.shape
    kb = -(-k // 8)
    n_groups = packed.scheme.n_groups(k)
    group_kb = kb if n_groups == 1 else packed.scheme.group_size // 8  # type: ignore[operator]
    inp = None if input_scale is None else input_scale.to(torch.float32).contiguous()
    planes = repack_planes(packed.qweight)
    if tuple(planes.shape) != (-(-n // 16), packed.scheme.bits, -(-k // 32), 64) or planes.dtype != torch.uint8:
        raise ConfigError(f"qweight {list(packed.qweight.shape)} {packed.qweight.dtype} does not repack to the "
                          f"kernel layout; expected canonical uint8 planes [bits, N, ceil(K/8)]")
    kw = KernelWeight(n, k, packed.scheme.bits, planes, group_kb, n_groups, inp, stamp)
    with _LOCK:
        _CACHE[packed.qweight] = kw
    return kw
