"""``DistillRecipe``: how to distil one kind of model, so the CLI and benchmarks need not know the model.

A recipe turns unlabelled text lines into batches, says how to run the model and what to match (output
loss, feature modules and their mask) and how to validate a student on data it is not judged on.
``run`` builds the ``Distiller`` from those pieces. The bundled models' recipes live beside their specs
(``zoo.minilm.distill_recipe``); a user's model gets one by filling in the same fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..nn.active_bits import set_active_bits
from .distill import DistillConfig, Distiller, DistillResult

__all__ = ["DistillRecipe"]


@dataclass(frozen=True)
class DistillRecipe:
    """The model-specific parts of a distillation run.

    Attributes:
        batches: ``batches(lines) -> [batch, ...]`` from unlabelled text lines (deterministic).
        forward: ``forward(model, batch) -> output`` with gradients (``Distiller.forward``).
        output_loss: ``output_loss(student_out, teacher_out, batch) -> scalar tensor``.
        features: module names whose outputs are matched (``feature_weight`` of the config).
        feature_mask: ``feature_mask(batch)``, broadcasting against the features, or None.
        validate: ``validate(teacher, student) -> {name: float}`` with a ``"score"`` (higher is better)
            on held-out data that is neither the training nor the evaluation data; or None.
        default_data: ``default_data() -> lines``, the bundled unlabelled text, or None.
    """

    batches: Callable[[Sequence[str]], list[Any]]
    forward: Callable[[nn.Module, Any], Any]
    output_loss: Callable[[Any, Any, Any], torch.Tensor]
    features: tuple[str, ...] = ()
    feature_mask: Callable[[Any], torch.Tensor | None] | None = None
    validate: Callable[[nn.Module, nn.Module], dict[str, float]] | None = None
    default_data: Callable[[], Sequence[str]] | None = None

    def evaluator(self, teacher: nn.Module, bits: tuple[int, ...]) -> Callable[[nn.Module], dict[str, float]] | None:
        """``validate`` as the ``Distiller`` calls it; with nested ``bits``, at each precision
        (``score@b``) and ``score`` their mean, the student left at the highest."""
        if self.validate is None:
            return None
        validate = self.validate
        if not bits:
            return lambda student: validate(teacher, student)

        def at_each(student: nn.Module) -> dict[str, float]:
            out: dict[str, float] = {}
            for b in sorted(bits, reverse=True):
                set_active_bits(student, b)
                out.update({f"{k}@{b}": v for k, v in validate(teacher, student).items()})
            set_active_bits(student, max(bits))
            out["score"] = sum(out[f"score@{b}"] for b in bits) / len(bits)
            return out

        return at_each

    def run(
        self, teacher: nn.Module, student: nn.Module, lines: Sequence[str] | None = None, *,
        config: DistillConfig | None = None, checkpoint_dir: str | Path | None = None, progress: bool = True,
        accelerator: Any = None,
    ) -> DistillResult:
        """Distil ``teacher`` into the prepared ``student`` on ``lines`` (default: ``default_data()``)."""
        config = config or DistillConfig()
        if lines is None:
            if self.default_data is None:
                from ..errors import ConfigError

                raise ConfigError("this recipe has no bundled data: pass the unlabelled text lines to train on")
            lines = self.default_data()
        distiller = Distiller(
            teacher, student, forward=self.forward, output_loss=self.output_loss, features=self.features,
            feature_mask=self.feature_mask, config=config, evaluate=self.evaluator(teacher, config.bits),
            checkpoint_dir=checkpoint_dir, accelerator=accelerator, progress=progress,
        )
        return distiller.fit(self.batches(lines))
