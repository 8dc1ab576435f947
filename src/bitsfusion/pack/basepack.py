"""Base-L packing: the storage of the balanced grid, whose ``L = 2^b + 1`` levels do not nest.

A balanced code has ``log2(2^b + 1)`` bits of information, a little more than ``b``, so it
cannot live in ``b`` bit-planes and ``b + 1`` planes would waste almost a bit. Instead ``d``
codes (digits) share one little-endian unsigned word of ``w`` bytes::

    word = sum_i digit_i * L^i        (digit 0 is the least significant)

with ``d = floor(8w / log2(L))``, the most digits such that ``L^d <= 2^(8w)``. ``w`` is the one
of 1, 2, 4 bytes with the fewest bits per digit ``8w / d`` (ties go to the smaller word). Each
row is padded with digit 0 to whole words, so a row of ``K`` codes takes
``ceil(K / d) * w`` bytes. The layouts, by bits of the balanced grid:

==== ====== ======= ================ ==============
b    L      w bytes d digits a word  bits per digit
==== ====== ======= ================ ==============
1    3      1       5                1.60
2    5      4       13               2.46
3    9      2       5                3.20
4    17     4       7                4.57
5    33     2       3                5.33
6    65     4       5                6.40
7    129    1       1                8.00
8    257    4       3                10.67
==== ====== ======= ================ ==============

Codes are uint8, except that the 257 levels of the 8-bit balanced grid (codes ``0 .. 256``) do
not fit a byte: for ``L > 256`` codes are int16, in and out.

Worked example, ternary (``L = 3``, five digits a byte): the row ``[2, 0, 1, 1, 2, 1]``
becomes the words ``2 + 0*3 + 1*9 + 1*27 + 2*81 = 200`` and ``1`` (the second word is padded
with four zero digits), i.e. the bytes ``[200, 1]``.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import torch
import torch.nn.functional as F

from ..errors import ConfigError, FormatError
from .bitplanes import check_codes

__all__ = ["base_layout", "base_row_bytes", "code_dtype", "pack_base", "unpack_base"]

WORD_BYTES = (1, 2, 4)
MAX_LEVELS = 257  # the 8-bit balanced grid


def _check_levels(levels: object) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int) or not 2 <= levels <= MAX_LEVELS:
        raise ConfigError(f"levels (the base L) must be an int in 2..{MAX_LEVELS}, got {levels!r}")
    return levels


@lru_cache(maxsize=None)
def base_layout(levels: int) -> tuple[int, int]:
    """``(digits_per_word, word_bytes)`` of base-``levels`` packing (see the module docstring).

    Computed with exact integers: ``d`` is the largest count with ``levels^d <= 2^(8w)``.
    Example: ``base_layout(3) == (5, 1)``, five ternary digits a byte, 1.6 bits each.
    """
    _check_levels(levels)
    best: tuple[Fraction, int, int] | None = None
    for w in WORD_BYTES:
        d = 0
        while levels ** (d + 1) <= 1 << (8 * w):
            d += 1
        if d == 0:
            continue
        cost = Fraction(8 * w, d)
        if best is None or cost < best[0]:  # strict: ties keep the smaller word
            best = (cost, d, w)
    assert best is not None  # levels <= 257 always fits 4 bytes
    return best[1], best[2]


def base_row_bytes(k: int, levels: int) -> int:
    """Bytes of one packed row of ``k`` codes: ``ceil(k / d) * w``."""
    d, w = base_layout(levels)
    return -(-k // d) * w


def code_dtype(levels: int) -> torch.dtype:
    """dtype of base-``levels`` codes: uint8, or int16 when ``levels > 256`` (the 8-bit balanced grid)."""
    return torch.uint8 if _check_levels(levels) <= 256 else torch.int16


def _weights(levels: int, d: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    powers = torch.tensor([levels**i for i in range(d)], dtype=torch.int64, device=device)
    byte_shift = 8 * torch.arange(w, dtype=torch.int64, device=device)
    return powers, byte_shift


def pack_base(codes: torch.Tensor, levels: int) -> torch.Tensor:
    """Pack codes as base-``levels`` digits in little-endian words.

    Args:
        codes: ``[N, K]`` of ``code_dtype(levels)`` (uint8; int16 when ``levels > 256``), values in
            ``0 .. levels - 1``. uint8 codes are also accepted when ``levels > 256``.
        levels: the base ``L``, 2..257 (``2^b + 1`` for the ``b``-bit balanced grid).

    Returns:
        uint8 ``[N, ceil(K / d) * w]`` on the device of ``codes``; word ``j`` of row ``n`` is the
        bytes ``[j*w, (j+1)*w)``, least significant byte first.
    """
    check_codes(codes, levels, (torch.uint8, code_dtype(levels)))  # validates levels too
    d, w = base_layout(levels)
    n, k = codes.shape
    words = -(-k // d)
    digits = F.pad(codes, (0, words * d - k)).view(n, words, d).to(torch.int64)
    powers, byte_shift = _weights(levels, d, w, codes.device)
    word = (digits * powers).sum(dim=-1)  # [N, words], < L^d <= 2^(8w)
    out = (word.unsqueeze(-1) >> byte_shift) & 0xFF
    return out.to(torch.uint8).reshape(n, words * w)


def unpack_base(data: torch.Tensor, k: int, levels: int) -> torch.Tensor:
    """Inverse of ``pack_base``: uint8 ``[N, row_bytes]`` -> codes ``[N, k]`` of ``code_dtype(levels)``.

    Raises ``ConfigError`` for a wrong dtype or shape, and ``FormatError`` when a word holds a
    value ``>= levels^d``, which no packing produces (the data is corrupt or of another base).
    """
    _check_levels(levels)
    if not isinstance(data, torch.Tensor):
        raise ConfigError(f"data must be a torch.Tensor, got {type(data).__name__}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k (the row length K) must be a positive int, got {k!r}")
    d, w = base_layout(levels)
    row_bytes = base_row_bytes(k, levels)
    if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[0] < 1 or data.shape[1] != row_bytes:
        raise ConfigError(
            f"base-{levels} data for rows of K={k} must be uint8 [N>=1, {row_bytes}] "
            f"({d} digits per {w}-byte word), got {data.dtype} {list(data.shape)}"
        )
    n, words = int(data.shape[0]), row_bytes // w
    powers, byte_shift = _weights(levels, d, w, data.device)
    word = (data.view(n, words, w).to(torch.int64) << byte_shift).sum(dim=-1)
    bad = word >= levels**d
    if bool(bad.any()):
        row, col = (int(i) for i in bad.nonzero()[0])
        raise FormatError(
            f"base-{levels} word {col} of row {row} is {int(word[row, col])}, above the largest valid "
            f"{levels**d - 1}: the packed data is corrupt or was packed with another base"
        )
    digits = (word.unsqueeze(-1) // powers) % levels
    return digits.reshape(n, words * d)[:, :k].to(code_dtype(levels))
