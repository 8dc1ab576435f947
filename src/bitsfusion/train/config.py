"""``DistillConfig``: the hyper-parameters of a distillation run, validated, JSON-able, and its schedule."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

__all__ = ["DistillConfig", "TRAIN_FLOAT"]

TRAIN_FLOAT = ("none", "norms", "all")


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of a distillation run (all JSON-able; recorded in the checkpoint).

    ``lr`` is for the latent weights and the trained float parameters, ``scale_lr`` for the log-scales
    and zeros. ``dampen``: weight of the oscillation-dampening term (``FakeQuantMixin.dampening_loss``, mean
    over the fake-quant layers; 0: none). ``bits``: the precisions whose losses are summed (empty: each
    layer's stored bits);
    ``bit_weights`` their weights (default equal). ``eval_every = 0`` never evaluates; ``patience = 0``
    never stops early.
    """

    steps: int = 1000
    lr: float = 1e-4
    scale_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    grad_clip: float = 1.0
    feature_weight: float = 0.01
    dampen: float = 0.0
    bits: tuple[int, ...] = ()
    bit_weights: tuple[float, ...] = ()
    train_float: str = "norms"
    eval_every: int = 0
    eval_metric: str = "score"
    patience: int = 0
    checkpoint_every: int = 200
    log_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        def positive(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v >= 0 if allow_zero else v > 0):
                raise ConfigError(f"DistillConfig.{name} must be a number {'>= 0' if allow_zero else '> 0'}, "
                                  f"got {v!r}")

        for name in ("steps", "lr", "checkpoint_every", "log_every"):
            positive(name)
        for name in ("scale_lr", "weight_decay", "warmup_steps", "grad_clip", "feature_weight", "dampen",
                     "eval_every", "patience"):
            positive(name, allow_zero=True)
        for name in ("steps", "warmup_steps", "eval_every", "patience", "checkpoint_every", "log_every", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ConfigError(f"DistillConfig.{name} must be an int, got {getattr(self, name)!r}")
        object.__setattr__(self, "bits", tuple(int(b) for b in self.bits))
        object.__setattr__(self, "bit_weights", tuple(float(w) for w in self.bit_weights))
        if any(not 1 <= b <= 8 for b in self.bits) or len(set(self.bits)) != len(self.bits):
            raise ConfigError(f"DistillConfig.bits must be distinct bit widths in 1..8, got {self.bits}")
        if self.bit_weights and len(self.bit_weights) != len(self.bits):
            raise ConfigError(f"DistillConfig.bit_weights needs one weight per entry of bits {self.bits}, "
                              f"got {self.bit_weights}")
        if self.train_float not in TRAIN_FLOAT:
            raise ConfigError(f"DistillConfig.train_float must be one of {TRAIN_FLOAT}, got {self.train_float!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bits"], d["bit_weights"] = list(self.bits), list(self.bit_weights)
        return d

    def lr_factor(self, step: int) -> float:
        """Linear warm-up over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - self.warmup_steps) / span)))
