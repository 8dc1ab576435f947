"""Pure tensor maths of quantization: grids, scale initialisation, codes (no modules)."""

from .codes import QuantizedWeight, dequantize_codes, expand_groups
from .grids import GridSpec
from .nested import fit_nested, nest_by_truncation
from .quantizer import fit_groups, quantize, relative_error

__all__ = [
    "QuantizedWeight",
    "dequantize_codes",
    "expand_groups",
    "GridSpec",
    "quantize",
    "relative_error",
    "fit_groups",
    "fit_nested",
    "nest_by_truncation",
]
