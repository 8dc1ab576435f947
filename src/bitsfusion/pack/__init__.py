"""Storage of quantized weights: bit-planes, base-L words, ``PackedWeight``, exact accounting, artifacts.

The public names of ``format.py`` (the manifest) and ``io.py`` (atomic save, safe load) are
exactly their modules' ``__all__``, re-exported here.
"""

from . import format as _format
from . import io as _io
from .accounting import bits_per_weight, packed_nbytes, packed_nbytes_by_tensor, paper_bits_per_weight
from .basepack import base_layout, base_row_bytes, code_dtype, pack_base, unpack_base
from .bitplanes import bitplanes_shape, pack_bitplanes, unpack_bitplanes
from .format import *  # noqa: F403  (format.__all__)
from .io import *  # noqa: F403  (io.__all__)
from .packed import PackedWeight

__all__ = [
    # bitplanes.py, basepack.py: the layouts of the codes
    "pack_bitplanes",
    "unpack_bitplanes",
    "bitplanes_shape",
    "base_layout",
    "base_row_bytes",
    "code_dtype",
    "pack_base",
    "unpack_base",
    # packed.py, accounting.py
    "PackedWeight",
    "packed_nbytes",
    "packed_nbytes_by_tensor",
    "bits_per_weight",
    "paper_bits_per_weight",
    *_format.__all__,
    *_io.__all__,
]
