"""Execution of packed weights.

``reference`` (dequantise, then the float op) is the oracle; ``native`` runs ``bitsfusion._C``'s kernels
(bit-serial table-lookup GEMV with uint8 or fp32 tables, int8-activation and dequantised-tile GEMMs; ISA chosen
by ``isa``); ``dispatch.linear`` picks among them per call and falls back to the reference wherever the
native kernels cannot run (docs/KERNELS.md).
"""

from . import dispatch, isa, native, reference, repack
from .reference import conv2d, dequantized_weight, linear

__all__ = ["linear", "conv2d", "dequantized_weight", "dispatch", "isa", "native", "reference", "repack"]
