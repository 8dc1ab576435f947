"""Exact storage accounting of a packed weight, and the paper's information count beside it.

Two countings, never to be mixed up in a table:

- **stored** (``packed_nbytes``, ``bits_per_weight``): every byte a ``PackedWeight`` holds —
  bit-planes or base-``L`` words with their row padding, float16 scales, zeros, the scales
  and zeros of each nested precision, and an AWQ scheme's float16 ``input_scale`` (``2 K``
  bytes). This is what a file and the memory bus see.
- **paper** (``paper_bits_per_weight``): ``log2(levels)`` per weight, as the BitsFusion paper
  counts it, with no scale, zero or padding overhead.

Example, ``QScheme(4, group_size=64)`` (symmetric) on ``[N, K] = [3, 100]``: planes
``4 * 3 * ceil(100/8) = 156`` bytes, scales ``3 * 2 * 2 = 12`` bytes, so 168 bytes,
``8 * 168 / 300 = 4.48`` stored bits per weight against 4.0 paper bits. The same scheme with
``calibration="awq"`` adds ``input_scale``, ``2 * 100 = 200`` bytes: 368 bytes, 9.81 bits per weight
(the vector costs ``16 / N`` bits per weight, small for real layers: 0.04 at ``N = 384``).
"""

from __future__ import annotations

from ..types import QScheme
from .packed import PackedWeight

__all__ = ["packed_nbytes", "packed_nbytes_by_tensor", "bits_per_weight", "paper_bits_per_weight"]


def packed_nbytes_by_tensor(scheme: QScheme, shape: tuple[int, int]) -> dict[str, int]:
    """Stored bytes of each tensor (``qweight``, ``scales``, ...) of a ``scheme`` weight of ``shape``.

    Stored counting: computed from ``PackedWeight.tensor_specs``, without packing anything.
    """
    out: dict[str, int] = {}
    for suffix, (dtype, spec_shape) in PackedWeight.tensor_specs(scheme, shape).items():
        numel = 1
        for d in spec_shape:
            numel *= d
        out[suffix] = numel * dtype.itemsize
    return out


def packed_nbytes(scheme: QScheme, shape: tuple[int, int]) -> int:
    """Stored bytes of a ``scheme`` weight of ``shape`` (``[N, K]``): equals ``PackedWeight.nbytes``.

    Stored counting: codes with their padding, scales, zeros, every nested precision's
    scales and zeros, and ``input_scale`` (``2 K`` bytes) for an AWQ scheme.
    """
    return sum(packed_nbytes_by_tensor(scheme, shape).values())


def bits_per_weight(scheme: QScheme, shape: tuple[int, int]) -> float:
    """Stored bits per weight, ``8 * packed_nbytes / (N * K)``: every overhead counted.

    Stored counting (see the module docstring); e.g. 4.48 for a symmetric 4-bit, group-64
    weight of shape ``[3, 100]``.
    """
    nbytes = packed_nbytes(scheme, shape)  # validates shape
    n, k = shape
    return 8 * nbytes / (n * k)


def paper_bits_per_weight(scheme: QScheme) -> float:
    """Bits per weight as the BitsFusion paper counts them: ``log2(levels)``, no overhead.

    Paper counting: ``b`` for the symmetric and asymmetric grids, ``log2(2^b + 1)`` for the
    balanced grid (1.585 for ternary). Independent of shape, scales and padding.
    """
    return scheme.grid.info_bits(scheme.bits)
