"""Pure tensor maths of quantization: grids, scale initialisation, codes (no modules)."""

from .codes import QuantizedWeight, dequantize_codes, expand_groups
from .grids import GridSpec
from .nested import fit_nested, nest_by_truncation
from .awq import awq_search, input_factors
from .gptq import gptq_codes
from .quantizer import fit_groups, output_error, quantize, relative_error

__all__ = [
    "QuantizedWeight",
    "dequantize_codes",
    "expand_groups",
    "GridSpec",
    "quantize",
    "relative_error",
    "output_error",
    "gptq_codes",
    "awq_search",
    "input_factors",
    "fit_groups",
    "fit_nested",
    "nest_by_truncation",
]
