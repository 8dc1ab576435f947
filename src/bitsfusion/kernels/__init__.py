"""Execution of packed weights.

``reference`` (dequantise, then the float op) is the oracle; ``native`` runs ``bitsfusion._C``'s kernels
(bit-serial LUT GEMV, dequantised-tile GEMM; ISA chosen by ``isa``); ``dispatch.linear`` picks between
them per call and falls back to the reference wherever the native kernels cannot run.
"""

from . import dispatch, isa, native, reference, repack
from .reference import conv2d, dequantized_weight, linear

__all__ = ["linear", "conv2d", "dequantized_weight", "dispatch", "isa", "native", "reference", "repack"]
