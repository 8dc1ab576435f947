"""Bit-plane packing: the storage of every grid whose codes nest (symmetric, asymmetric).

A ``b``-bit code matrix ``codes[N, K]`` is stored as ``b`` planes of bits, most significant
first, each row of each plane packed eight elements to a byte::

    planes[j, n, k // 8] bit (k % 8)  ==  bit (b - 1 - j) of codes[n, k]

so plane 0 holds the MSB, and inside a byte element ``k`` of the row sits at bit ``k % 8``
counted from the least significant bit (element 0 is bit 0). A row is padded with zero bits
to whole bytes, so ``planes`` has shape ``[b, N, ceil(K / 8)]``.

Worked example, ``b = 2``, one row ``codes = [3, 1, 2]``::

    codes in binary      11  01  10
    plane 0 (MSB) bits    1   0   1   -> byte 0b00000101 = 5
    plane 1 (LSB) bits    1   1   0   -> byte 0b00000011 = 3

Reading only the first ``b'`` planes gives the truncated code ``codes >> (b - b')``, a valid
``b'``-bit code: one stored weight serves every precision up to ``b`` (``unpack_bitplanes``
with ``active_bits``). The code is recombined plane by plane, as in
``c = sum_j plane_j * 2^(b' - 1 - j)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..types import MAX_BITS, MIN_BITS

__all__ = ["pack_bitplanes", "unpack_bitplanes", "bitplanes_shape", "check_codes"]


def bitplanes_shape(bits: int, n: int, k: int) -> tuple[int, int, int]:
    """Shape ``(bits, N, ceil(K / 8))`` of the planes of a ``bits``-bit ``[N, K]`` code matrix."""
    _check_bits(bits, "bits")
    return (bits, n, -(-k // 8))


def check_codes(codes: torch.Tensor, levels: int, dtypes: tuple[torch.dtype, ...] = (torch.uint8,)) -> None:
    """Raise ``ConfigError`` unless ``codes`` is a non-empty ``[N, K]`` tensor of one of ``dtypes``
    with every value in ``0 .. levels - 1``."""
    if not isinstance(codes, torch.Tensor):
        raise ConfigError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in dtypes:
        names = [str(d).removeprefix("torch.") for d in dict.fromkeys(dtypes)]
        raise ConfigError(
            f"codes must be {' or '.join(names)}, got {codes.dtype}; convert with codes.to(torch.{names[-1]})"
        )
    if codes.dim() != 2 or codes.shape[0] < 1 or codes.shape[1] < 1:
        raise ConfigError(f"codes must be a non-empty 2-D [N, K] tensor, got shape {list(codes.shape)}")
    low, top = int(codes.min()), int(codes.max())
    if low < 0 or top >= levels:
        bad = low if low < 0 else top
        raise ConfigError(f"codes hold the value {bad}, but only 0..{levels - 1} fit ({levels} levels)")


def _check_bits(bits: object, name: str, top: int = MAX_BITS) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= top:
        raise ConfigError(f"{name} must be an int in {MIN_BITS}..{top}, got {bits!r}")
    return bits


def pack_bitplanes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``b``-bit codes into bit-planes, MSB plane first (layout in the module docstring).

    Args:
        codes: uint8 ``[N, K]``, every value in ``0 .. 2^bits - 1``.
        bits: bits per code, 1..8.

    Returns:
        uint8 ``[bits, N, ceil(K / 8)]`` on the device of ``codes``; padding bits are zero.
    """
    _check_bits(bits, "bits")
    check_codes(codes, 1 << bits)
    n, k = codes.shape
    kb = -(-k // 8)
    lanes = F.pad(codes, (0, 8 * kb - k)).view(n, kb, 8)
    lane_shift = torch.arange(8, dtype=torch.uint8, device=codes.device)
    planes = torch.empty((bits, n, kb), dtype=torch.uint8, device=codes.device)
    for j in range(bits):  # one vectorised pass per plane (at most 8), not per element
        bit = (lanes >> (bits - 1 - j)) & 1
        planes[j] = (bit << lane_shift).sum(dim=-1, dtype=torch.uint8)  # distinct bits: sum == or
    return planes


def unpack_bitplanes(planes: torch.Tensor, k: int, active_bits: int | None = None) -> torch.Tensor:
    """Rebuild codes from their first ``active_bits`` planes: ``codes >> (bits - active_bits)``.

    Args:
        planes: uint8 ``[bits, N, ceil(k / 8)]`` as made by ``pack_bitplanes``.
        k: the row length ``K`` (the planes' padding is dropped).
        active_bits: planes to read, 1..bits (default: all of them, the full codes).

    Returns:
        uint8 ``[N, k]``, values in ``0 .. 2^active_bits - 1``. Only the first ``active_bits``
        planes are read.
    """
    if not isinstance(planes, torch.Tensor):
        raise ConfigError(f"planes must be a torch.Tensor, got {type(planes).__name__}")
    if planes.dtype != torch.uint8 or planes.dim() != 3:
        raise ConfigError(
            f"planes must be a uint8 [bits, N, ceil(K/8)] tensor, got {planes.dtype} {list(planes.shape)}"
        )
    bits = _check_bits(int(planes.shape[0]), "the number of planes (planes.shape[0])")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (the row length K) must be a positive int, got {k!r}")
    n, kb = int(planes.shape[1]), int(planes.shape[2])
    if kb != -(-k // 8) or n < 1:
        raise ConfigError(
            f"planes of shape {list(planes.shape)} cannot hold rows of K={k}: "
            f"expected [{bits}, N>=1, {-(-k // 8)}] (ceil(K/8) bytes a row)"
        )
    active = bits if active_bits is None else _check_bits(active_bits, "active_bits", top=bits)
    lane_shift = torch.arange(8, dtype=torch.uint8, device=planes.device)
    out = torch.zeros((n, k), dtype=torch.uint8, device=planes.device)
    for j in range(active):  # one vectorised pass per plane read
        bit = ((planes[j].unsqueeze(-1) >> lane_shift) & 1).reshape(n, 8 * kb)[:, :k]
        out = (out << 1) | bit
    return out
