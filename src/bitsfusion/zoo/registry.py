"""``ModelSpec``: a bundled model with its calibration data and its evaluator, and their registry.

A spec is everything the CLI, the demo and the benchmarks need to quantize a model and judge
the result without knowing what the model is::

    spec = get_model_spec("minilm")
    ref, cand = spec.build(), spec.build()
    quantize_(cand, BitPlan(default=QScheme(4), rules={p: None for p in spec.default_skip}))
    spec.evaluate(ref, cand)   # {"mean_cos": 0.99.., "p5_cos": ..., "top10_overlap": ...}

Specs register by decorator on a function that returns the spec, so importing the zoo costs
nothing until a model is asked for (MiniLM pulls in transformers)::

    @register_model("tiny")
    def tiny_spec() -> ModelSpec: ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["ModelSpec", "register_model", "get_model_spec", "model_names"]


@dataclass(frozen=True)
class ModelSpec:
    """A bundled model: how to build it, feed it and judge a quantized copy against the float one.

    Attributes:
        name: registry key (``"minilm"``, ``"tiny"``).
        description: one line for ``--help`` and tables.
        build: a fresh float32 model in eval mode (a new instance on every call).
        calibration: ``calibration(n)`` -> ``n`` input batches (each accepted by ``run``).
        evaluate: ``evaluate(reference, candidate)`` -> named quality scores of ``candidate``
            measured against ``reference`` (higher is better unless the name says ``mse``).
        run: ``run(model, batch)`` -> the float32 output tensor quality is judged on (for MiniLM
            the pooled, L2-normalised sentence embeddings ``[batch, 384]``).
        default_skip: fqn rules (exact names or ``re:`` patterns, as in ``BitPlan``) that stay
            in floating point unless the user's plan says otherwise.
        default_pins: fqn rules -> bits an allocation pins unless the user's pins say otherwise
            (the digits UNet: ``conv_in``/``conv_out`` at 8 bits, as BitsFusion does).
        distill: ``distill() -> DistillRecipe`` (``train.recipe``): how ``bitsfusion distill`` trains a
            quantized copy of this model; None when the model has no recipe.
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    calibration: Callable[[int], list[Any]]
    evaluate: Callable[[nn.Module, nn.Module], dict[str, float]]
    run: Callable[[nn.Module, Any], torch.Tensor]
    default_skip: tuple[str, ...] = ()
    default_pins: dict[str, int] = field(default_factory=dict)
    distill: Callable[[], Any] | None = None


_FACTORIES: dict[str, Callable[[], ModelSpec]] = {}
_SPECS: dict[str, ModelSpec] = {}


def register_model(name: str) -> Callable[[Callable[[], ModelSpec]], Callable[[], ModelSpec]]:
    """Decorator: register a function returning the ``ModelSpec`` called ``name``.

    Registering a name twice is an error (two bundled models cannot share a name).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"a model name must be a Python identifier, got {name!r}")

    def decorate(factory: Callable[[], ModelSpec]) -> Callable[[], ModelSpec]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ConfigError(f"model name {name!r} is already registered by {_FACTORIES[name].__qualname__}")
        _FACTORIES[name] = factory
        return factory

    return decorate


def model_names() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(_FACTORIES)


def get_model_spec(name: str) -> ModelSpec:
    """The spec registered as ``name`` (made once, then cached); ConfigError listing the known names."""
    if name not in _FACTORIES:
        raise ConfigError(f"unknown bundled model {name!r}; known models: {', '.join(model_names()) or 'none'}")
    if name not in _SPECS:
        spec = _FACTORIES[name]()
        if not isinstance(spec, ModelSpec) or spec.name != name:
            raise ConfigError(f"the factory registered as {name!r} must return a ModelSpec named {name!r}")
        _SPECS[name] = spec
    return _SPECS[name]
