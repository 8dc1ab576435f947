"""Pure tensor maths of quantization: grids, scale initialisation, codes (no modules)."""

from .codes import QuantizedWeight, dequantize_codes, expand_groups

__all__ = ["QuantizedWeight", "dequantize_codes", "expand_groups"]
