"""Quantized modules and model surgery: ``QLinear``, ``QConv2d``, ``quantize_``, ``collect_hessians``,
``fuse_activations_``, ``save``/``load``.

Importing this package registers the quantized modules (``qlinear``, ``qconv``).
"""

from .active_bits import active_bits_of, set_active_bits
from .calibrate import collect_hessians
from .fuse import fuse_activations_
from .qconv import QConv2d
from .qlinear import QLinear
from .qmodule import QModule, qmodule_class, qmodule_for, register_qmodule, registered_float_types
from .serialize import load, save
from .swap import QuantizedLayer, QuantizeReport, SkippedModule, quantize_

__all__ = [
    "QModule",
    "QLinear",
    "QConv2d",
    "register_qmodule",
    "registered_float_types",
    "qmodule_for",
    "qmodule_class",
    "quantize_",
    "fuse_activations_",
    "collect_hessians",
    "QuantizeReport",
    "QuantizedLayer",
    "SkippedModule",
    "set_active_bits",
    "active_bits_of",
    "save",
    "load",
]
