"""Quality recovery by training: quantisation-aware fake-quant layers (``qat``), distillation (``distill``,
``losses``) on Hugging Face ``accelerate``.

``prepare(model, plan)`` -> train -> ``convert(model)`` gives the same packed layers and artifact that
post-training quantisation gives, with learned codes, scales and zeros.
"""

from .config import DistillConfig
from .distill import Distiller, DistillResult
from .qat import (
    FakeQuantConv2d,
    FakeQuantLinear,
    convert,
    fake_quant_layers,
    latent_parameters,
    prepare,
    quant_parameters,
)
from .recipe import DistillRecipe

__all__ = [
    "DistillConfig",
    "Distiller",
    "DistillResult",
    "DistillRecipe",
    "prepare",
    "convert",
    "FakeQuantLinear",
    "FakeQuantConv2d",
    "fake_quant_layers",
    "latent_parameters",
    "quant_parameters",
]
