"""BitsFusion: mixed-precision low-bit quantization of pretrained PyTorch models, packed as bit-planes.

The one-line case::

    import bitsfusion as bf
    report = bf.quantize_(model, bf.BitPlan.uniform(bits=4, group_size=64))   # in place
    bf.save(model, "out/model-4bit")                                           # safetensors + manifest
    model = bf.load("out/model-4bit")                     # transformers/diffusers: class + config recorded
    bf.set_active_bits(model, 2)                          # run nested-precision layers on their top planes

Mixed precision: measure, allocate exactly, quantize::

    table = bf.measure_sensitivity(model, batches, bf.default_candidates(group_sizes=(64, 128, None),
                                   calibrations=("gptq",)), run=run, path="sens.json")   # resumable
    plan = bf.allocate(table, avg_bits=2.0)       # exact knapsack; every stored byte counted
    bf.quantize_(model, plan.plan(), calibration_data=batches, forward=run)

Per-layer control is a ``BitPlan``: exact module names win over ``re:`` patterns, which win over
the default (``None`` keeps a layer in floating point). Everything raises subclasses of
``BitsFusionError`` with a message naming the problem and the fix.
"""

from .allocate import allocate, pareto_from_table
from .analysis import SensitivityTable, default_candidates, measure_sensitivity
from .errors import (
    BitsFusionError,
    BudgetInfeasible,
    ConfigError,
    FormatError,
    KernelUnavailable,
    UnsupportedLayer,
)
from .nn import (
    QConv2d,
    QLinear,
    QuantizeReport,
    active_bits_of,
    collect_hessians,
    load,
    quantize_,
    save,
    set_active_bits,
)
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
    "measure_sensitivity",
    "default_candidates",
    "SensitivityTable",
    "allocate",
    "pareto_from_table",
    "collect_hessians",
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
