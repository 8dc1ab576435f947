"""Bundled models, each with calibration data and an evaluator (``ModelSpec``), and model resolution.

``get_model_spec("digits")`` (the diffusion UNet) / ``get_model_spec("minilm")`` / ``get_model_spec("tiny")``; ``resolve_model(text)`` turns what a
user types (a bundled name, a transformers or diffusers directory, ``pkg.module:factory``) into
a model. Importing the zoo is cheap: transformers loads only when MiniLM is built.
"""

from . import digits, minilm, tiny  # noqa: F401  (registers the bundled models)
from .registry import ModelSpec, get_model_spec, model_names, register_model

__all__ = ["ModelSpec", "get_model_spec", "model_names", "register_model"]
