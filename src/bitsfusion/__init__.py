"""BitsFusion: mixed-precision low-bit quantization of pretrained PyTorch models, packed as bit-planes.

The one-line case::

    import bitsfusion as bf
    report = bf.quantize_(model, bf.BitPlan.uniform(bits=4, group_size=64))   # in place
    bf.save(model, "out/model-4bit")                                           # safetensors + manifest
    model = bf.load("out/model-4bit")                     # transformers/diffusers: class + config recorded
    bf.set_active_bits(model, 2)                          # run nested-precision layers on their top planes

Per-layer control is a ``BitPlan``: exact module names win over ``re:`` patterns, which win over
the default (``None`` keeps a layer in floating point). Everything raises subclasses of
``BitsFusionError`` with a message naming the problem and the fix.
"""

from .errors import (
    BitsFusionError,
    BudgetInfeasible,
    ConfigError,
    FormatError,
    KernelUnavailable,
    UnsupportedLayer,
)
from .nn import QConv2d, QLinear, QuantizeReport, active_bits_of, load, quantize_, save, set_active_bits
from .plan import BitPlan
from .quant import dequantize_codes, quantize, relative_error
from .types import Calibration, Grid, QScheme, ScaleMethod

__version__ = "0.1.0"

__all__ = [
    "quantize_",
    "save",
    "load",
    "set_active_bits",
    "active_bits_of",
    "QuantizeReport",
    "QLinear",
    "QConv2d",
    "BitPlan",
    "QScheme",
    "Grid",
    "ScaleMethod",
    "Calibration",
    "quantize",
    "dequantize_codes",
    "relative_error",
    "BitsFusionError",
    "ConfigError",
    "FormatError",
    "UnsupportedLayer",
    "BudgetInfeasible",
    "KernelUnavailable",
    "__version__",
]
